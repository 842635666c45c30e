"""Round trip of background task runs: ``.delay()`` -> COMPLETED, next to Prefect's task worker.

Three processes, as in a deployment: an API, one task worker at ``--limit``
serving a no-op async task, and this submitter. Each case:

* ``trio / embedded``: ``trio-worker task-worker serve`` against the embedded API
  (the zero-setup default);
* with ``--prefect`` (needs the ``prefect`` package; ``nox -s bench`` has it), a
  real ``prefect server start`` on SQLite, and against that same server
  ``trio / prefect`` (our task worker) and ``prefect / prefect`` (Prefect's
  ``prefect.task_worker.serve``). Ratios are taken between these two.

Runs are submitted by ``--submitters`` concurrent Trio tasks over one client,
with the same code for both workers (Prefect's own ``.delay()`` is a blocking
call that takes about a second per run here, which would measure the
submitter, not the worker). Latency is the run's ``end_time`` (stamped by the
API when COMPLETED is recorded) minus the moment its submission began, so the
figure does not depend on how often anyone polls. Printed, not asserted; raw
figures go to ``bench-results/task-worker-<date>.json``.

    python benchmarks/bench_task_worker.py [--runs 1000] [--submitters 4] [--limit 50] [--prefect]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import trio
from _postgres import postgres_server
from _procs import sample_tree
from bench_worker import clean_env, log, prefect_installed, running_api

from trio_worker._client._client import PrefectClient
from trio_worker._core._models import TERMINAL_STATE_TYPES, StateType
from trio_worker._core._patience import until_answered
from trio_worker._taskworker._tasks import Task, task

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@task(key="bench-noop")
async def noop() -> None:
    """The task under test: does nothing, so what is measured is the machinery."""


@attrs.frozen
class Case:
    """One task worker against one API."""

    name: str
    argv: list[str]
    #: a line the worker prints once it is subscribed
    ready: bytes
    submitted: Task[..., Any]


def trio_case(limit: int, api: str) -> Case:
    argv = [sys.executable, "-m", "trio_worker", "task-worker", "serve", "bench_task_worker:noop"]
    return Case(f"trio / {api}", [*argv, "--limit", str(limit)], b"subscribed to", noop)


def prefect_case(limit: int) -> Case:
    from _prefect_noop import noop as prefect_noop  # imports prefect: only with --prefect

    # Our submitter, Prefect's task key: the same requests reach the server for both workers.
    same_key = Task(noop.fn, key=prefect_noop.task_key)
    argv = [sys.executable, str(HERE / "_prefect_noop.py"), str(limit)]
    return Case("prefect / prefect", argv, b"Subscribing to runs", same_key)


async def _follow(
    process: trio.Process, ready: bytes, *, task_status: trio.TaskStatus[None]
) -> None:
    """Report started once the worker says it subscribed, then keep draining its output.

    A pipe nobody reads fills up and blocks the worker's logging: the benchmark
    would measure a stalled process.
    """
    assert process.stdout is not None
    data = b""
    while ready not in data:
        chunk = await process.stdout.receive_some()
        if not chunk:
            raise RuntimeError(f"the task worker exited:\n{data.decode(errors='replace')}")
        data += chunk
    task_status.started()
    while await process.stdout.receive_some():
        pass


async def run_case(case: Case, api: dict[str, Any], runs: int, submitters: int) -> dict[str, Any]:
    """Start the case's worker, push ``runs`` runs through it, stop it; return the figures."""
    with tempfile.TemporaryDirectory(prefix="bench-task-worker-") as tmp:
        env = clean_env(
            PREFECT_API_URL=api["url"],
            PREFECT_HOME=f"{tmp}/home",
            TRIO_WORKER_TASK_STORAGE=f"{tmp}/store",
            PYTHONUNBUFFERED="1",
            PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore",
        )
        log(f"{case.name}: {runs} runs, {submitters} submitters")
        worker = await trio.lowlevel.open_process(
            case.argv, cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(120):
                    await nursery.start(_follow, worker, case.ready)
                before = _cpu_seconds(api["pid"], worker.pid)
                result = await _measure(case.submitted, api["url"], runs, submitters)
                after = _cpu_seconds(api["pid"], worker.pid)
                nursery.cancel_scope.cancel()
        finally:
            worker.kill()
            await worker.wait()
    for name, spent in after.items():
        result[f"{name}_cpu_ms_per_run"] = 1000 * (spent - before[name]) / runs
    return {"case": case.name, **result}


def _cpu_seconds(api_pid: int, worker_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the API, the task worker (each with its children) and us."""
    spent = {"submitter": time.process_time()}
    for name, pid in (("api", api_pid), ("worker", worker_pid)):
        sample = sample_tree(pid)  # `prefect server start` serves from a child process
        spent[name] = sample.tree_cpu if sample else math.nan
    return spent


async def _measure(
    submitted: Task[..., Any], api_url: str, runs: int, submitters: int
) -> dict[str, Any]:
    began_at: dict[Any, dt.datetime] = {}
    async with PrefectClient(api_url) as client:
        start = dt.datetime.now(dt.UTC)
        send, receive = trio.open_memory_channel[int](runs)
        for i in range(runs):
            send.send_nowait(i)
        send.close()

        async def submitter() -> None:
            async for _ in receive:
                began = dt.datetime.now(dt.UTC)
                # A busy Prefect server on SQLite answers 503 for a while: keep submitting.
                handle = await until_answered(
                    functools.partial(submitted.enqueue, client), what="submit", patience=300
                )
                began_at[handle.task_run_id] = began

        async with trio.open_nursery() as nursery:
            for _ in range(submitters):
                nursery.start_soon(submitter)
        submit_seconds = (dt.datetime.now(dt.UTC) - start).total_seconds()
        # Asking whether any run is left is cheap for the API; reading every
        # finished run while others are still going would tax what is measured.
        # (Prefect's task-run state filter knows only ``any_``.)
        going = [t.value for t in StateType if t not in TERMINAL_STATE_TYPES]
        ids = [str(i) for i in began_at]
        unfinished = {"id": {"any_": ids}, "state": {"type": {"any_": going}}}
        with trio.fail_after(max(120, runs / 5)):
            while True:
                if not await client.read_task_runs(task_runs=unfinished, limit=1):
                    break
                await trio.sleep(0.2)
        ends = await _completed(client, list(began_at))
    latencies = sorted((ends[i] - began_at[i]).total_seconds() for i in began_at if i in ends)
    wall = (max(ends.values()) - start).total_seconds() if ends else math.nan
    return {
        "runs": runs,
        "not_completed": runs - len(ends),
        "submit_seconds": submit_seconds,
        "wall_seconds": wall,
        "runs_per_second": runs / wall,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else math.nan,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else math.nan,
    }


async def _completed(client: PrefectClient, ids: list[Any]) -> dict[Any, dt.datetime]:
    """Map each of ``ids`` that is COMPLETED to its end time (paging through the filter)."""
    ends: dict[Any, dt.datetime] = {}
    for first in range(0, len(ids), 200):
        chunk = [str(i) for i in ids[first : first + 200]]
        wanted = {"id": {"any_": chunk}, "state": {"type": {"any_": [StateType.COMPLETED.value]}}}
        page = await client.read_task_runs(task_runs=wanted, limit=200)
        ends.update((run.id, run.end_time) for run in page if run.end_time is not None)
    return ends


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-task-api-") as tmp:
        async with running_api(False, Path(tmp)) as api:
            case = trio_case(args.limit, "embedded")
            results.append(await run_case(case, api, args.runs, args.submitters))
    if args.prefect:
        # A fresh server (and database) for each: one case's backlog must not slow the next.
        for case in (trio_case(args.limit, "prefect"), prefect_case(args.limit)):
            with contextlib.ExitStack() as stack:
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-task-prefect-"))
                database_url = None
                if args.postgres:
                    pg = stack.enter_context(postgres_server(install=True, durable=True))
                    pg.create_database("prefect")
                    database_url = pg.sqlalchemy_url("prefect")
                async with running_api(True, Path(tmp), database_url=database_url) as api:
                    results.append(await run_case(case, api, args.runs, args.submitters))
    return results


def table(results: list[dict[str, Any]], limit: int, submitters: int) -> str:
    """One Markdown table: a column per case, the ratio trio / Prefect on Prefect's server."""
    by_case = {r["case"]: r for r in results}
    ours, theirs = by_case.get("trio / prefect"), by_case.get("prefect / prefect")
    rows = [
        ("runs/s", "runs_per_second", "{:.0f}"),
        ("latency p50", "p50_ms", "{:.0f} ms"),
        ("latency p99", "p99_ms", "{:.0f} ms"),
        ("submitting alone", "submit_seconds", "{:.2f} s"),
        ("API CPU per run", "api_cpu_ms_per_run", "{:.2f} ms"),
        ("task-worker CPU per run", "worker_cpu_ms_per_run", "{:.2f} ms"),
        ("submitter CPU per run", "submitter_cpu_ms_per_run", "{:.2f} ms"),
        ("runs not COMPLETED", "not_completed", "{}"),
    ]
    header = [
        f"{results[0]['runs']} no-op runs, limit {limit}, {submitters} submitters",
        *by_case,
    ]
    if ours and theirs:
        header.append("ratio trio / Prefect")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, key, fmt in rows:
        cells = [label, *(fmt.format(r[key]) for r in results)]
        if ours and theirs:
            cells.append(f"{ours[key] / theirs[key]:.2f}x" if theirs[key] else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--submitters", type=int, default=4)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--prefect", action="store_true", help="also measure against Prefect")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="run the Prefect servers on PostgreSQL (_postgres.py) instead of SQLite",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    if args.prefect and not (prefect_installed() and importlib.util.find_spec("prefect")):
        parser.error("--prefect needs the prefect package (nox -s bench installs it)")
    results = trio.run(bench, args)
    print(table(results, args.limit, args.submitters))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC)
    raw = {
        "date": stamp.isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average": os.getloadavg(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": results,
    }
    path = args.out / f"task-worker-{stamp:%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(raw, indent=2, default=str))
    log(f"raw figures in {path}")
    if any(r["not_completed"] for r in results):
        sys.exit("some runs ended other than COMPLETED")


if __name__ == "__main__":
    main()

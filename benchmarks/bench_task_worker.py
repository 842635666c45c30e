"""Round trip of background task runs: ``.delay()`` -> COMPLETED.

Three processes, as in a deployment: the embedded API, one task worker
(``trio-worker task-worker serve --limit 50``) serving a no-op async task,
and this submitter. Runs are submitted by ``--submitters`` concurrent Trio
tasks over one client; latency is the run's ``end_time`` (stamped by the API
when COMPLETED is recorded) minus the moment its ``.delay()`` began, so the
figure does not depend on how often anyone polls. Printed, not asserted.

    python benchmarks/bench_task_worker.py [--runs 2000] [--submitters 50] [--limit 50]
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from _procs import read_stat

from trio_worker._client import PrefectClient
from trio_worker._models import TERMINAL_STATE_TYPES, StateType
from trio_worker._tasks import task

HERE = Path(__file__).resolve().parent
WORKER_COMMAND = [sys.executable, "-m", "trio_worker", "task-worker", "serve"]


@task(key="bench-noop")
async def noop() -> None:
    """The task under test: does nothing, so what is measured is the machinery."""


SERVE_API = """
import functools, sys, trio
from trio_worker._server import serve_api

async def main():
    async with trio.open_nursery() as nursery:
        url = await nursery.start(functools.partial(serve_api, port=0, db_path=sys.argv[1]))
        print(url, flush=True)

trio.run(main)
"""


async def _first_line(process: trio.Process) -> str:
    assert process.stdout is not None
    data = b""
    while b"\n" not in data:
        chunk = await process.stdout.receive_some()
        if not chunk:
            raise RuntimeError("the API process exited before printing its URL")
        data += chunk
    return data.split(b"\n", 1)[0].decode()


async def _follow_worker(
    process: trio.Process, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Report started once the worker subscribed, then keep draining its stderr.

    A pipe nobody reads fills up and blocks the worker's logging: the benchmark
    would measure a stalled process.
    """
    assert process.stderr is not None
    data = b""
    while b"subscribed to" not in data:
        chunk = await process.stderr.receive_some()
        if not chunk:
            raise RuntimeError(f"the task worker exited:\n{data.decode()}")
        data += chunk
    task_status.started()
    while await process.stderr.receive_some():
        pass


async def bench(runs: int, submitters: int, limit: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-task-worker-") as tmp:
        env = {**os.environ, "TRIO_WORKER_TASK_STORAGE": f"{tmp}/store", "PYTHONUNBUFFERED": "1"}
        env.pop("PREFECT_API_URL", None)
        api = await trio.lowlevel.open_process(
            [sys.executable, "-c", SERVE_API, f"{tmp}/api.db"], stdout=subprocess.PIPE, env=env
        )
        try:
            api_url = await _first_line(api)
            env["PREFECT_API_URL"] = api_url
            worker = await trio.lowlevel.open_process(
                [*WORKER_COMMAND, "bench_task_worker:noop", "--limit", str(limit)],
                cwd=HERE,
                env=env,
                stderr=subprocess.PIPE,
            )
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(_follow_worker, worker)
                    before = _cpu_seconds(api.pid, worker.pid)
                    result = await _measure(api_url, runs, submitters)
                    after = _cpu_seconds(api.pid, worker.pid)
                    nursery.cancel_scope.cancel()
                # CPU seconds per run of each process: where the time goes.
                for name, spent in after.items():
                    result[f"{name}_cpu_ms_per_run"] = 1000 * (spent - before[name]) / runs
                return result
            finally:
                worker.kill()
                await worker.wait()
        finally:
            api.kill()
            await api.wait()


def _cpu_seconds(api_pid: int, worker_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the API, the task worker and this submitter."""
    spent = {"submitter": time.process_time()}
    for name, pid in (("api", api_pid), ("worker", worker_pid)):
        stat = read_stat(pid)
        spent[name] = stat.cpu if stat else math.nan
    return spent


async def _measure(api_url: str, runs: int, submitters: int) -> dict[str, Any]:
    submitted: dict[Any, dt.datetime] = {}
    async with PrefectClient(api_url) as client:
        start = dt.datetime.now(dt.UTC)
        send, receive = trio.open_memory_channel[int](runs)
        for i in range(runs):
            send.send_nowait(i)
        send.close()

        async def submitter() -> None:
            async for _ in receive:
                began = dt.datetime.now(dt.UTC)
                handle = await noop.enqueue(client)
                submitted[handle.task_run_id] = began

        async with trio.open_nursery() as nursery:
            for _ in range(submitters):
                nursery.start_soon(submitter)
        submit_seconds = (dt.datetime.now(dt.UTC) - start).total_seconds()
        # Asking whether any run is left is cheap for the API; reading every
        # finished run while others are still going would tax what is measured.
        final = [t.value for t in TERMINAL_STATE_TYPES]
        unfinished = {"state": {"type": {"not_any_": final}}}
        while True:
            if not await client.read_task_runs(task_runs=unfinished, limit=1):
                break
            await trio.sleep(0.2)
        ends = await _completed(client)
    latencies = sorted((ends[i] - submitted[i]).total_seconds() for i in submitted if i in ends)
    wall = (max(ends.values()) - start).total_seconds()
    return {
        "runs": runs,
        "not_completed": runs - len(ends),
        "submit_seconds": submit_seconds,
        "wall_seconds": wall,
        "runs_per_second": runs / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
    }


async def _completed(client: PrefectClient) -> dict[Any, dt.datetime]:
    """Map each COMPLETED run's id to its end time (paging through the filter)."""
    ends: dict[Any, dt.datetime] = {}
    completed = {"state": {"type": {"any_": [StateType.COMPLETED.value]}}}
    while True:
        page = await client.read_task_runs(
            task_runs=completed, limit=200, offset=len(ends), sort="ID_DESC"
        )
        ends.update((run.id, run.end_time) for run in page if run.end_time is not None)
        if len(page) < 200:
            return ends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--submitters", type=int, default=50)
    parser.add_argument("--limit", type=int, default=50)
    args = parser.parse_args()
    result = trio.run(bench, args.runs, args.submitters, args.limit)
    print(
        f"task worker round trip (limit {args.limit}, {args.submitters} submitters, "
        f"{os.cpu_count()} CPUs): {result['runs']} runs in {result['wall_seconds']:.2f} s "
        f"= {result['runs_per_second']:.0f} runs/s; latency p50 {result['p50_ms']:.0f} ms, "
        f"p99 {result['p99_ms']:.0f} ms (submitting alone took {result['submit_seconds']:.2f} s); "
        f"CPU ms per run: API {result['api_cpu_ms_per_run']:.2f}, "
        f"worker {result['worker_cpu_ms_per_run']:.2f}, "
        f"submitter {result['submitter_cpu_ms_per_run']:.2f}"
    )
    if result["not_completed"]:
        print(f"{result['not_completed']} run(s) ended other than COMPLETED", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Task-worker fleet benchmark: N task workers on one PostgreSQL-backed Prefect server.

The background-task half of the fleet benchmark (``bench_fleet.py`` is the
flow-run half). It starts a throwaway PostgreSQL (``_postgres.py``), a
``prefect server start`` on it and the counting proxy (``_counting_proxy.py``)
in front of it for the workers, then, for each kind in ``--kinds``:

1. starts N task workers of that kind (``trio``: ``trio-worker task-worker
   serve``; ``prefect``: ``prefect.task_worker.serve``), each at ``--limit``,
   and waits until every one is subscribed;
2. submits ``--runs`` background task runs from ``--submitters`` concurrent
   Trio tasks straight to the server (the same submitting code for both
   kinds; not through the proxy, so only the workers' requests are counted);
3. waits until every run is final (or progress stalls).

Every run is ``_fleet_tasks.record(markers, token)``: it appends its pid to
``markers/token``, so exactly-once is read from the disk: duplicates (tokens
run more than once), lost (tokens never run), non-final (runs left in a
non-final state). Also throughput (first submission to the last run's
``end_time``), latency (submission to ``end_time``), CPU per run of the
Prefect server and of PostgreSQL (while runs were submitted and served), the
workers' CPU and requests per run by endpoint (from worker start: a
subscription is a websocket, counted once). Printed as a Markdown table with
the ratio trio / Prefect; raw figures to ``bench-results/task-fleet-<date>.json``.
Never a timed assertion.

    python benchmarks/bench_task_fleet.py [--workers 4] [--runs 1000] [--kinds trio,prefect]
"""

# Small blocking file reads (the runs' markers, the workers' logs) are what a
# benchmark driver does; they are not worth threads here.
# ruff: noqa: ASYNC230

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fleet_tasks import TRIO_KEY, record
from _postgres import PostgresUnavailable, postgres_server
from _procs import peak_rss, sample_tree
from bench_worker import Proxy, clean_env, log, prefect_installed, running_api

from trio_worker._client._client import PrefectClient
from trio_worker._core._models import TERMINAL_STATE_TYPES, StateType
from trio_worker._core._patience import until_answered
from trio_worker._taskworker._store import LocalTaskStore
from trio_worker._taskworker._tasks import Task

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent
KINDS: Final = ("trio", "prefect")
#: What each kind prints once it is subscribed.
READY: Final = {"trio": "subscribed to", "prefect": "Subscribing to runs"}
GOING: Final = [t.value for t in StateType if t not in TERMINAL_STATE_TYPES]


class TaskFleetWorker:
    """One task-worker process of the fleet."""

    def __init__(self, kind: str, index: int, workdir: Path, args: argparse.Namespace) -> None:
        self.kind = kind
        self.name = f"{kind}-{index}"
        self.workdir = workdir
        self.args = args
        self.logfile = workdir / f"task-worker-{self.name}.log"
        self.process: trio.Process | None = None
        self.cpu = 0.0
        self.peak_rss = 0

    def argv(self) -> list[str]:
        limit = str(self.args.limit)
        if self.kind == "trio":
            serve = ["-m", "trio_worker", "task-worker", "serve", "_fleet_tasks:trio_record"]
            return [sys.executable, *serve, "--limit", limit]
        return [sys.executable, str(HERE / "_fleet_tasks.py"), limit]

    async def launch(self, api_url: str, store: Path) -> None:
        home = self.workdir / f"home-{self.name}"
        home.mkdir()
        env = clean_env(
            PREFECT_API_URL=api_url,
            PREFECT_HOME=str(home),
            # One store for the submitter and every worker of the fleet (ours, Prefect's).
            TRIO_WORKER_TASK_STORAGE=str(store),
            PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(store),
            PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore",
            PYTHONUNBUFFERED="1",
        )
        with open(self.logfile, "wb") as out:
            self.process = await trio.lowlevel.open_process(
                self.argv(), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(HERE)
            )

    async def wait_ready(self) -> None:
        """Wait until the worker's log says it subscribed (fail if it exits first)."""
        assert self.process is not None
        while READY[self.kind] not in self.logfile.read_text(errors="replace"):
            if self.process.returncode is not None:
                raise RuntimeError(f"task worker {self.name} exited; see {self.logfile}")
            await trio.sleep(0.1)

    def sample(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        tree = sample_tree(self.process.pid)
        if tree is not None:
            self.cpu = tree.tree_cpu
        rss = peak_rss(self.process.pid)
        if rss is not None:
            self.peak_rss = max(self.peak_rss, rss)

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.sample()
        self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(30):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def cpu_of(pid: int) -> float:
    tree = sample_tree(pid)
    return 0.0 if tree is None else tree.tree_cpu


def executions(markers: Path) -> Counter[str]:
    """How many times each token recorded an execution."""
    return Counter(
        {path.name: len(path.read_text().split()) for path in markers.iterdir() if path.is_file()}
    )


def submitted_task(kind: str, store: Path) -> Task[..., Any]:
    """What the submitter enqueues: ``record`` under the key the kind's workers serve."""
    key = TRIO_KEY
    if kind == "prefect":
        from _fleet_tasks import prefect_record  # imports prefect: only for its workers

        key = prefect_record().task_key
    return Task(record, key=key, name="fleet-record", store=LocalTaskStore(store))


async def submit(
    client: PrefectClient, submitted: Task[..., Any], markers: Path, runs: int, submitters: int
) -> dict[Any, dt.datetime]:
    """Submit ``runs`` runs from ``submitters`` tasks; map each run id to its submission time."""
    began_at: dict[Any, dt.datetime] = {}
    send, receive = trio.open_memory_channel[int](runs)
    for i in range(runs):
        send.send_nowait(i)
    send.close()

    async def submitter() -> None:
        async for i in receive:
            began = dt.datetime.now(dt.UTC)
            enqueue = functools.partial(submitted.enqueue, client, (str(markers), str(i)))
            handle = await until_answered(enqueue, what="submit", patience=300)
            began_at[handle.task_run_id] = began

    async with trio.open_nursery() as nursery:
        for _ in range(submitters):
            nursery.start_soon(submitter)
    return began_at


async def runs_by_state(client: PrefectClient, ids: list[Any]) -> dict[Any, Any]:
    """Read every run of ``ids`` (200 at a time): id -> run."""
    found: dict[Any, Any] = {}
    for first in range(0, len(ids), 200):
        chunk = [str(i) for i in ids[first : first + 200]]
        page = await client.read_task_runs(task_runs={"id": {"any_": chunk}}, limit=200)
        found.update((run.id, run) for run in page)
    return found


async def scenario(
    kind: str, api: dict[str, Any], proxy: Proxy, pg_pid: int, args: argparse.Namespace
) -> dict[str, Any]:
    n = args.runs
    with contextlib.ExitStack() as stack:
        if args.keep is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="task-fleet-")))
        else:
            workdir = args.keep / kind
            workdir.mkdir(parents=True)
        markers, store = workdir / "markers", workdir / "store"
        markers.mkdir()
        store.mkdir()
        workers = [TaskFleetWorker(kind, i, workdir, args) for i in range(args.workers)]
        await proxy.command("reset")
        await proxy.command("pid 0")
        try:
            for worker in workers:
                await worker.launch(proxy.url, store)
                assert worker.process is not None
                await proxy.command(f"pids {kind} {worker.process.pid}")
            with trio.fail_after(180):
                for worker in workers:
                    await worker.wait_ready()
            log(f"  {kind}: {len(workers)} task workers subscribed")
            submitted = submitted_task(kind, store)
            async with PrefectClient(api["url"], backoff_seconds=0.5) as client:
                server_before, pg_before = cpu_of(api["pid"]), cpu_of(pg_pid)
                start = dt.datetime.now(dt.UTC)
                began_at = await submit(client, submitted, markers, n, args.submitters)
                submit_seconds = (dt.datetime.now(dt.UTC) - start).total_seconds()
                log(f"  {kind}: submitted {n} runs in {submit_seconds:.1f} s")
                ids = list(began_at)
                unfinished = {
                    "id": {"any_": [str(i) for i in ids]},
                    "state": {"type": {"any_": GOING}},
                }
                outcome = "all final"
                last_seen, last_change = -1, time.monotonic()
                while await client.read_task_runs(task_runs=unfinished, limit=1):
                    for worker in workers:
                        worker.sample()
                    progress = sum(executions(markers).values())
                    if progress != last_seen:
                        last_seen, last_change = progress, time.monotonic()
                    if time.monotonic() - last_change > args.stall_seconds:
                        outcome = "stalled"
                        break
                    await trio.sleep(0.5)
                server_cpu = cpu_of(api["pid"]) - server_before
                pg_cpu = cpu_of(pg_pid) - pg_before
                for worker in workers:
                    worker.sample()
                counts = await proxy.command("counts")
                runs = await runs_by_state(client, ids)
        finally:
            for worker in workers:
                await worker.stop()
        ran = executions(markers)
    states = Counter(str(run.state.type.value if run.state else None) for run in runs.values())
    ends = {i: r.end_time for i, r in runs.items() if r.end_time is not None}
    latencies = sorted((ends[i] - began_at[i]).total_seconds() for i in began_at if i in ends)
    wall = (max(ends.values()) - start).total_seconds() if ends else math.nan
    requests: Counter[str] = Counter()
    for row in counts["requests"]:
        if row["origin"] == kind:
            requests[f"{row['method']} {row['path']}"] += row["count"]
    tokens = {str(i) for i in range(n)}
    result = {
        "kind": kind,
        "workers": args.workers,
        "runs": n,
        "outcome": outcome,
        "submit_s": submit_seconds,
        "wall_s": wall,
        "runs_per_s": n / wall,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else math.nan,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else math.nan,
        "duplicates": sum(1 for c in ran.values() if c > 1),
        "lost": len(tokens - set(ran)),
        "non_final": n - sum(states[t.value] for t in TERMINAL_STATE_TYPES),
        "not_completed": n - states[StateType.COMPLETED.value],
        "states": dict(states),
        "server_cpu_per_run_ms": 1000 * server_cpu / n,
        "postgres_cpu_per_run_ms": 1000 * pg_cpu / n,
        "worker_cpu_per_run_ms": 1000 * sum(w.cpu for w in workers) / n,
        "worker_peak_rss_mb": max(w.peak_rss for w in workers) / 2**20,
        "requests_per_run": sum(requests.values()) / n,
        "per_run_by_endpoint": {k: v / n for k, v in sorted(requests.items())},
    }
    log(
        f"  {kind}: {outcome} in {wall:.1f} s; dup {result['duplicates']},"
        f" lost {result['lost']}, non-final {result['non_final']}"
    )
    return result


ROWS: Final = [
    ("end condition", "outcome", "{}"),
    ("runs/s (first submission → last end)", "runs_per_s", "{:.1f}"),
    ("submitting alone", "submit_s", "{:.1f} s"),
    ("latency p50", "p50_ms", "{:.0f} ms"),
    ("latency p99", "p99_ms", "{:.0f} ms"),
    ("runs executed twice or more", "duplicates", "{}"),
    ("runs never executed (lost)", "lost", "{}"),
    ("runs left non-final", "non_final", "{}"),
    ("runs not COMPLETED", "not_completed", "{}"),
    ("Prefect server CPU per run", "server_cpu_per_run_ms", "{:.1f} ms"),
    ("PostgreSQL CPU per run", "postgres_cpu_per_run_ms", "{:.1f} ms"),
    ("task workers' CPU per run", "worker_cpu_per_run_ms", "{:.2f} ms"),
    ("peak RSS of one task worker", "worker_peak_rss_mb", "{:.1f} MB"),
    ("worker requests per run", "requests_per_run", "{:.2f}"),
]
#: Rows whose ratio says something (counts of failures have none).
RATIO_KEYS: Final = {
    "runs_per_s",
    "p50_ms",
    "p99_ms",
    "server_cpu_per_run_ms",
    "postgres_cpu_per_run_ms",
    "worker_cpu_per_run_ms",
    "worker_peak_rss_mb",
    "requests_per_run",
}


def render(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    by_kind = {r["kind"]: r for r in results}
    ours, theirs = by_kind.get("trio"), by_kind.get("prefect")
    header = ["", *(f"{r['workers']}x {r['kind']}" for r in results)]
    if ours and theirs:
        header.append("ratio trio / Prefect")
    lines = [
        f"Task-worker fleet on Prefect {meta['prefect_version']} + PostgreSQL {meta['postgres']},"
        f" {meta['runs']} runs, limit {meta['limit']} per task worker,"
        f" {meta['submitters']} submitters",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for label, key, fmt in ROWS:
        cells = [label, *(fmt.format(r[key]) for r in results)]
        if ours and theirs:
            ratio = key in RATIO_KEYS and theirs[key] and not math.isnan(theirs[key])
            cells.append(f"{ours[key] / theirs[key]:.2f}x" if ratio else "")
        lines.append("| " + " | ".join(cells) + " |")
    endpoints = sorted({k for r in results for k in r["per_run_by_endpoint"]})
    lines += ["", "Worker requests per run by endpoint:", ""]
    lines.append("| | " + " | ".join(header[1 : len(results) + 1]) + " |")
    lines.append("|" + "---|" * (len(results) + 1))
    for key in endpoints:
        values = [r["per_run_by_endpoint"].get(key) for r in results]
        cells = ["" if v is None else f"{v:.3f}" for v in values]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def run(args: argparse.Namespace, pg_url: str, pg: Any) -> None:
    meta: dict[str, Any] = {
        "postgres": pg.bin_dir.parent.name,
        "runs": args.runs,
        "limit": args.limit,
        "workers": args.workers,
        "submitters": args.submitters,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"task-fleet-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.json"
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="task-fleet-server-") as tmp:
        async with running_api(True, Path(tmp), database_url=pg_url) as api:
            meta["prefect_version"] = api["version"]
            proxy = await Proxy.start(api["port"])
            try:
                for kind in args.kinds.split(","):
                    log(f"task workers: {kind}")
                    results.append(await scenario(kind, api, proxy, pg.pid, args))
                    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
                    log(f"raw figures so far in {out}")
            finally:
                await proxy.stop()
    print(render(results, meta))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4, help="task workers in the fleet")
    parser.add_argument("--runs", type=int, default=1000, help="task runs per kind")
    parser.add_argument("--limit", type=int, default=50, help="each task worker's limit")
    parser.add_argument("--submitters", type=int, default=4)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--stall-seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--keep", type=Path, help="keep the workers' logs and markers here")
    parser.add_argument("--render", type=Path, help="print the tables of a saved JSON and exit")
    args = parser.parse_args(argv)
    unknown = set(args.kinds.split(",")) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        saved = json.loads(args.render.read_text())
        print(render(saved["results"], saved["meta"]))
        return 0
    if not prefect_installed():
        print("bench_task_fleet.py needs Prefect installed (nox -s fleet)", file=sys.stderr)
        return 2
    try:
        with postgres_server(install=True, durable=True) as pg:
            pg.create_database("prefect")
            log(f"PostgreSQL at {pg.host}:{pg.port}")
            trio.run(run, args, pg.sqlalchemy_url("prefect"), pg)
    except PostgresUnavailable as exc:
        print(f"bench_task_fleet.py needs PostgreSQL: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fleet benchmark: N workers on one work pool of a PostgreSQL-backed Prefect server.

A fleet shares one server, so what each worker costs that server decides how
far the fleet scales. This starts a throwaway PostgreSQL (``_postgres.py``), a
``prefect server start`` on it, and the counting proxy (``_counting_proxy.py``)
in front, then runs these scenarios, each on a fresh pool with ``--runs`` runs
scheduled before the fleet starts:

1. ``trio``: N trio-workers;
2. ``prefect``: N Prefect workers;
3. ``mixed``: N/2 of each on the same pool;
4. ``kill``: N trio-workers, two of them SIGKILLed once a third of the runs
   ended and restarted at once under the same names (they reconcile the runs
   their previous lives left).

Every run is ``sh -c 'echo $$ >> MARKERS/$PREFECT__FLOW_RUN_ID; sleep S'``: it
records its own execution, so exactly-once is read from the disk, not from
the server's states: duplicates (ids run more than once), lost (ids never
run), non-final (states left SCHEDULED/PENDING/RUNNING at the end; Prefect's
worker leaves a plain command that exits 0 PENDING by design, so its
non-final count is its behaviour, not a lost run). Also throughput, CPU per
run of the Prefect server and of PostgreSQL, the workers' CPU and requests per
run by endpoint. Printed as Markdown tables side by side; raw figures to
``bench-results/fleet-<date>.json``. Never a timed assertion.

    python benchmarks/bench_fleet.py [--workers 4] [--runs 1000] [--scenarios trio,prefect]
"""

# Small blocking file reads (the runs' markers) are what a benchmark
# driver does; they are not worth threads here.
# ruff: noqa: ASYNC230

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Final

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _postgres import PostgresUnavailable, postgres_server
from _procs import descendants, peak_rss, sample_tree
from bench_worker import (
    POLLING_ENDPOINTS,
    Proxy,
    clean_env,
    log,
    prefect_executable,
    prefect_installed,
    running_api,
)

from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import APIError
from trio_worker._process._config import process_base_job_template

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent
SCENARIOS: Final = ("trio", "prefect", "mixed", "kill")
FINAL: Final = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")


class FleetWorker:
    """One worker process of the fleet (``trio`` or ``prefect``)."""

    def __init__(self, kind: str, name: str, pool: str, bench: Fleet) -> None:
        self.kind = kind
        self.name = name
        self.pool = pool
        self.bench = bench
        self.process: trio.Process | None = None
        self.peak_rss = 0
        self.cpu = 0.0
        #: CPU of earlier lives (a killed and restarted worker).
        self.cpu_before = 0.0

    def argv(self) -> list[str]:
        args = self.bench.args
        common = ["--pool", self.pool, "--type", "process", "--limit", str(args.limit)]
        common += ["--name", self.name]
        if self.kind == "trio":
            return [sys.executable, "-m", "trio_worker", "start", *common, "--drain-timeout", "5"]
        return [prefect_executable(), "worker", "start", *common]

    async def launch(self) -> None:
        home = self.bench.workdir / f"home-{self.name}"
        home.mkdir(exist_ok=True)
        env = clean_env(
            PREFECT_API_URL=self.bench.proxy.url,
            PREFECT_HOME=str(home),
            PREFECT_WORKER_QUERY_SECONDS=str(self.bench.args.query_seconds),
            # The same state dir for a restarted worker of the same name: it reconciles.
            TRIO_WORKER_STATE_DIR=str(home / "state"),
        )
        with open(self.bench.workdir / f"worker-{self.name}.log", "ab") as out:
            self.process = await trio.lowlevel.open_process(
                self.argv(), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(home)
            )
        await self.bench.proxy.command(f"pids {self.kind} {self.process.pid}")

    def sample(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        tree = sample_tree(self.process.pid)
        if tree is not None:
            self.cpu = tree.own_cpu
        rss = peak_rss(self.process.pid)
        if rss is not None:
            self.peak_rss = max(self.peak_rss, rss)

    async def kill(self) -> None:
        """SIGKILL: no drain, no reports; its runs' processes live on."""
        assert self.process is not None
        self.sample()
        self.process.kill()
        await self.process.wait()
        self.cpu_before, self.cpu = self.cpu_before + self.cpu, 0.0

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.sample()
        leftovers = descendants(self.process.pid)
        self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(60):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Fleet:
    """What the scenarios share: options, server, PostgreSQL, proxy, a setup client."""

    def __init__(self, args: argparse.Namespace, workdir: Path, pg_pid: int) -> None:
        self.args = args
        self.workdir = workdir
        self.pg_pid = pg_pid
        self.api: dict[str, Any] = {}
        self.proxy: Proxy
        self.client: PrefectClient

    async def create_runs(self, deployment_id: uuid.UUID, n: int) -> list[uuid.UUID]:
        ids: list[uuid.UUID] = []

        async def create(count: int) -> None:
            for _ in range(count):
                for attempt in range(30):
                    try:
                        run = await self.client.create_flow_run_from_deployment(deployment_id)
                    except APIError as exc:
                        if attempt == 29:
                            raise
                        log(f"  creating a run failed ({exc}); retrying")
                        await trio.sleep(1.0)
                    else:
                        ids.append(run.id)
                        break

        writers = 8
        async with trio.open_nursery() as nursery:
            for i in range(writers):
                nursery.start_soon(create, n // writers + (1 if i < n % writers else 0))
        return ids

    async def states(self, deployment_id: uuid.UUID) -> Counter[str]:
        found: Counter[str] = Counter()
        offset = 0
        while True:
            page = await self.client.request(
                "POST",
                "flow_runs/filter",
                json_body={
                    "flow_runs": {"deployment_id": {"any_": [str(deployment_id)]}},
                    "limit": 200,
                    "offset": offset,
                    "sort": "ID_DESC",
                },
            )
            found.update(str((r.get("state") or {}).get("type")) for r in page)
            if len(page) < 200:
                return found
            offset += len(page)


def cpu_of(pid: int) -> float:
    tree = sample_tree(pid)
    return 0.0 if tree is None else tree.tree_cpu


def executions(markers: Path) -> Counter[str]:
    """How many times each run id recorded an execution."""
    return Counter(
        {path.name: len(path.read_text().split()) for path in markers.iterdir() if path.is_file()}
    )


async def scenario(fleet: Fleet, name: str, kinds: list[str]) -> dict[str, Any]:
    args = fleet.args
    pool = f"fleet-{name}-{uuid.uuid4().hex[:6]}"
    markers = fleet.workdir / f"markers-{pool}"
    markers.mkdir()
    await fleet.client.create_work_pool(
        pool, type="process", base_job_template=process_base_job_template()
    )
    flow = await fleet.client.create_flow(f"fleet-{name}")
    script = 'echo $$ >> "$0/$PREFECT__FLOW_RUN_ID"' + (
        f"; sleep {args.run_seconds:g}" if args.run_seconds else ""
    )
    command = shlex.join(["sh", "-c", script, str(markers)])
    deployment = await fleet.client.create_deployment(
        flow_id=flow.id,
        name=pool,
        work_pool_name=pool,
        job_variables={"command": command, "stream_output": False},
    )
    started = time.monotonic()
    run_ids = await fleet.create_runs(deployment.id, args.runs)
    log(f"  {name}: created {len(run_ids)} runs in {time.monotonic() - started:.1f} s")
    workers = [FleetWorker(kind, f"{name}-{kind}-{i}", pool, fleet) for i, kind in enumerate(kinds)]
    await fleet.proxy.command("reset")
    await fleet.proxy.command("pid 0")
    server_before, pg_before = cpu_of(fleet.api["pid"]), cpu_of(fleet.pg_pid)
    t0 = time.monotonic()
    for worker in workers:
        await worker.launch()
    killed: list[str] = []
    last_change, last_seen = time.monotonic(), -1
    outcome = "stalled"
    try:
        while True:
            await trio.sleep(0.5)
            for worker in workers:
                worker.sample()
            ran = executions(markers)
            states = await fleet.states(deployment.id)
            final = sum(states[t] for t in FINAL)
            progress = final + len(ran)
            if progress != last_seen:
                last_seen, last_change = progress, time.monotonic()
            if name == "kill" and not killed and final >= args.runs // 3:
                for victim in workers[:2]:
                    await victim.kill()
                    killed.append(victim.name)
                log(f"  {name}: SIGKILLed {', '.join(killed)} at {final} final runs; restarting")
                for victim in workers[:2]:
                    await victim.launch()
            if final == args.runs:
                outcome = "all final"
                break
            # Prefect's worker never finalises a plain command: done once all ran and settled.
            if len(ran) >= args.runs and time.monotonic() - last_change > args.settle_seconds:
                outcome = "all ran, some never final"
                break
            if time.monotonic() - last_change > args.stall_seconds:
                break
        wall = time.monotonic() - t0
        counts = await fleet.proxy.command("counts")
        server_cpu = cpu_of(fleet.api["pid"]) - server_before
        pg_cpu = cpu_of(fleet.pg_pid) - pg_before
        for worker in workers:
            worker.sample()
    finally:
        for worker in workers:
            await worker.stop()
    ran = executions(markers)
    states = await fleet.states(deployment.id)
    n = args.runs
    requests: Counter[str] = Counter()
    by_endpoint: dict[str, float] = {}
    polls = 0
    for row in counts["requests"]:
        if row["origin"] == "runs":
            continue
        key = f"{row['method']} {row['path']}"
        requests[row["origin"]] += row["count"]
        by_endpoint[f"{row['origin']} {key}"] = (
            by_endpoint.get(f"{row['origin']} {key}", 0) + row["count"] / n
        )
        if (row["method"], row["path"]) in POLLING_ENDPOINTS:
            polls += row["count"]
    result = {
        "scenario": name,
        "workers": kinds,
        "killed": killed,
        "runs": n,
        "outcome": outcome,
        "wall_s": wall,
        "runs_per_s": n / wall,
        "duplicates": sum(1 for c in ran.values() if c > 1),
        "extra_executions": sum(c - 1 for c in ran.values() if c > 1),
        "lost": n - len(set(ran) & {str(i) for i in run_ids}),
        "non_final": n - sum(states[t] for t in FINAL),
        "states": dict(states),
        "server_cpu_per_run_s": server_cpu / n,
        "postgres_cpu_per_run_s": pg_cpu / n,
        "worker_cpu_per_run_s": sum(w.cpu + w.cpu_before for w in workers) / n,
        "worker_peak_rss_mb": max(w.peak_rss for w in workers) / 2**20,
        "requests_per_run": sum(requests.values()) / n,
        "non_polling_requests_per_run": (sum(requests.values()) - polls) / n,
        "requests_by_origin": dict(requests),
        "per_run_by_endpoint": dict(sorted(by_endpoint.items())),
    }
    log(
        f"  {name}: {result['outcome']} in {wall:.1f} s; dup {result['duplicates']},"
        f" lost {result['lost']}, non-final {result['non_final']}"
    )
    return result


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if value < 100 else f"{value:.0f}"
    return str(value)


def render(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    rows = [
        ("workers", lambda r: ", ".join(f"{c}x {k}" for k, c in Counter(r["workers"]).items())),
        ("end condition", lambda r: r["outcome"]),
        ("wall time, fleet start → end", lambda r: f"{r['wall_s']:.1f} s"),
        ("runs/s", lambda r: fmt(r["runs_per_s"])),
        ("runs executed twice or more", lambda r: r["duplicates"]),
        ("runs never executed (lost)", lambda r: r["lost"]),
        ("runs left non-final", lambda r: r["non_final"]),
        ("Prefect server CPU per run", lambda r: f"{r['server_cpu_per_run_s']:.3f} s"),
        ("PostgreSQL CPU per run", lambda r: f"{r['postgres_cpu_per_run_s']:.3f} s"),
        ("workers' CPU per run", lambda r: f"{r['worker_cpu_per_run_s']:.3f} s"),
        ("peak RSS of one worker", lambda r: f"{r['worker_peak_rss_mb']:.1f} MB"),
        ("worker requests per run", lambda r: fmt(r["requests_per_run"])),
        ("… besides polling", lambda r: fmt(r["non_polling_requests_per_run"])),
    ]
    header = "| | " + " | ".join(r["scenario"] for r in results) + " |"
    lines = [
        f"Fleet on Prefect {meta['prefect_version']} + PostgreSQL {meta['postgres']},"
        f" {meta['runs']} runs, limit {meta['limit']} per worker,"
        f" query every {meta['query_seconds']:g} s, runs `sleep {meta['run_seconds']:g}`",
        "",
        header,
        "|---" * (len(results) + 1) + "|",
    ]
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(get(r)) for r in results) + " |")
    endpoints = sorted({k for r in results for k in r["per_run_by_endpoint"]})
    lines += ["", "Requests per run by endpoint (origin = worker kind):", "", header]
    lines.append("|---" * (len(results) + 1) + "|")
    for key in endpoints:
        values = [r["per_run_by_endpoint"].get(key) for r in results]
        cells = ["" if v is None else f"{v:.3f}" for v in values]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def run(args: argparse.Namespace, workdir: Path, pg_url: str, pg: Any) -> None:
    fleet = Fleet(args, workdir, pg.pid)
    meta = {
        "postgres": pg.bin_dir.parent.name,
        "runs": args.runs,
        "limit": args.limit,
        "query_seconds": args.query_seconds,
        "run_seconds": args.run_seconds,
        "workers": args.workers,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"fleet-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.json"
    results: list[dict[str, Any]] = []
    async with running_api(True, workdir, database_url=pg_url) as api:
        meta["prefect_version"] = api["version"]
        fleet.api = api
        fleet.proxy = await Proxy.start(api["port"])
        try:
            async with PrefectClient(api["url"], backoff_seconds=0.5) as client:
                fleet.client = client
                n = args.workers
                plans = {
                    "trio": ["trio"] * n,
                    "prefect": ["prefect"] * n,
                    "mixed": ["trio"] * (n - n // 2) + ["prefect"] * (n // 2),
                    "kill": ["trio"] * n,
                }
                for name in args.scenarios.split(","):
                    log(f"scenario {name}")
                    results.append(await scenario(fleet, name, plans[name]))
                    # Each scenario's figures are kept as soon as it ends.
                    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
                    log(f"raw figures so far in {out}")
        finally:
            await fleet.proxy.stop()
    print(render(results, meta))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4, help="workers in the fleet")
    parser.add_argument("--runs", type=int, default=1000, help="runs per scenario")
    parser.add_argument("--limit", type=int, default=25, help="each worker's --limit")
    parser.add_argument("--run-seconds", type=float, default=0.5, help="each run's sleep")
    parser.add_argument("--query-seconds", type=float, default=1.0)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--settle-seconds", type=float, default=10.0)
    parser.add_argument("--stall-seconds", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--keep", type=Path, help="keep the workers' logs and markers here")
    parser.add_argument("--render", type=Path, help="print the tables of a saved JSON and exit")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.workers < 2:
        parser.error("--workers must be at least 2 (a fleet; the kill scenario kills two)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        saved = json.loads(args.render.read_text())
        print(render(saved["results"], saved["meta"]))
        return 0
    if not prefect_installed():
        print("bench_fleet.py needs Prefect installed (nox -s fleet)", file=sys.stderr)
        return 2
    try:
        with (
            postgres_server(install=True, durable=True) as pg,
            tempfile.TemporaryDirectory(prefix="trio-worker-fleet-") as tmp,
        ):
            pg.create_database("prefect")
            log(f"PostgreSQL at {pg.host}:{pg.port}")
            workdir = Path(tmp)
            if args.keep is not None:
                workdir = args.keep
                workdir.mkdir(parents=True)
            trio.run(run, args, workdir, pg.sqlalchemy_url("prefect"), pg)
    except PostgresUnavailable as exc:
        print(f"bench_fleet.py needs PostgreSQL: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

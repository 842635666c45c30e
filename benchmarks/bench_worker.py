"""Benchmark ``trio-worker start`` side by side with ``prefect worker start``.

Starts an API (trio-worker's embedded one by default, a real ``prefect server
start`` on SQLite with ``--prefect``), puts a counting HTTP proxy
(``_counting_proxy.py``) in front of it, and for each worker under test runs
the scenarios of issue 10 with the worker as a separate process:

1. ``startup``: launch → first ``get_scheduled_flow_runs``; RSS and CPU after N s idle;
2. ``throughput``: N ``true`` runs scheduled before the worker starts, ``--limit``;
   the same with ``--big-runs`` and with a no-op Python function through each
   worker's own engine (``engine``);
3. ``pickup``: a run scheduled while the worker is idle → its process started;
4. ``cancel``: CANCELLING proposed for a running ``sleep 300`` → CANCELLED and no process;
5. ``shutdown``: SIGTERM with runs in flight → exit time, runs left non-final, processes left.

Both workers get the same ``PREFECT_WORKER_QUERY_SECONDS`` (``--query-seconds``).
Prints one Markdown table per scenario, writes every raw figure to
``bench-results/worker-<date>.json`` and, unless ``--no-docs`` or ``--quick``,
the tables to ``docs/performance.md``.

    python benchmarks/bench_worker.py [--prefect] [--runs 200] [--quick]
"""

# Polling loops with short sleeps and small blocking file reads are what a benchmark
# driver does; they are not worth trio.Event plumbing or threads here.
# ruff: noqa: ASYNC110, ASYNC230, ASYNC240

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import alive, descendants, peak_rss, read_stat, sample_tree

from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import APIError
from trio_worker._core._models import State, StateType
from trio_worker._process._config import process_base_job_template

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent
PROXY_SCRIPT: Final = HERE / "_counting_proxy.py"
FINAL_TYPES: Final = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
NON_FINAL_TYPES: Final = ("SCHEDULED", "PENDING", "RUNNING", "CANCELLING", "PAUSED")
#: Endpoints whose traffic does not grow with the number of runs.
POLLING_ENDPOINTS: Final = frozenset(
    {
        ("POST", "/api/work_pools/{pool}/get_scheduled_flow_runs"),
        ("POST", "/api/work_pools/{pool}/workers/heartbeat"),
        ("GET", "/api/work_pools/{pool}"),
        ("POST", "/api/flow_runs/filter"),
        ("POST", "/api/work_pools/{pool}/queues/filter"),
        ("GET", "/api/work_pools/{pool}/queues/{queue}"),
        ("GET", "/api/health"),
        ("GET", "/api/csrf-token"),
        ("GET", "/api/admin/version"),
    }
)
NOTES_MARKER: Final = "<!-- notes: kept when the tables above are regenerated -->"
NOOP_PLAIN: Final = "def noop():\n    return None\n"
NOOP_FLOW: Final = "from prefect import flow\n\n\n@flow\ndef noop():\n    return None\n"


def log(message: str) -> None:
    """Progress goes to stderr; tables go to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(extra)
    return env


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank, q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# -- the API and the proxy ---------------------------------------------------------


class Proxy:
    """The counting proxy subprocess, driven over its stdin/stdout."""

    def __init__(self, process: trio.Process, port: int) -> None:
        self.process = process
        self.port = port
        self._lines = b""
        self.url = f"http://127.0.0.1:{port}/api"

    @classmethod
    async def start(cls, upstream_port: int) -> Proxy:
        process = await trio.lowlevel.open_process(
            [sys.executable, str(PROXY_SCRIPT), str(upstream_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        proxy = cls(process, 0)
        line = await proxy._readline()
        proxy.port = int(line.split()[1])
        proxy.url = f"http://127.0.0.1:{proxy.port}/api"
        return proxy

    async def _readline(self) -> str:
        assert self.process.stdout is not None
        while b"\n" not in self._lines:
            data = await self.process.stdout.receive_some(65536)
            if not data:
                raise RuntimeError("the counting proxy exited")
            self._lines += data
        line, self._lines = self._lines.split(b"\n", 1)
        return line.decode()

    async def command(self, text: str) -> Any:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(text.encode() + b"\n")
        return json.loads(await self._readline())

    async def stop(self) -> None:
        if self.process.stdin is not None:
            await self.process.stdin.aclose()
        with trio.move_on_after(5):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@contextlib.asynccontextmanager
async def running_api(
    prefect: bool, workdir: Path, database_url: str | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Start the API server; yield ``{"url", "pid", "kind", "version"}``; stop it on exit.

    ``database_url`` points a Prefect server at another database than its SQLite
    file (PostgreSQL for the fleet benchmark).
    """
    port = free_port()
    logfile = open(workdir / "server.log", "wb")  # noqa: SIM115
    if prefect:
        home = workdir / "prefect-server-home"
        home.mkdir()
        env = clean_env(
            PREFECT_HOME=str(home),
            PREFECT_UI_ENABLED="false",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_API_DATABASE_CONNECTION_URL=database_url
            or f"sqlite+aiosqlite:///{home}/prefect.db",
        )
        argv = [prefect_executable(), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        kind = "prefect"
    else:
        env = clean_env()
        argv = [sys.executable, "-m", "trio_worker", "server", "start", "--port", str(port)]
        argv += ["--db", str(workdir / "api.db")]
        kind = "embedded"
    log(f"starting the {kind} API: {shlex.join(argv)}")
    process = await trio.lowlevel.open_process(
        argv, env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the API exited with {process.returncode}; see server.log")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url + "/health")).status_code == 200:
                        break
                if time.monotonic() - started > 180:
                    raise RuntimeError("the API did not answer /health within 180 s")
                await trio.sleep(0.2)
            version = (await http.get(url + "/admin/version")).json()
        log(
            f"{kind} API ready at {url} after {time.monotonic() - started:.1f} s"
            f" (version {version})"
        )
        yield {"url": url, "port": port, "pid": process.pid, "kind": kind, "version": version}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with trio.move_on_after(15):
            await process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        logfile.close()


def prefect_executable() -> str:
    return str(Path(sys.executable).with_name("prefect"))


def prefect_installed() -> bool:
    return importlib.util.find_spec("prefect") is not None and Path(prefect_executable()).exists()


# -- workers --------------------------------------------------------------------------


class Worker:
    """One worker process under test (``trio`` or ``prefect``)."""

    def __init__(self, kind: str, bench: Bench, pool: str, tag: str) -> None:
        self.kind = kind
        self.bench = bench
        self.pool = pool
        self.tag = tag
        self.process: trio.Process | None = None
        self.launched = 0.0
        self.exit_seconds: float | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def argv(self) -> list[str]:
        limit = ["--limit", str(self.bench.args.limit)]
        if self.kind == "trio":
            return [
                sys.executable,
                "-m",
                "trio_worker",
                "start",
                "--pool",
                self.pool,
                "--type",
                "process",
                *limit,
                "--drain-timeout",
                str(self.bench.args.drain_timeout),
            ]
        return [
            prefect_executable(),
            "worker",
            "start",
            "--pool",
            self.pool,
            "--type",
            "process",
            *limit,
        ]

    def env(self) -> dict[str, str]:
        home = self.bench.workdir / f"home-{self.tag}"
        home.mkdir(exist_ok=True)
        return clean_env(
            PREFECT_API_URL=self.bench.proxy.url,
            PREFECT_HOME=str(home),
            PREFECT_WORKER_QUERY_SECONDS=str(self.bench.args.query_seconds),
            TRIO_WORKER_DB=str(home / "unused.db"),
        )

    async def launch(self) -> None:
        logfile = open(self.bench.workdir / f"worker-{self.tag}.log", "wb")  # noqa: SIM115
        await self.bench.proxy.command("reset")
        self.launched = time.monotonic()
        self.process = await trio.lowlevel.open_process(
            self.argv(),
            env=self.env(),
            stdout=logfile,
            stderr=subprocess.STDOUT,
            cwd=str(self.bench.workdir),
        )
        logfile.close()
        await self.bench.proxy.command(f"pid {self.process.pid}")
        if self.bench.args.py_spy:
            # A sampling profile of the whole scenario, for finding what bounds a figure.
            out = self.bench.args.out / f"profile-{self.tag}.txt"
            self.bench.args.out.mkdir(parents=True, exist_ok=True)
            await trio.lowlevel.open_process(
                [
                    self.bench.args.py_spy,
                    "record",
                    "--pid",
                    str(self.process.pid),
                    "--rate",
                    "250",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    async def wait_first_poll(
        self, timeout: float = 120.0
    ) -> tuple[float, list[tuple[float, Any]]]:
        """Wait for the worker's first poll; return its time and the CPU samples taken meanwhile."""
        samples: list[tuple[float, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            samples.append((time.monotonic(), sample_tree(self.pid)))
            counts = await self.bench.proxy.command("counts")
            if counts["worker_polls_monotonic"]:
                return counts["worker_polls_monotonic"][0], samples
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} worker exited with {self.process.returncode}")
            await trio.sleep(0.02)
        raise RuntimeError(f"{self.kind} worker did not poll within {timeout} s")

    async def stop(self, timeout: float = 60.0) -> float | None:
        """SIGTERM, wait (then SIGKILL); kill leftovers; return seconds to exit after SIGTERM."""
        if self.process is None or self.process.returncode is not None:
            return self.exit_seconds
        leftovers = descendants(self.pid)
        sent = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(timeout):
            await self.process.wait()
        if self.process.returncode is None:
            log(f"{self.kind} worker ignored SIGTERM for {timeout} s; killing it")
            self.process.kill()
            await self.process.wait()
        else:
            self.exit_seconds = time.monotonic() - sent
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        return self.exit_seconds


# -- the benchmark --------------------------------------------------------------------


class Bench:
    """Everything one benchmark run shares: options, API, proxy, setup client, results."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.proxy: Proxy
        self.api: dict[str, Any]
        self.client: PrefectClient
        self.results: dict[str, dict[str, Any]] = {}
        self.wall_offset = time.time() - time.monotonic()

    async def pool(self, name: str) -> None:
        await self.client.create_work_pool(
            name, type="process", base_job_template=process_base_job_template()
        )

    async def deployment(self, pool: str, name: str, **fields: Any) -> uuid.UUID:
        flow = await self.client.create_flow(f"bench-{name}")
        deployment = await self.client.create_deployment(
            flow_id=flow.id, name=name, work_pool_name=pool, **fields
        )
        return deployment.id

    async def create_runs(self, deployment_id: uuid.UUID, n: int) -> list[uuid.UUID]:
        ids: list[uuid.UUID] = []

        # A SQLite-backed Prefect server answers 503 ("database is locked") to bursts
        # of writes for longer than the client's own retries last: fewer writers
        # there, and each run is retried until it is created.
        writers = 2 if self.api["kind"] == "prefect" else 8

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

        async with trio.open_nursery() as nursery:
            for i in range(writers):
                nursery.start_soon(create, n // writers + (1 if i < n % writers else 0))
        return ids

    async def runs_of(
        self, deployment_id: uuid.UUID, types: tuple[str, ...] | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"flow_runs": {"deployment_id": {"any_": [str(deployment_id)]}}}
        if types is not None:
            body["flow_runs"]["state"] = {"type": {"any_": list(types)}}
        found: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = await self.client.request(
                "POST",
                "flow_runs/filter",
                json_body={**body, "limit": min(limit, 200), "offset": offset, "sort": "ID_DESC"},
            )
            found.extend(page)
            if len(page) < 200 or len(found) >= limit:
                return found
            offset += len(page)

    async def tally(self, deployment_id: uuid.UUID, n: int) -> dict[str, int]:
        runs = await self.runs_of(deployment_id, limit=n + 200)
        return dict(Counter(str((r.get("state") or {}).get("name")) for r in runs))

    async def counts(self) -> dict[str, Any]:
        return summarise_counts(await self.proxy.command("counts"))

    def new_worker(self, kind: str, scenario: str) -> tuple[Worker, str]:
        pool = f"bench-{scenario}-{kind}-{uuid.uuid4().hex[:6]}"
        return Worker(kind, self, pool, f"{kind}-{scenario}"), pool


def summarise_counts(raw: dict[str, Any]) -> dict[str, Any]:
    """Requests by origin and endpoint, with statuses, from the proxy's raw counts."""
    by_endpoint: dict[str, dict[str, Any]] = {}
    totals: Counter[str] = Counter()
    polling: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for row in raw["requests"]:
        origin, method, path, status, n = (
            row[k] for k in ("origin", "method", "path", "status", "count")
        )
        key = f"{origin} {method} {path}"
        entry = by_endpoint.setdefault(key, {"count": 0, "statuses": {}})
        entry["count"] += n
        entry["statuses"][str(status)] = entry["statuses"].get(str(status), 0) + n
        totals[origin] += n
        if (method, path) in POLLING_ENDPOINTS:
            polling[origin] += n
        if status >= 500:
            errors[origin] += n
    return {
        "by_endpoint": dict(sorted(by_endpoint.items())),
        "total": dict(totals),
        "polling": dict(polling),
        "server_errors": dict(errors),
        "connections": raw.get("connections", {}),
        "polls": len(raw["worker_polls_monotonic"]),
    }


def command_job(command: str) -> dict[str, Any]:
    return {"job_variables": {"command": command, "stream_output": False}}


def marker_command(markers: Path, then: str = "") -> str:
    script = 'echo $$ > "$0/$PREFECT__FLOW_RUN_ID"' + (f"; {then}" if then else "")
    return shlex.join(["sh", "-c", script, str(markers)])


# -- scenarios --------------------------------------------------------------------------


async def scenario_startup(bench: Bench, kind: str) -> dict[str, Any]:
    worker, pool = bench.new_worker(kind, "startup")
    await bench.pool(pool)
    await worker.launch()
    try:
        first_poll, _ = await worker.wait_first_poll()
        startup = first_poll - worker.launched
        idle_until = worker.launched + bench.args.idle_seconds
        at_poll = sample_tree(worker.pid)
        peak = 0
        while time.monotonic() < idle_until:
            sample = sample_tree(worker.pid)
            if sample is not None:
                peak = max(peak, sample.rss)
            await trio.sleep(0.25)
        idle = sample_tree(worker.pid)
        assert idle is not None
        assert at_poll is not None
        counts = await bench.counts()
        return {
            "startup_to_first_poll_s": startup,
            "idle_seconds": bench.args.idle_seconds,
            "idle_rss_bytes": idle.rss,
            "idle_peak_rss_bytes": max(peak, idle.rss),
            "idle_cpu_s": idle.tree_cpu,
            "idle_own_cpu_s": idle.own_cpu,
            "cpu_after_first_poll_s": idle.tree_cpu - at_poll.tree_cpu,
            "processes": idle.processes,
            "requests": counts,
        }
    finally:
        await worker.stop()


async def scenario_throughput(bench: Bench, kind: str, n: int, mode: str) -> dict[str, Any]:
    """N runs scheduled before the worker starts; ``mode`` is ``true`` or ``engine``."""
    worker, pool = bench.new_worker(kind, f"{mode}{n}")
    await bench.pool(pool)
    if mode == "true":
        deployment_id = await bench.deployment(pool, f"true-{pool}", **command_job("true"))
    else:
        code_dir = bench.workdir / "flows"
        if kind == "trio":
            fields: dict[str, Any] = {"entrypoint": "noop_plain.py:noop", "path": str(code_dir)}
        else:
            fields = {
                "entrypoint": "noop_flow.py:noop",
                "path": str(code_dir),
                "pull_steps": [
                    {
                        "prefect.deployments.steps.set_working_directory": {
                            "directory": str(code_dir)
                        }
                    }
                ],
            }
        fields["job_variables"] = {"stream_output": False}
        deployment_id = await bench.deployment(pool, f"noop-{pool}", **fields)
    created = time.monotonic()
    await bench.create_runs(deployment_id, n)
    log(f"  {kind}: created {n} {mode} runs in {time.monotonic() - created:.1f} s")
    server_before = read_stat(bench.api["pid"])
    proxy_before = read_stat(bench.proxy.process.pid)
    await worker.launch()
    try:
        first_poll, samples = await worker.wait_first_poll()
        before = [s for t, s in samples if t <= first_poll and s is not None]
        cpu_at_poll = before[-1] if before else samples[0][1]
        tree_peak = max((s.rss for _, s in samples if s is not None), default=0)
        peak_processes = 0
        last_activity = time.monotonic()
        last_requests = -1
        last_check = 0.0
        outcome = "stalled"
        all_final = False
        scheduled_left = True
        stall_since = time.monotonic()
        sample = cpu_at_poll
        while True:
            now = time.monotonic()
            current = sample_tree(worker.pid)
            if current is None:
                outcome = "worker exited"
                break
            sample = current
            tree_peak = max(tree_peak, current.rss)
            peak_processes = max(peak_processes, current.processes)
            if current.runs > 0:
                last_activity = now
            if now - last_check >= 0.1:
                last_check = now
                all_final = not await bench.runs_of(deployment_id, NON_FINAL_TYPES, limit=1)
                scheduled_left = bool(await bench.runs_of(deployment_id, ("SCHEDULED",), limit=1))
                counts = await bench.proxy.command("counts")
                non_poll = sum(
                    r["count"]
                    for r in counts["requests"]
                    if r["origin"] == "worker" and (r["method"], r["path"]) not in POLLING_ENDPOINTS
                )
                if non_poll != last_requests:
                    last_requests = non_poll
                    last_activity = now
                    stall_since = now
                if current.runs > 0:
                    stall_since = now
            if all_final and current.runs == 0:
                outcome = "all final"
                last_activity = now
                break
            if (
                not scheduled_left
                and current.runs == 0
                and now - last_activity > bench.args.settle_seconds
            ):
                outcome = "all picked up, some never final"
                break
            if now - stall_since > bench.args.stall_seconds:
                outcome = "stalled"
                break
            await trio.sleep(0.05)
        end = last_activity
        wall = end - first_poll
        worker_cpu = sample.own_cpu - cpu_at_poll.own_cpu
        tree_cpu = sample.tree_cpu - cpu_at_poll.tree_cpu
        counts = await bench.counts()
        server_after = read_stat(bench.api["pid"])
        worker_peak_rss = peak_rss(worker.pid)
        proxy_after = read_stat(bench.proxy.process.pid)
    finally:
        await worker.stop()
    await trio.sleep(0.5)
    tally = await bench.tally(deployment_id, n)
    final = sum(v for k, v in tally.items() if k in ("Completed", "Failed", "Cancelled", "Crashed"))
    completed = tally.get("Completed", 0)
    server_cpu = None
    if server_before is not None and server_after is not None:
        server_cpu = server_after.cpu - server_before.cpu
    proxy_cpu = None
    if proxy_before is not None and proxy_after is not None:
        proxy_cpu = proxy_after.cpu - proxy_before.cpu
    return {
        "runs": n,
        "mode": mode,
        "outcome": outcome,
        "wall_s": wall,
        "runs_per_s": n / wall if wall > 0 else None,
        "worker_cpu_s": worker_cpu,
        "worker_cpu_per_run_s": worker_cpu / n,
        "tree_cpu_s": tree_cpu,
        "tree_cpu_per_run_s": tree_cpu / n,
        "server_cpu_s": server_cpu,
        "proxy_cpu_s": proxy_cpu,
        "peak_rss_bytes": tree_peak,
        "worker_peak_rss_bytes": worker_peak_rss,
        "peak_processes": peak_processes,
        "states": tally,
        "final": final,
        "completed": completed,
        "not_final": n - final,
        "requests": counts,
        **request_figures(counts, n),
    }


def request_figures(counts: dict[str, Any], n: int) -> dict[str, Any]:
    """Requests per run, from the proxy's counts by endpoint (also used by ``--render``)."""
    worker = polling = runs = errors = 0
    per_run: dict[str, float] = {}
    for key, entry in counts["by_endpoint"].items():
        origin, method, path = key.split(" ", 2)
        if origin == "worker":
            worker += entry["count"]
            per_run[f"{method} {path}"] = entry["count"] / n
            if (method, path) in POLLING_ENDPOINTS:
                polling += entry["count"]
            errors += sum(c for s, c in entry["statuses"].items() if int(s) >= 500)
        else:
            runs += entry["count"]
    return {
        "worker_requests_per_run": worker / n,
        "worker_non_polling_requests_per_run": (worker - polling) / n,
        "run_process_requests_per_run": runs / n,
        "worker_5xx": errors,
        "per_run_by_endpoint": per_run,
    }


async def scenario_pickup(bench: Bench, kind: str) -> dict[str, Any]:
    worker, pool = bench.new_worker(kind, "pickup")
    markers = bench.workdir / f"markers-{worker.tag}"
    markers.mkdir()
    await bench.pool(pool)
    deployment_id = await bench.deployment(
        pool, f"pickup-{pool}", **command_job(marker_command(markers))
    )
    await worker.launch()
    latencies: list[float] = []
    missed = 0
    rng = random.Random(10)
    try:
        await worker.wait_first_poll()
        for _ in range(bench.args.pickup_runs):
            await trio.sleep(rng.uniform(0, bench.args.query_seconds))
            scheduled = time.time()
            run = await bench.client.create_flow_run_from_deployment(deployment_id)
            marker = markers / str(run.id)
            deadline = time.monotonic() + max(30.0, 5 * bench.args.query_seconds + 20)
            while not marker.exists() and time.monotonic() < deadline:
                await trio.sleep(0.01)
            if not marker.exists():
                missed += 1
                continue
            latencies.append(marker.stat().st_mtime - scheduled)
            while descendants(worker.pid) and time.monotonic() < deadline:
                await trio.sleep(0.02)
    finally:
        await worker.stop()
    return {
        "runs": bench.args.pickup_runs,
        "query_seconds": bench.args.query_seconds,
        "latencies_s": latencies,
        "p50_s": pct(latencies, 50),
        "p99_s": pct(latencies, 99),
        "missed": missed,
    }


async def _wait_running(
    bench: Bench, run_id: uuid.UUID, marker: Path, timeout: float
) -> int | None:
    """Wait until the run's process wrote its pid and the run is PENDING/RUNNING."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists() and marker.read_text().strip():
            run = await bench.client.request("GET", f"flow_runs/{run_id}")
            if (run.get("state") or {}).get("type") in ("PENDING", "RUNNING"):
                return int(marker.read_text().strip())
        await trio.sleep(0.02)
    return None


async def scenario_cancel(bench: Bench, kind: str) -> dict[str, Any]:
    worker, pool = bench.new_worker(kind, "cancel")
    markers = bench.workdir / f"markers-{worker.tag}"
    markers.mkdir()
    await bench.pool(pool)
    command = marker_command(markers, "exec sleep 300")
    deployment_id = await bench.deployment(pool, f"cancel-{pool}", **command_job(command))
    await worker.launch()
    cancelled_s: list[float] = []
    gone_s: list[float] = []
    both_s: list[float] = []
    failures: list[str] = []
    timeout = bench.args.cancel_timeout
    try:
        await worker.wait_first_poll()
        for _ in range(bench.args.cancel_runs):
            run = await bench.client.create_flow_run_from_deployment(deployment_id)
            pid = await _wait_running(bench, run.id, markers / str(run.id), 60)
            if pid is None:
                failures.append(f"{run.id}: never started")
                continue
            await trio.sleep(0.3)  # let the worker record the pid (infrastructure_pid)
            started = time.monotonic()
            await bench.client.set_flow_run_state(run.id, State.of(StateType.CANCELLING))
            t_cancelled = t_gone = None
            while time.monotonic() - started < timeout and (t_cancelled is None or t_gone is None):
                now = time.monotonic()
                if t_gone is None and not alive(pid):
                    t_gone = now - started
                if t_cancelled is None:
                    state = (await bench.client.request("GET", f"flow_runs/{run.id}")).get(
                        "state"
                    ) or {}
                    if state.get("type") == "CANCELLED":
                        t_cancelled = now - started
                await trio.sleep(0.01)
            if t_gone is None:
                failures.append(f"{run.id}: process {pid} still alive after {timeout} s")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            else:
                gone_s.append(t_gone)
            if t_cancelled is None:
                state = (await bench.client.request("GET", f"flow_runs/{run.id}")).get(
                    "state"
                ) or {}
                failures.append(f"{run.id}: state {state.get('name')} after {timeout} s")
            else:
                cancelled_s.append(t_cancelled)
            if t_gone is not None and t_cancelled is not None:
                both_s.append(max(t_gone, t_cancelled))
    finally:
        await worker.stop()
    return {
        "runs": bench.args.cancel_runs,
        "to_cancelled_s": cancelled_s,
        "to_process_gone_s": gone_s,
        "to_both_s": both_s,
        "p50_s": pct(both_s, 50),
        "p50_cancelled_s": pct(cancelled_s, 50),
        "p50_process_gone_s": pct(gone_s, 50),
        "failures": failures,
        "timeout_s": timeout,
    }


async def scenario_shutdown(bench: Bench, kind: str) -> dict[str, Any]:
    worker, pool = bench.new_worker(kind, "shutdown")
    markers = bench.workdir / f"markers-{worker.tag}"
    markers.mkdir()
    await bench.pool(pool)
    command = marker_command(markers, "exec sleep 300")
    deployment_id = await bench.deployment(pool, f"shutdown-{pool}", **command_job(command))
    n = bench.args.shutdown_runs
    await bench.create_runs(deployment_id, n)
    await worker.launch()
    try:
        await worker.wait_first_poll()
        deadline = time.monotonic() + 60
        while len(list(markers.iterdir())) < n and time.monotonic() < deadline:
            await trio.sleep(0.05)
        await trio.sleep(0.5)  # let PENDING/infrastructure_pid land
        in_flight = len(list(markers.iterdir()))
        tree = descendants(worker.pid)
        states_before = await bench.tally(deployment_id, n)
        exit_s = await worker.stop(timeout=bench.args.shutdown_timeout)
        await trio.sleep(1.0)
        left = [pid for pid in tree if alive(pid)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    finally:
        await worker.stop()
    states = await bench.tally(deployment_id, n)
    final = sum(
        v for k, v in states.items() if k in ("Completed", "Failed", "Cancelled", "Crashed")
    )
    return {
        "runs": n,
        "in_flight_at_sigterm": in_flight,
        "states_before": states_before,
        "exit_s": exit_s,
        "states_after": states,
        "not_final": n - final,
        "processes_at_sigterm": len(tree),
        "processes_left": len(left),
        "drain_timeout_s": bench.args.drain_timeout if kind == "trio" else None,
    }


# -- reporting ------------------------------------------------------------------------------


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if unit == "MB":
            return f"{value / 1e6:.1f} MB"
        if abs(value) >= 100:
            text = f"{value:.0f}"
        elif abs(value) >= 10:
            text = f"{value:.1f}"
        elif abs(value) >= 0.1:
            text = f"{value:.2f}"
        else:
            text = f"{value:.3f}"
        return f"{text} {unit}".strip()
    if unit == "MB":
        return f"{value / 1e6:.1f} MB"
    return f"{value} {unit}".strip()


def _ratio(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return "n/a"
    return f"{a / b:.2f}x"


def table(title: str, rows: list[tuple[str, Any, Any, str, str]]) -> str:
    """A Markdown table: metric | trio-worker | Prefect | ratio | goal."""
    lines = [
        f"### {title}",
        "",
        "| | trio-worker | Prefect | ratio | goal |",
        "|---|---|---|---|---|",
    ]
    for label, a, b, unit, goal in rows:
        lines.append(f"| {label} | {_fmt(a, unit)} | {_fmt(b, unit)} | {_ratio(a, b)} | {goal} |")
    return "\n".join(lines) + "\n"


def render(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    t = results.get("trio", {})
    p = results.get("prefect", {})

    def get(d: dict[str, Any], scenario: str, key: str) -> Any:
        return (d.get(scenario) or {}).get(key)

    out: list[str] = []
    if "startup" in t or "startup" in p:
        s = "startup"
        out.append(
            table(
                f"1. Start-up and idle ({meta['args']['idle_seconds']:g} s)",
                [
                    (
                        "launch → first poll",
                        get(t, s, "startup_to_first_poll_s"),
                        get(p, s, "startup_to_first_poll_s"),
                        "s",
                        "≤ 0.25x",
                    ),
                    (
                        "idle RSS (worker + children)",
                        get(t, s, "idle_rss_bytes"),
                        get(p, s, "idle_rss_bytes"),
                        "MB",
                        "≤ 0.35x",
                    ),
                    (
                        "CPU from launch to end of idle",
                        get(t, s, "idle_cpu_s"),
                        get(p, s, "idle_cpu_s"),
                        "s",
                        "",
                    ),
                    (
                        "CPU while idle (after first poll)",
                        get(t, s, "cpu_after_first_poll_s"),
                        get(p, s, "cpu_after_first_poll_s"),
                        "s",
                        "",
                    ),
                ],
            )
        )
    keys = [k for k in (*t, *p) if k.startswith(("true", "engine"))]
    for key in dict.fromkeys(keys):
        a, b = t.get(key, {}), p.get(key, {})
        n = a.get("runs") or b.get("runs")
        if n is None:
            out.append(f"### 2. Throughput `{key}` failed\n\n{a.get('error')} / {b.get('error')}\n")
            continue
        what = "`true`" if key.startswith("true") else "no-op Python function through the engine"
        rows = [
            (
                "wall time, first poll → all ended",
                a.get("wall_s"),
                b.get("wall_s"),
                "s",
                "≤ 0.5x (200 `true`)",
            ),
            ("runs/s", a.get("runs_per_s"), b.get("runs_per_s"), "", "≥ 100 (embedded API)"),
            (
                "worker CPU per run",
                a.get("worker_cpu_per_run_s"),
                b.get("worker_cpu_per_run_s"),
                "s",
                "≤ 0.12x",
            ),
            (
                "CPU per run incl. run processes",
                a.get("tree_cpu_per_run_s"),
                b.get("tree_cpu_per_run_s"),
                "s",
                "",
            ),
            (
                "server CPU per run",
                _div(a.get("server_cpu_s"), n),
                _div(b.get("server_cpu_s"), n),
                "s",
                "",
            ),
            (
                "counting-proxy CPU per run",
                _div(a.get("proxy_cpu_s"), n),
                _div(b.get("proxy_cpu_s"), n),
                "s",
                "",
            ),
            (
                "peak RSS of the worker process (VmHWM)",
                a.get("worker_peak_rss_bytes"),
                b.get("worker_peak_rss_bytes"),
                "MB",
                "",
            ),
            (
                "peak summed RSS, worker + children (*)",
                a.get("peak_rss_bytes"),
                b.get("peak_rss_bytes"),
                "MB",
                "",
            ),
            (
                "worker HTTP requests per run",
                a.get("worker_requests_per_run"),
                b.get("worker_requests_per_run"),
                "",
                "",
            ),
            (
                "… besides polling",
                a.get("worker_non_polling_requests_per_run"),
                b.get("worker_non_polling_requests_per_run"),
                "",
                "≤ 4",
            ),
            (
                "run-process HTTP requests per run",
                a.get("run_process_requests_per_run"),
                b.get("run_process_requests_per_run"),
                "",
                "",
            ),
            ("worker requests answered 5xx", a.get("worker_5xx"), b.get("worker_5xx"), "", ""),
            ("runs COMPLETED", a.get("completed"), b.get("completed"), "", ""),
            ("runs lost or left non-final", a.get("not_final"), b.get("not_final"), "", "0"),
            ("end condition", a.get("outcome"), b.get("outcome"), "", ""),
        ]
        out.append(table(f"2. Throughput: {n} {what}, limit {meta['args']['limit']}", rows))
    if "pickup" in t or "pickup" in p:
        s = "pickup"
        out.append(
            table(
                f"3. Pick-up latency (scheduled → process started,"
                f" {meta['args']['pickup_runs']} runs,"
                f" query every {meta['args']['query_seconds']:g} s)",
                [
                    ("p50", get(t, s, "p50_s"), get(p, s, "p50_s"), "s", ""),
                    ("p99", get(t, s, "p99_s"), get(p, s, "p99_s"), "s", ""),
                    ("runs never started", get(t, s, "missed"), get(p, s, "missed"), "", "0"),
                ],
            )
        )
    if "cancel" in t or "cancel" in p:
        s = "cancel"
        out.append(
            table(
                f"4. Cancellation latency (CANCELLING proposed → CANCELLED and no process,"
                f" {meta['args']['cancel_runs']} `sleep 300` runs)",
                [
                    (
                        "p50, CANCELLED and process gone",
                        get(t, s, "p50_s"),
                        get(p, s, "p50_s"),
                        "s",
                        "≤ 1 s",
                    ),
                    (
                        "p50, process gone",
                        get(t, s, "p50_process_gone_s"),
                        get(p, s, "p50_process_gone_s"),
                        "s",
                        "",
                    ),
                    (
                        "p50, CANCELLED",
                        get(t, s, "p50_cancelled_s"),
                        get(p, s, "p50_cancelled_s"),
                        "s",
                        "",
                    ),
                    (
                        f"runs not done within {meta['args']['cancel_timeout']:g} s",
                        _len(get(t, s, "failures")),
                        _len(get(p, s, "failures")),
                        "",
                        "0",
                    ),
                ],
            )
        )
    if "shutdown" in t or "shutdown" in p:
        s = "shutdown"
        out.append(
            table(
                f"5. Shutdown (SIGTERM with {meta['args']['shutdown_runs']} `sleep 300` runs"
                f" in flight; trio-worker --drain-timeout {meta['args']['drain_timeout']:g})",
                [
                    ("exit after SIGTERM", get(t, s, "exit_s"), get(p, s, "exit_s"), "s", ""),
                    (
                        "runs left non-final",
                        get(t, s, "not_final"),
                        get(p, s, "not_final"),
                        "",
                        "0",
                    ),
                    (
                        "processes left",
                        get(t, s, "processes_left"),
                        get(p, s, "processes_left"),
                        "",
                        "0",
                    ),
                ],
            )
        )
    return "\n".join(out)


def _div(a: Any, b: Any) -> float | None:
    return a / b if isinstance(a, int | float) and b else None


def _len(x: Any) -> int | None:
    return None if x is None else len(x)


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory"] = line.split(":", 1)[1].strip()
    return info


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in ("trio-worker", "prefect", "trio", "httpx", "hypercorn"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


# -- main ------------------------------------------------------------------------------------

SCENARIOS: Final = ("startup", "throughput", "pickup", "cancel", "shutdown")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--prefect", action="store_true", help="benchmark against a real Prefect server on SQLite"
    )
    parser.add_argument(
        "--workers",
        default="trio,prefect",
        help="comma-separated: trio, prefect (prefect is skipped when not installed)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--runs", type=int, default=200, help="`true` runs of the throughput scenario"
    )
    parser.add_argument(
        "--big-runs",
        type=int,
        default=1000,
        help="`true` runs of the large throughput scenario (0: skip)",
    )
    parser.add_argument("--engine-runs", type=int, default=100, help="no-op engine runs (0: skip)")
    parser.add_argument("--limit", type=int, default=50, help="the workers' --limit")
    parser.add_argument(
        "--idle-seconds", type=float, default=20.0, help="idle time of the start-up scenario"
    )
    parser.add_argument(
        "--query-seconds",
        type=float,
        default=1.0,
        help="PREFECT_WORKER_QUERY_SECONDS for both workers",
    )
    parser.add_argument("--pickup-runs", type=int, default=20)
    parser.add_argument("--cancel-runs", type=int, default=10)
    parser.add_argument(
        "--cancel-timeout",
        type=float,
        default=45.0,
        help="give up on one cancellation after this long",
    )
    parser.add_argument("--shutdown-runs", type=int, default=10)
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=90.0,
        help="SIGKILL a worker that has not exited this long after SIGTERM",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=0.0,
        help="trio-worker --drain-timeout in the shutdown scenario",
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=3.0,
        help="quiet time that ends a throughput run whose runs never become final",
    )
    parser.add_argument(
        "--stall-seconds",
        type=float,
        default=60.0,
        help="give up a throughput run after this long without progress",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny counts for a quick check (implies --no-docs)"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench-results", help="directory of the JSON results"
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="with --prefect: the Prefect server on PostgreSQL (_postgres.py) instead of SQLite",
    )
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/performance.md")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, databases)"
    )
    parser.add_argument(
        "--py-spy",
        metavar="PATH",
        help="profile each worker with this py-spy executable (collapsed stacks next to the JSON)",
    )
    parser.add_argument(
        "--render", type=Path, help="re-render the tables and docs of a saved JSON; run nothing"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.big_runs, args.engine_runs = min(args.runs, 20), 0, min(args.engine_runs, 5)
        args.idle_seconds = min(args.idle_seconds, 3.0)
        args.pickup_runs, args.cancel_runs, args.shutdown_runs = 3, 2, 3
        args.no_docs = True
    return args


async def run_bench(args: argparse.Namespace, command: str) -> dict[str, Any]:
    kinds = [k.strip() for k in args.workers.split(",") if k.strip()]
    skipped: dict[str, str] = {}
    if "prefect" in kinds and not prefect_installed():
        kinds.remove("prefect")
        skipped["prefect"] = (
            "Prefect is not installed in this environment; the Prefect half is skipped"
        )
        log(skipped["prefect"])
    if args.prefect and not prefect_installed():
        raise SystemExit(
            "--prefect needs Prefect installed in this environment (pip install prefect==3.8.8)"
        )
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    meta: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(),
        "versions": versions(),
        "skipped": skipped,
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    (workdir / "flows").mkdir()
    (workdir / "flows" / "noop_plain.py").write_text(NOOP_PLAIN)
    (workdir / "flows" / "noop_flow.py").write_text(NOOP_FLOW)
    meta["workdir"] = str(workdir)
    log(f"work directory {workdir}")
    bench = Bench(args, workdir)
    results: dict[str, dict[str, Any]] = {k: {} for k in kinds}
    database_url = None
    postgres = contextlib.ExitStack()
    if args.postgres:
        from _postgres import postgres_server

        pg = postgres.enter_context(postgres_server(install=True, durable=True))
        pg.create_database("prefect")
        database_url = pg.sqlalchemy_url("prefect")
        meta["database"] = f"PostgreSQL {pg.bin_dir.parent.name}"
    async with running_api(args.prefect, workdir, database_url=database_url) as api:
        meta["api"] = {k: api[k] for k in ("kind", "version", "url")}
        bench.api = api
        bench.proxy = await Proxy.start(api["port"])
        try:
            async with PrefectClient(api["url"], backoff_seconds=0.2) as client:
                bench.client = client
                plan: list[tuple[str, Callable[[str], Awaitable[dict[str, Any]]]]] = []
                if "startup" in scenarios:
                    plan.append(("startup", lambda k: scenario_startup(bench, k)))
                if "throughput" in scenarios:
                    for n, mode in (
                        (args.runs, "true"),
                        (args.big_runs, "true"),
                        (args.engine_runs, "engine"),
                    ):
                        if n:
                            plan.append(
                                (
                                    f"{mode}{n}",
                                    lambda k, n=n, mode=mode: scenario_throughput(
                                        bench, k, n, mode
                                    ),
                                )
                            )
                for name, fn in (
                    ("pickup", scenario_pickup),
                    ("cancel", scenario_cancel),
                    ("shutdown", scenario_shutdown),
                ):
                    if name in scenarios:
                        plan.append((name, lambda k, fn=fn: fn(bench, k)))
                for name, fn in plan:
                    for kind in kinds:
                        log(f"{name}: {kind} worker")
                        started = time.monotonic()
                        try:
                            results[kind][name] = await fn(kind)
                        except Exception as exc:  # one broken scenario must not lose the others
                            while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
                                exc = exc.exceptions[0]
                            log(f"{name}: {kind} failed: {type(exc).__name__}: {exc}")
                            results[kind][name] = {"error": f"{type(exc).__name__}: {exc}"}
                        results[kind][name]["scenario_seconds"] = time.monotonic() - started
                        log(
                            f"{name}: {kind} done in {time.monotonic() - started:.1f} s:"
                            f" {brief(results[kind][name])}"
                        )
        finally:
            await bench.proxy.stop()
    postgres.close()
    meta["machine"]["loadavg_end"] = os.getloadavg()
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return {**meta, "results": results}


def brief(result: dict[str, Any]) -> str:
    keys = (
        "error",
        "startup_to_first_poll_s",
        "wall_s",
        "not_final",
        "outcome",
        "p50_s",
        "exit_s",
        "processes_left",
    )
    return ", ".join(
        f"{k}={_fmt(result[k]) if isinstance(result[k], float) else result[k]}"
        for k in keys
        if k in result
    )


def write_docs(path: Path, tables: str, report: dict[str, Any]) -> None:
    m = report["machine"]
    v = report["versions"]
    text = f"""# Performance: trio-worker next to Prefect's worker

Measured by `benchmarks/bench_worker.py` on {report["date"]}, both workers as separate
processes against the same {report["api"]["kind"]} API (version {report["api"]["version"]}),
behind a counting loopback proxy. Reproduce with:

```
{report["command"]}
```

(`nox -s bench -- ARGS` runs `python benchmarks/bench_worker.py ARGS` in a venv with Prefect 3.8.8;
add `--prefect` to run against a real Prefect server on SQLite.)
Machine: {m.get("cpu_model", "?")}, {m["cpus"]} CPUs, {m.get("memory", "?")},
Python {m["python"]}; load average {m["loadavg"][0]:.2f} at the start and
{m["loadavg_end"][0]:.2f} at the end (other work was running). Versions: trio-worker
{v["trio-worker"]}, Prefect {v["prefect"]}.
Raw figures: `bench-results/` (JSON, not committed).

Ratios are trio-worker / Prefect. Both workers poll every {report["args"]["query_seconds"]:g} s
(`PREFECT_WORKER_QUERY_SECONDS`). "Worker" figures are the worker process itself; "incl. run
processes" adds its descendants (reaped children included). (*) Summed RSS counts shared pages
once per process, and a child caught between fork and exec shows its parent's whole RSS, so it
overstates; the worker's own peak (`VmHWM`) is exact.
Requests are attributed to the worker when the worker process owns the socket; flow-run
processes (engines) are counted separately. "Polling" is `get_scheduled_flow_runs`, heartbeats,
pool/queue reads and `flow_runs/filter` (cancellation checks).

{tables}
"""
    # Hand-written analysis below the marker survives regeneration.
    notes = ""
    if path.exists():
        previous = path.read_text()
        if NOTES_MARKER in previous:
            notes = previous[previous.index(NOTES_MARKER) :]
    path.write_text(text + ("\n" + notes if notes else ""))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The flags that change figures, for the docs (not --keep, --py-spy, --out).
    given = list(sys.argv[1:] if argv is None else argv)
    shown: list[str] = []
    while given:
        flag = given.pop(0)
        if flag in ("--py-spy", "--out", "--docs"):
            given = given[1:]
        elif flag != "--keep" and not flag.startswith(("--py-spy=", "--out=", "--docs=")):
            shown.append(flag)
    command = "nox -s bench -- " + shlex.join(shown) if shown else "nox -s bench"
    if args.render is not None:
        # Re-render tables (and docs) from a saved run, recomputing request figures.
        report = json.loads(args.render.read_text())
        for results in report["results"].values():
            for result in results.values():
                if "requests" in result and "runs" in result and "mode" in result:
                    result.update(request_figures(result["requests"], result["runs"]))
        args.out = args.render.parent
    else:
        report = trio.run(run_bench, args, command.strip())
    tables = render(report["results"], report)
    print(tables)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = report["date"].replace(":", "").replace("+0000", "Z")
    out = args.render or args.out / f"worker-{report['api']['kind']}-{stamp}.json"
    out.write_text(json.dumps({**report, "tables": tables}, indent=2, default=str))
    log(f"raw figures in {out}")
    if not args.no_docs:
        write_docs(args.docs, tables, report)
        log(f"tables written to {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

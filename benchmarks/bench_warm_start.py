"""Benchmark warm start: schedule-to-user-code latency and PSS per run, warm vs cold vs Prefect.

For each worker (``trio-worker start`` with warm start, the same with
``--no-warm-start``, and ``prefect worker start`` when Prefect is installed)
and each kind of entrypoint (a plain Python function, a Prefect ``@flow``
when Prefect is installed), against trio-worker's embedded API:

1. latency: ``--runs`` runs one after the other; for each, the time from its
   PENDING state's timestamp (the worker's claim) to the first line of the
   user's function (which writes ``time.time()`` to a file); p50 and p99;
2. memory: ``--concurrent`` runs whose function sleeps, all at once; once every
   one has reached its code, the PSS (``/proc/PID/smaps_rollup``, which splits
   each shared page among the processes that map it) of every process of the
   worker's tree but the worker itself (the runs and, warm, the zygote),
   divided by the number of runs.

Prints a Markdown table; ``--docs`` also writes it into docs/performance.md
between the ``warm-start`` markers.

    python benchmarks/bench_warm_start.py [--runs 20] [--concurrent 30] [--docs]
        [--entries plain,flow] [--kinds warm,cold,prefect]
"""

# A benchmark driver polls files and /proc with short sleeps; that is its job.
# ruff: noqa: ASYNC230, ASYNC240

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Final

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import descendants
from bench_worker import clean_env, log, prefect_executable, running_api

from trio_worker._client._client import PrefectClient
from trio_worker._core._models import StateType
from trio_worker._process._config import process_base_job_template

ROOT: Final = Path(__file__).resolve().parents[1]
DOCS: Final = ROOT / "docs" / "performance.md"
BEGIN: Final = "<!-- warm-start: begin -->"
END: Final = "<!-- warm-start: end -->"

#: The plain function imports nothing but the standard library; the flow lives in a
#: file of its own so that importing Prefect is not charged to the plain function.
PLAIN: Final = """
import time

def plain(out, hold=0.0):
    with open(out, "w") as f:
        f.write(repr(time.time()))
    time.sleep(hold)
"""
FLOW: Final = """
import time
from prefect import flow

@flow(name="bench-flow", log_prints=False, persist_result=False)
def prefect_flow(out, hold=0.0):
    with open(out, "w") as f:
        f.write(repr(time.time()))
    time.sleep(hold)
"""


def pss_kb(pid: int) -> int:
    """The process's proportional set size in kB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class WorkerProcess:
    """One worker under test, in a session of its own."""

    def __init__(self, kind: str, pool: str, api_url: str, workdir: Path, limit: int) -> None:
        self.kind, self.pool, self.api_url, self.workdir, self.limit = (
            kind,
            pool,
            api_url,
            workdir,
            limit,
        )
        self.process: trio.Process | None = None

    def argv(self) -> list[str]:
        common = ["--pool", self.pool, "--type", "process", "--limit", str(self.limit)]
        if self.kind == "prefect":
            return [prefect_executable(), "worker", "start", *common]
        flag = "--warm-start" if self.kind == "warm" else "--no-warm-start"
        return [sys.executable, "-m", "trio_worker", "start", *common, flag, "--drain-timeout", "0"]

    async def __aenter__(self) -> WorkerProcess:
        home = self.workdir / f"home-{self.pool}"
        home.mkdir()
        env = clean_env(
            PREFECT_API_URL=self.api_url,
            PREFECT_HOME=str(home),
            PREFECT_WORKER_QUERY_SECONDS="0.2",
            TRIO_WORKER_STATE_DIR=str(home / "state"),
        )
        logfile = open(self.workdir / f"worker-{self.pool}.log", "wb")  # noqa: SIM115
        self.process = await trio.lowlevel.open_process(
            self.argv(),
            env=env,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            cwd=str(self.workdir),
            start_new_session=True,
        )
        logfile.close()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.process is not None
        left = descendants(self.process.pid)
        self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(30):
            await self.process.wait()
        for pid in [self.process.pid, *left]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await self.process.wait()


async def _wait_file(path: Path, timeout: float = 120.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            text = path.read_text()
            if text:
                return float(text)
        await trio.sleep(0.005)
    raise RuntimeError(f"{path} was not written within {timeout} s")


async def _pending_time(client: PrefectClient, run_id: uuid.UUID) -> float:
    for state in await client.read_flow_run_states(run_id):
        if state.type is StateType.PENDING and state.timestamp is not None:
            return state.timestamp.timestamp()
    raise RuntimeError(f"flow run {run_id} has no PENDING state")


async def _wait_final(client: PrefectClient, run_id: uuid.UUID, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = await client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final:
            return
        await trio.sleep(0.05)
    raise RuntimeError(f"flow run {run_id} did not finish within {timeout} s")


async def measure(
    client: PrefectClient, api_url: str, workdir: Path, kind: str, entry: str, args: Any
) -> dict[str, Any]:
    """Latency and PSS of one worker kind with one entrypoint."""
    pool = f"warm-{kind}-{entry}-{uuid.uuid4().hex[:6]}"
    await client.create_work_pool(
        pool, type="process", base_job_template=process_base_job_template()
    )
    flow = await client.create_flow(f"bench-{entry}")
    function = "bench_plain.py:plain" if entry == "plain" else "bench_flow.py:prefect_flow"
    deployment = await client.create_deployment(
        flow_id=flow.id,
        name=pool,
        work_pool_name=pool,
        entrypoint=function,
        path=str(workdir),
        job_variables={"working_dir": str(workdir), "stream_output": False},
    )
    marks = workdir / pool
    marks.mkdir()
    result: dict[str, Any] = {"kind": kind, "entry": entry}
    async with WorkerProcess(kind, pool, api_url, workdir, limit=args.concurrent + 5) as worker:
        # A first run warms the worker (and starts its zygote); not counted.
        latencies = []
        for i in range(args.runs + 1):
            out = marks / f"seq-{i}"
            run = await client.create_flow_run_from_deployment(
                deployment.id, parameters={"out": str(out)}
            )
            reached = await _wait_file(out)
            await _wait_final(client, run.id)
            if i:
                latencies.append(reached - await _pending_time(client, run.id))
        result["p50"] = statistics.median(latencies)
        result["p99"] = pct(latencies, 0.99)
        outs = [marks / f"hold-{i}" for i in range(args.concurrent)]
        for out in outs:
            await client.create_flow_run_from_deployment(
                deployment.id, parameters={"out": str(out), "hold": 600.0}
            )
        for out in outs:
            await _wait_file(out, timeout=300)
        await trio.sleep(1.0)  # let the runs settle into their sleep
        assert worker.process is not None
        tree = descendants(worker.process.pid)
        total_kb = sum(pss_kb(pid) for pid in tree)
        result["worker_pss_mb"] = pss_kb(worker.process.pid) / 1024
        result["pss_per_run_mb"] = total_kb / 1024 / args.concurrent
        result["processes"] = len(tree)
    log(f"{kind:7} {entry:6} {result}")
    return result


def render(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    goals = {("warm", "plain"): 0.1, ("warm", "flow"): 0.2}
    lines = [
        f"Measured {meta['date']} on {meta['machine']}; {meta['runs']} sequential runs for the"
        f" latency, {meta['concurrent']} concurrent sleeping runs for the memory;"
        f" Prefect {meta['prefect'] or 'not installed'}.",
        "",
        "| worker | entrypoint | schedule → user code p50 | p99 | PSS per concurrent run"
        " | worker's own PSS |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        label = {"warm": "trio-worker, warm", "cold": "trio-worker, cold", "prefect": "Prefect"}
        lines.append(
            f"| {label[r['kind']]} | {'plain function' if r['entry'] == 'plain' else '`@flow`'}"
            f" | {r['p50']:.3f} s | {r['p99']:.3f} s | {r['pss_per_run_mb']:.1f} MB"
            f" | {r['worker_pss_mb']:.0f} MB |"
        )
    lines.append("")
    by = {(r["kind"], r["entry"]): r for r in results}
    for (kind, entry), goal in goals.items():
        r = by.get((kind, entry))
        if r is not None:
            verdict = "met" if r["p50"] <= goal else "missed"
            lines.append(
                f"- Goal p50 ≤ {goal} s warm for a {entry} entrypoint: **{verdict}**"
                f" ({r['p50']:.3f} s)."
            )
    plain = by.get(("warm", "plain"))
    if plain is not None:
        verdict = "met" if plain["pss_per_run_mb"] <= 15 else "missed"
        lines.append(
            f"- Goal PSS per concurrent run ≤ 15 MB warm for a plain function: **{verdict}**"
            f" ({plain['pss_per_run_mb']:.1f} MB)."
        )
    warm_flow, prefect_flow = by.get(("warm", "flow")), by.get(("prefect", "flow"))
    if warm_flow is not None and prefect_flow is not None:
        ratio = warm_flow["pss_per_run_mb"] / prefect_flow["pss_per_run_mb"]
        verdict = "met" if ratio <= 0.25 else "missed"
        lines.append(f"- Goal PSS per `@flow` run ≤ 0.25x Prefect's: **{verdict}** ({ratio:.2f}x).")
    return "\n".join(lines)


def write_docs(table: str) -> None:
    text = DOCS.read_text()
    block = f"{BEGIN}\n{table}\n{END}"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## Warm start\n\n" + block + "\n"
    DOCS.write_text(text)


async def main_async(args: Any) -> str:
    prefect = importlib.util.find_spec("prefect") is not None
    kinds = [
        kind
        for kind in (
            "warm",
            "cold",
            *(["prefect"] if prefect and Path(prefect_executable()).exists() else []),
        )
        if kind in args.kinds
    ]
    entries = [e for e in ("plain", *(["flow"] if prefect else [])) if e in args.entries]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        workdir = Path(tmp)
        (workdir / "bench_plain.py").write_text(PLAIN)
        (workdir / "bench_flow.py").write_text(FLOW)
        async with running_api(False, workdir) as api, PrefectClient(api["url"]) as client:
            for entry in entries:
                for kind in kinds:
                    if kind == "prefect" and entry == "plain":
                        continue  # Prefect's worker runs only Prefect flows
                    results.append(await measure(client, api["url"], workdir, kind, entry, args))
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "runs": args.runs,
        "concurrent": args.concurrent,
        "prefect": importlib.metadata.version("prefect") if prefect else None,
    }
    return render(results, meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="sequential runs for the latency")
    parser.add_argument("--concurrent", type=int, default=30, help="sleeping runs for the PSS")
    parser.add_argument("--docs", action="store_true", help="write the table to the docs")
    parser.add_argument(
        "--entries", default="plain,flow", help="which entrypoints: plain, flow (comma-separated)"
    )
    parser.add_argument(
        "--kinds", default="warm,cold,prefect", help="which workers: warm, cold, prefect"
    )
    args = parser.parse_args(argv)
    table = trio.run(main_async, args)
    print(table)
    if args.docs:
        write_docs(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Smoke test of the worker benchmark driver: tiny counts, correctness only (no timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import clean_env

ROOT = Path(__file__).resolve().parent.parent


def test_bench_worker_loses_no_run(tmp_path: Path) -> None:
    argv = [
        sys.executable, str(ROOT / "benchmarks" / "bench_worker.py"),
        "--workers", "trio", "--scenarios", "throughput,shutdown",
        "--runs", "5", "--big-runs", "0", "--engine-runs", "0",
        "--shutdown-runs", "2", "--query-seconds", "0.2",
        "--out", str(tmp_path), "--no-docs",
    ]  # fmt: skip
    done = subprocess.run(argv, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    (result_file,) = tmp_path.glob("worker-embedded-*.json")
    report = json.loads(result_file.read_text())
    trio_results = report["results"]["trio"]
    throughput = trio_results["true5"]
    assert throughput["outcome"] == "all final", throughput
    assert throughput["completed"] == 5
    assert throughput["not_final"] == 0
    # every run went through the proxy: PENDING and COMPLETED proposals at least
    assert throughput["per_run_by_endpoint"]["POST /api/flow_runs/{id}/set_state"] >= 2
    shutdown = trio_results["shutdown"]
    assert shutdown["in_flight_at_sigterm"] == 2, shutdown
    assert shutdown["not_final"] == 0, shutdown
    assert shutdown["processes_left"] == 0, shutdown
    assert "| runs lost or left non-final | 0 |" in done.stdout

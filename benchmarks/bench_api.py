"""Benchmark the embedded API with the per-run round trip a worker makes (issue 4).

50 concurrent clients (one work queue each, as 50 workers polling their own
queues) repeat: ``get_scheduled_flow_runs`` (limit 10, so each run carries a
tenth of a poll), then per run ``set_state PENDING``, ``PATCH infrastructure_pid``,
``set_state RUNNING`` and ``set_state COMPLETED``. The server runs as a real
``python -m trio_worker server start`` subprocess on a fresh database; the
clients speak HTTP/1.1 keep-alive over loopback with h11 (a thin client: on
this 2-core box client and server share the CPU, and httpx alone would use
most of a core). Prints runs/s, request latencies and every
error (any non-2xx, any ACCEPT missing, any "database is locked").

    python benchmarks/bench_api.py [--clients 50] [--runs 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import httpx
import trio

POLL_LIMIT = 10


async def start_server(db: Path) -> tuple[trio.Process, str]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_worker", "server", "start", "--port", "0", "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    buffer = b""
    with trio.fail_after(30):
        while b"\n" not in buffer:
            chunk = await process.stdout.receive_some()
            if not chunk:
                raise RuntimeError("server exited before printing its URL")
            buffer += chunk
    return process, buffer.decode().splitlines()[0].split("=", 1)[1]


async def setup(url: str, clients: int, runs: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        (
            await client.post("/work_pools/", json={"name": "bench", "type": "process"})
        ).raise_for_status()
        flow = (await client.post("/flows/", json={"name": "bench-flow"})).json()
        deployment = (
            await client.post(
                "/deployments/",
                json={"name": "bench", "flow_id": flow["id"], "work_pool_name": "bench"},
            )
        ).json()
        for i in range(clients):
            r = await client.post("/work_pools/bench/queues", json={"name": f"q{i}"})
            r.raise_for_status()

        async def create(start: int) -> None:
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                for n in range(start, runs, 10):
                    r = await c.post(
                        f"/deployments/{deployment['id']}/create_flow_run",
                        json={"work_queue_name": f"q{n % clients}"},
                    )
                    r.raise_for_status()

        async with trio.open_nursery() as nursery:
            for start in range(10):
                nursery.start_soon(create, start)


class Response:
    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content
        self.text = content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class ThinClient:
    """One keep-alive HTTP/1.1 connection, one request at a time (like one worker)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.prefix = parts.hostname or "", parts.port or 80, parts.path
        self.stream: trio.SocketStream | None = None
        self.conn = h11.Connection(h11.CLIENT)

    async def request(self, method: str, path: str, json_body: Any = None) -> Response:
        if self.stream is None:
            self.stream = await trio.open_tcp_stream(self.host, self.port)
        body = json.dumps(json_body).encode() if json_body is not None else b""
        headers = [("host", self.host), ("content-type", "application/json"),
                   ("content-length", str(len(body)))]  # fmt: skip
        data = self.conn.send(
            h11.Request(method=method, target=self.prefix + path, headers=headers)
        )
        data += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        status, chunks = 0, []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
        self.conn.start_next_cycle()
        return Response(status, b"".join(chunks))

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stats:
    def __init__(self) -> None:
        self.done = 0
        self.errors: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = {}

    def timed(self, name: str, started: float) -> None:
        self.latency.setdefault(name, []).append(time.perf_counter() - started)


async def worker(url: str, index: int, stats: Stats) -> None:
    client = ThinClient(url)
    try:

        async def call(name: str, method: str, path: str, body: Any) -> Response:
            started = time.perf_counter()
            response = await client.request(method, path, body)
            stats.timed(name, started)
            if response.status_code >= 300 or "database is locked" in response.text:
                stats.errors[f"{name}: HTTP {response.status_code} {response.text[:80]}"] += 1
            return response

        while True:
            poll = await call(
                "poll", "POST", "/work_pools/bench/get_scheduled_flow_runs",
                {"work_queue_names": [f"q{index}"], "limit": POLL_LIMIT},
            )  # fmt: skip
            offered = poll.json() if poll.status_code == 200 else []
            if not offered:
                return
            for item in offered:
                run_id = item["flow_run"]["id"]
                ok = True
                for name, method, path, body in (
                    ("pending", "POST", f"/flow_runs/{run_id}/set_state",
                     {"state": {"type": "PENDING"}, "force": False}),
                    ("pid", "PATCH", f"/flow_runs/{run_id}", {"infrastructure_pid": str(index)}),
                    ("running", "POST", f"/flow_runs/{run_id}/set_state",
                     {"state": {"type": "RUNNING"}, "force": False}),
                    ("completed", "POST", f"/flow_runs/{run_id}/set_state",
                     {"state": {"type": "COMPLETED"}, "force": False}),
                ):  # fmt: skip
                    response = await call(name, method, path, body)
                    if method == "POST" and response.status_code < 300:
                        status = response.json()["status"]
                        if status != "ACCEPT":
                            stats.errors[f"{name}: {status}"] += 1
                            ok = False
                            break
                    elif response.status_code >= 300:
                        ok = False
                        break
                if ok:
                    stats.done += 1
    finally:
        await client.aclose()


async def main(clients: int, runs: int, url: str | None) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        process = None
        if url is None:
            process, url = await start_server(Path(tmp) / "bench.db")
        try:
            print(f"server {url}; creating {runs} runs in {clients} queues ...", flush=True)
            await setup(url, clients, runs)
            stats = Stats()
            server_cpu = cpu_seconds(process.pid) if process is not None else 0.0
            client_cpu = time.process_time()
            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for index in range(clients):
                    nursery.start_soon(worker, url, index, stats)
            elapsed = time.perf_counter() - started
            client_cpu = time.process_time() - client_cpu
            if process is not None:
                server_cpu = cpu_seconds(process.pid) - server_cpu
        finally:
            if process is not None:
                process.terminate()
                await process.wait()
    rate = stats.done / elapsed
    print(f"{stats.done} runs in {elapsed:.2f} s with {clients} clients: {rate:.1f} runs/s")
    if server_cpu:
        per_run = server_cpu / max(stats.done, 1) * 1000
        print(
            f"server CPU {server_cpu:.2f} s ({per_run:.2f} ms/run: one free core sustains "
            f"{1000 / per_run:.0f} runs/s), client CPU {client_cpu:.2f} s; "
            f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
    requests = sum(len(v) for v in stats.latency.values())
    print(f"{requests} requests: {requests / elapsed:.0f} req/s")
    for name, values in stats.latency.items():
        values.sort()
        p50 = statistics.median(values) * 1000
        p99 = values[int(len(values) * 0.99) - 1] * 1000
        print(f"  {name:10s} n={len(values):6d} p50={p50:6.1f} ms p99={p99:6.1f} ms")
    if stats.errors:
        print("errors:")
        for message, count in stats.errors.most_common():
            print(f"  {count:6d}  {message}")
    else:
        print("errors: none (no 'database is locked', no non-2xx, every proposal ACCEPTed)")
    return 0 if not stats.errors and stats.done == runs else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--url", default=None, help="use this (fresh) API instead of starting one")
    args = parser.parse_args()
    sys.exit(trio.run(main, args.clients, args.runs, args.url))

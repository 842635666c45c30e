"""A loopback HTTP/1.1 proxy that counts the requests passing through it, by endpoint.

The benchmark driver puts it between a worker and the API (trio-worker's
embedded API or a Prefect server alike), so the counts come from the wire and
no server needs a hook. It forwards bytes as they arrive and only scans them
for message boundaries: request heads (method, path), response heads
(status), ``Content-Length`` and chunked bodies; a ``101 Switching Protocols``
turns the connection into a plain pipe (websockets are counted once, as the
upgrade request).

Each connection is attributed to the process that opened it: ``worker`` when
the socket is one of the watched pid's file descriptors (found through
``/proc/net/tcp``), ``runs`` otherwise (flow-run processes: engines and their
children inherit the worker's ``PREFECT_API_URL``).

Controlled over stdin/stdout, one line each way:

- ``pid N``: attribute connections of pid N to the worker (``pid 0``: none);
- ``pids LABEL N [M ...]``: also attribute connections of these pids, as origin
  ``LABEL`` (a fleet: several workers, e.g. ``trio`` and ``prefect``);
- ``reset``: forget every count;
- ``counts``: print one JSON line with the counts and the poll times.

Run as ``python _counting_proxy.py UPSTREAM_PORT``; it prints ``port N`` once
listening on 127.0.0.1.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Final

import trio

UUID_RE: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
POLL_SUFFIX: Final = "/get_scheduled_flow_runs"
BUFFER: Final = 65536


def normalise_path(target: str) -> str:
    """Turn a request target into an endpoint name: no query, ids and names as placeholders."""
    path = target.split("?", 1)[0]
    path = UUID_RE.sub("{id}", path)
    parts = path.split("/")
    # /api/work_pools/<pool>/..., /api/work_pools/<pool>/queues/<queue>
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if part == "work_pools" and nxt not in ("", "filter", "count"):
            parts[i + 1] = "{pool}"
        elif part == "queues" and nxt not in ("", "filter") and i >= 2:
            parts[i + 1] = "{queue}"
        elif part == "name" and nxt:
            parts[i + 1 :] = ["{name}"]
            break
    return "/".join(parts)


class Stats:
    """What the proxy has seen since the last reset."""

    def __init__(self) -> None:
        #: Watched pids and the origin their connections count under.
        self.origins: dict[int, str] = {}
        self.counts: Counter[tuple[str, str, str, int]] = Counter()
        self.polls: list[float] = []
        self.connections: Counter[str] = Counter()

    def reset(self) -> None:
        self.counts.clear()
        self.polls.clear()
        self.connections.clear()

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": [
                {"origin": o, "method": m, "path": p, "status": s, "count": n}
                for (o, m, p, s), n in sorted(self.counts.items())
            ],
            "worker_polls_monotonic": list(self.polls),
            "connections": dict(self.connections),
        }


STATS = Stats()


def _socket_inode(client_port: int, proxy_port: int) -> str | None:
    """The inode of the client's end of a loopback connection, from /proc/net/tcp.

    One substring search over the whole table (which holds every TIME_WAIT
    socket too), not a parse of each line.
    """
    needle = f"0100007F:{client_port:04X} 0100007F:{proxy_port:04X}"
    try:
        with open("/proc/net/tcp", encoding="ascii") as f:
            table = f.read()
    except OSError:
        return None
    at = table.find(needle)
    if at < 0:
        return None
    end = table.find("\n", at)
    fields = table[at : end if end >= 0 else None].split()
    # local, remote, st, tx:rx, tr:when, retrnsmt, uid, timeout, inode
    return fields[8] if len(fields) > 8 else None


def _pid_has_socket(pid: int, inode: str) -> bool:
    target = f"socket:[{inode}]"
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(f"{fd_dir}/{name}") == target:
                return True
        except OSError:
            continue
    return False


def attribute(client_port: int, proxy_port: int) -> str:
    """The origin of the watched pid that owns the client socket, else ``runs``."""
    if not STATS.origins:
        return "runs"
    inode = _socket_inode(client_port, proxy_port)
    if inode is None:
        return "runs"
    for pid, origin in STATS.origins.items():
        if _pid_has_socket(pid, inode):
            return origin
    return "runs"


class Scanner:
    """Finds HTTP/1.1 message heads and body ends in a byte stream, without copying bodies.

    ``on_head(head)`` is called with each complete head and returns how its
    body is framed: ``("length", n)``, ``("chunked", 0)``, ``("none", 0)``,
    ``("close", 0)`` (until the connection ends) or ``("raw", 0)`` (stop
    scanning: a protocol switch).
    """

    def __init__(self, on_head: Callable[[bytes], tuple[str, int]]) -> None:
        self.on_head = on_head
        self.buf = bytearray()
        self.state = "head"
        self.remaining = 0

    def feed(self, data: bytes) -> None:
        if self.state in ("raw", "close"):
            return
        self.buf += data
        buf = self.buf
        pos = 0
        while True:
            if self.state == "head":
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    break
                head = bytes(buf[pos : end + 4])
                pos = end + 4
                mode, n = self.on_head(head)
                if mode == "length" and n > 0:
                    self.state, self.remaining = "body", n
                elif mode == "chunked":
                    self.state = "chunk_size"
                elif mode in ("raw", "close"):
                    self.state = mode
                    break
            elif self.state == "body":
                take = min(self.remaining, len(buf) - pos)
                pos += take
                self.remaining -= take
                if self.remaining:
                    break
                self.state = "head"
            elif self.state == "chunk_size":
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                size = int(bytes(buf[pos:end]).split(b";", 1)[0].strip() or b"0", 16)
                pos = end + 2
                if size == 0:
                    self.state = "trailer"
                else:
                    self.state, self.remaining = "chunk_data", size + 2
            elif self.state == "chunk_data":
                take = min(self.remaining, len(buf) - pos)
                pos += take
                self.remaining -= take
                if self.remaining:
                    break
                self.state = "chunk_size"
            elif self.state == "trailer":
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                line_empty = end == pos
                pos = end + 2
                if line_empty:
                    self.state = "head"
            else:
                break
        del buf[:pos]


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _framing(headers: dict[str, str]) -> tuple[str, int]:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return "chunked", 0
    if "content-length" in headers:
        return "length", int(headers["content-length"])
    return "none", 0


async def handle(client: trio.SocketStream, upstream_port: int, proxy_port: int) -> None:
    """Pipe one connection to the upstream, counting requests and responses."""
    client_port = client.socket.getpeername()[1]
    origin = attribute(client_port, proxy_port)
    STATS.connections[origin] += 1
    try:
        upstream = await trio.open_tcp_stream("127.0.0.1", upstream_port)
    except OSError:
        await client.aclose()
        return
    pending: deque[tuple[str, str]] = deque()

    def on_request(head: bytes) -> tuple[str, int]:
        line, headers = _headers(head)
        method, target, *_ = line.split(" ")
        path = normalise_path(target)
        pending.append((method, path))
        if path.endswith(POLL_SUFFIX) and origin != "runs":
            STATS.polls.append(time.monotonic())
        if "upgrade" in headers.get("connection", "").lower():
            return "raw", 0
        return _framing(headers)

    def on_response(head: bytes) -> tuple[str, int]:
        line, headers = _headers(head)
        status = int(line.split(" ", 2)[1])
        if 100 <= status < 200 and status != 101:
            return "none", 0
        method, path = pending.popleft() if pending else ("?", "?")
        STATS.counts[(origin, method, path, status)] += 1
        if status == 101:
            return "raw", 0
        if method == "HEAD" or status in (204, 304):
            return "none", 0
        mode, n = _framing(headers)
        if mode == "none" and "content-length" not in headers:
            return "close", 0
        return mode, n

    async def pipe(src: trio.SocketStream, dst: trio.SocketStream, scanner: Scanner) -> None:
        while True:
            data = await src.receive_some(BUFFER)
            if not data:
                return
            try:
                scanner.feed(data)
            except (ValueError, IndexError) as exc:  # pass the rest on, uncounted
                print(f"proxy: cannot follow a message: {exc!r}", file=sys.stderr)
                scanner.state = "raw"
            await dst.send_all(data)

    async with client, upstream, trio.open_nursery() as nursery:

        async def run(src: trio.SocketStream, dst: trio.SocketStream, sc: Scanner) -> None:
            # A peer that resets or closes ends the connection, never the proxy.
            try:
                await pipe(src, dst, sc)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            finally:
                nursery.cancel_scope.cancel()

        nursery.start_soon(run, client, upstream, Scanner(on_request))
        nursery.start_soon(run, upstream, client, Scanner(on_response))


async def control() -> None:
    """Answer ``pid``/``reset``/``counts`` commands on stdin."""
    stdin = trio.lowlevel.FdStream(os.dup(0))
    buf = b""
    async with stdin:
        while True:
            data = await stdin.receive_some(4096)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                words = line.decode().split()
                if not words:
                    continue
                if words[0] == "pid":
                    pid = int(words[1])
                    STATS.origins = {pid: "worker"} if pid else {}
                    reply: Any = "ok"
                elif words[0] == "pids":
                    STATS.origins.update({int(w): words[1] for w in words[2:]})
                    reply = "ok"
                elif words[0] == "reset":
                    STATS.reset()
                    reply = "ok"
                elif words[0] == "counts":
                    reply = STATS.snapshot()
                else:
                    reply = {"error": f"unknown command {words[0]!r}"}
                sys.stdout.write(json.dumps(reply) + "\n")
                sys.stdout.flush()


async def main(upstream_port: int) -> None:
    async with trio.open_nursery() as nursery:
        listeners: list[trio.SocketListener] = await nursery.start(
            functools.partial(
                trio.serve_tcp, lambda s: handle(s, upstream_port, port), 0, host="127.0.0.1"
            )
        )
        port = listeners[0].socket.getsockname()[1]
        sys.stdout.write(f"port {port}\n")
        sys.stdout.flush()
        await control()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]))

"""The worker's handle on one warm-start zygote process and on the runs it forked.

:class:`Zygote` holds the process, its socket, the requests waiting for an
answer and the children still running; :class:`WarmChild` is one forked run,
whose exit arrives as a message (the zygote, not the worker, is its parent).
The task that serves a zygote lives in :mod:`trio_worker._process._warm_start`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Final

import attrs
import trio

from trio_worker._process._zygote import MAX_MESSAGE_BYTES
from trio_worker._process._zygote_image import ImageCheck

__all__ = ["WarmChild", "Zygote", "close_zygote", "receive"]

_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")


@attrs.define(eq=False)
class WarmChild:
    """A run's process forked by a zygote: not our child, so its exit comes as a message.

    Attributes:
        pid: the child's pid, leader of its own session and process group.
        returncode: its exit status once known (negative: killed by that
            signal); ``None`` while it runs, or when its zygote died first.
    """

    pid: int
    returncode: int | None = None
    _exited: trio.Event = attrs.field(factory=trio.Event)

    async def wait(self) -> int | None:
        """Wait until the child has exited (or its exit can no longer be known)."""
        await self._exited.wait()
        return self.returncode

    def _exit(self, returncode: int | None) -> None:
        if not self._exited.is_set():
            self.returncode = returncode
            self._exited.set()


@attrs.define(eq=False)
class Zygote:
    """One zygote process, its socket and the runs it forked."""

    process: trio.Process
    sock: trio.socket.SocketType
    #: Compares what it was made from with the present (sources added at ready).
    check: ImageCheck
    send_lock: trio.Lock = attrs.field(factory=trio.Lock)
    pending: dict[int, tuple[trio.Event, list[dict[str, Any]]]] = attrs.field(factory=dict)
    #: The forked runs still alive, by request id.
    children: dict[int, WarmChild] = attrs.field(factory=dict)
    forks: int = 0
    rss_at_ready: int = 0
    alive: bool = True
    retired: bool = False
    idle: trio.Event = attrs.field(factory=trio.Event)

    def rss_bytes(self) -> int:
        try:
            with open(f"/proc/{self.process.pid}/statm", encoding="ascii") as statm:
                return int(statm.read().split()[1]) * _PAGE_SIZE
        except (OSError, ValueError, IndexError):
            return 0

    def lost(self) -> None:
        """The zygote is gone: fail its pending requests; its children's exits are unknown."""
        self.alive = False
        for event, _answer in self.pending.values():
            event.set()
        for child in self.children.values():
            child._exit(None)
        self.children.clear()
        self.idle.set()


async def receive(sock: trio.socket.SocketType) -> dict[str, Any] | None:
    """One message, or None once the peer has closed."""
    try:
        data = await sock.recv(MAX_MESSAGE_BYTES)
    except OSError:
        return None
    if not data:
        return None
    message: dict[str, Any] = json.loads(data)
    return message


async def close_zygote(process: trio.Process) -> None:
    """Stop and reap a zygote whose socket has closed.

    SIGKILL at once: it runs no user code and holds nothing to flush, and one
    still importing would otherwise only notice the closed socket once done.
    Its children, if any are left, live on as a cold start's would.
    """
    process.kill()
    await process.wait()

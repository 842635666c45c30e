"""Warm start: the worker's side of the zygote that forks engine runs.

A :class:`WarmStarter` is opened by the ``process`` worker around its runs
nursery (so it outlives every run) and owns, in a nursery of its own, one task
per zygote process (:mod:`trio_worker._process._zygote`): the task starts the zygote
with ``trio.lowlevel.open_process``, reads its socket, and reaps it. For each
engine run :meth:`WarmStarter.spawn` sends the run's argv0, environment,
working directory, memory ceiling and three fds (SCM_RIGHTS), and gets back the
pid of the forked child, then its exit status (the zygote is its parent and
reaps it).

The first zygote starts with the first engine run (which waits for it about
as long as a cold start takes). It is replaced when it dies, after ``max_forks``
forks, when its resident memory has grown by more than ``max_rss_growth_mb``,
or, checked before each fork, when what it was made from has changed (the
preload list, the worker's environment, the interpreter, or the source file of
any module it imported: :mod:`trio_worker._process._zygote_image`); a retired
zygote keeps serving the exits of its children and closes when the last one
has exited. When no zygote can be had (it fails to start, or dies while
forking), :meth:`spawn` returns ``None`` and the caller starts the run cold.
"""

from __future__ import annotations

import array
import contextlib
import itertools
import json
import logging
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import trio

from trio_worker._core._settings import process_environment
from trio_worker._process._group import signal_process_group
from trio_worker._process._zygote import MAX_MESSAGE_BYTES
from trio_worker._process._zygote_handle import WarmChild, Zygote, close_zygote, receive
from trio_worker._process._zygote_image import (
    ImageCheck,
    ZygoteImage,
    environ_digest,
    executable_identity,
)

__all__ = ["WarmChild", "WarmStarter", "open_warm_starter"]

logger = logging.getLogger("trio_worker.process.warm_start")

#: How long a zygote may take to import everything and say ready.
READY_TIMEOUT_SECONDS: Final = 120.0
#: After this many zygotes in a row die before ready, stop trying (runs go cold).
MAX_FAILED_STARTS: Final = 3
#: How long a run waits for a (re)starting zygote before it starts cold.
WAIT_FOR_READY_SECONDS: Final = 30.0
#: How long the zygote may take to answer a spawn request.
SPAWN_ANSWER_SECONDS: Final = 10.0
#: The zygote's module, run as ``python -m`` (imports nothing of the worker's).
_ZYGOTE_MODULE: Final = "trio_worker._process._zygote"


@attrs.define(eq=False)
class WarmStarter:
    """Keeps a zygote ready and forks engine runs from it.

    Attributes:
        preload: extra modules the zygote imports; a change takes effect at
            the next fork (the zygote is replaced).
        max_forks: forks after which the zygote is replaced by a fresh one.
        max_rss_growth_mb: resident-memory growth after which it is replaced.
    """

    preload: Sequence[str] = ()
    max_forks: int = 1000
    max_rss_growth_mb: float = 50.0
    _nursery: trio.Nursery | None = None
    _current: Zygote | None = None
    _ready: trio.Event = attrs.field(factory=trio.Event)
    _wanted: trio.Event = attrs.field(factory=trio.Event)
    _requested: trio.Event = attrs.field(factory=trio.Event)
    _unavailable: bool = False
    _ids: itertools.count[int] = attrs.field(factory=itertools.count)
    #: How many zygotes have been started (for tests and metrics).
    started: int = 0

    @property
    def zygote_pid(self) -> int | None:
        """The pid of the zygote serving new runs, if one is ready."""
        current = self._current
        return current.process.pid if current is not None and current.alive else None

    def prestart(self) -> None:
        """Start the zygote now rather than with the first engine run."""
        self._requested.set()

    async def _keep_one(self) -> None:
        """Start a zygote whenever none serves; stop after repeated failed starts.

        The first one starts with the first engine run, so a worker that never
        runs the engine never pays for one.
        """
        await self._requested.wait()
        failures = 0
        while True:
            self._wanted = trio.Event()
            ok = await self._nursery_start(self._serve_zygote)
            if ok:
                failures = 0
            else:
                failures += 1
                if failures >= MAX_FAILED_STARTS:
                    logger.warning(
                        "The warm-start zygote failed to start %d times; "
                        "engine runs start cold from now on",
                        failures,
                    )
                    self._unavailable = True
                    self._ready.set()
                    return
                continue
            await self._wanted.wait()

    async def _nursery_start(self, fn: Any) -> bool:
        assert self._nursery is not None
        result: bool = await self._nursery.start(fn)
        return result

    async def _serve_zygote(self, *, task_status: trio.TaskStatus[bool]) -> None:
        """Run one zygote: start it, wait for ready, read its messages, reap it."""
        try:
            worker_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as exc:  # e.g. out of file descriptors: run cold, never fail
            logger.warning("Could not start the warm-start zygote: %s", exc)
            task_status.started(False)
            return
        image = ZygoteImage(
            preload=tuple(self.preload),
            environ=environ_digest(process_environment()),
            executable=executable_identity(),
        )
        try:
            command = [
                sys.executable,
                "-m",
                _ZYGOTE_MODULE,
                str(zygote_end.fileno()),
            ]
            if self.preload:
                command.append(",".join(self.preload))
            process = await trio.lowlevel.open_process(
                command,
                pass_fds=(zygote_end.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            worker_end.close()
            zygote_end.close()
            logger.warning("Could not start the warm-start zygote: %s", exc)
            task_status.started(False)
            return
        zygote_end.close()
        self.started += 1
        zygote = Zygote(
            process=process,
            sock=trio.socket.from_stdlib_socket(worker_end),
            check=ImageCheck(image),
        )
        try:
            with zygote.sock:
                ready = await self._read_ready(zygote)
                if not ready:
                    task_status.started(False)
                    return
                self._current = zygote
                self._ready.set()
                task_status.started(True)
                await self._read(zygote)
        finally:
            zygote.lost()
            if self._current is zygote:
                self._current = None
                self._ready = trio.Event()
                self._wanted.set()
            with trio.CancelScope(shield=True):
                await close_zygote(process)

    async def _read_ready(self, zygote: Zygote) -> bool:
        sources: list[object] = []
        with trio.move_on_after(READY_TIMEOUT_SECONDS):
            message = await receive(zygote.sock)
            while message is not None and message.get("op") == "sources":
                sources.extend(message.get("files", ()))
                message = await receive(zygote.sock)
            if message is None or message.get("op") != "ready":
                logger.warning("The warm-start zygote exited before it was ready")
                return False
            for problem in message.get("problems", ()):
                logger.warning("The warm-start zygote could not preload %s", problem)
            zygote.rss_at_ready = zygote.rss_bytes()
            zygote.check = ImageCheck(zygote.check.image.with_sources(sources))
            return True
        logger.warning("The warm-start zygote was not ready within %.0f s", READY_TIMEOUT_SECONDS)
        return False

    async def _read(self, zygote: Zygote) -> None:
        """Dispatch the zygote's messages until it exits or, retired, has no children."""
        while True:
            if zygote.retired and not zygote.children and not zygote.pending:
                return
            message = await receive(zygote.sock)
            if message is None:
                if not zygote.retired:
                    logger.warning(
                        "The warm-start zygote (pid %d) exited; starting another",
                        zygote.process.pid,
                    )
                return
            op, request_id = message.get("op"), int(message.get("id", -1))
            if op in ("started", "failed") and request_id in zygote.pending:
                event, answer = zygote.pending.pop(request_id)
                if op == "started":
                    # Registered here, before its exit can be read.
                    child = WarmChild(pid=int(message["pid"]))
                    zygote.children[request_id] = message["child"] = child
                    zygote.forks += 1
                answer.append(message)
                event.set()
            elif op == "started":
                # Forked after its run stopped waiting (and started cold, or was
                # cancelled): it must not run the flow a second time.
                pid = int(message.get("pid", 0))
                if pid > 0:
                    logger.warning(
                        "The warm-start zygote answered too late; killing the run it forked"
                        " (pid %d)",
                        pid,
                    )
                    signal_process_group(pid, signal.SIGKILL)
            elif op == "exited" and request_id in zygote.children:
                zygote.children.pop(request_id)._exit(int(message["returncode"]))

    def _retire_if_worn(self, zygote: Zygote) -> None:
        growth = (zygote.rss_bytes() - zygote.rss_at_ready) / (1024 * 1024)
        if zygote.forks >= self.max_forks or growth > self.max_rss_growth_mb:
            logger.info(
                "Replacing the warm-start zygote (pid %d) after %d forks (%.0f MB growth)",
                zygote.process.pid,
                zygote.forks,
                growth,
            )
            self._retire(zygote)

    def _retire(self, zygote: Zygote) -> None:
        """Fork no more runs from ``zygote``; it ends once its children have."""
        zygote.retired = True
        if self._current is zygote:
            self._current = None
            self._ready = trio.Event()
            self._wanted.set()
        if zygote.alive and not zygote.children and not zygote.pending:
            # Wake its reader so that it closes (the socket may be gone already).
            with contextlib.suppress(OSError):
                zygote.sock.shutdown(socket.SHUT_WR)

    async def _current_zygote(self) -> Zygote | None:
        """A ready zygote made from what is on disk now; ``None`` after waiting too long."""
        if self._unavailable:
            return None
        self._requested.set()
        with trio.move_on_after(WAIT_FOR_READY_SECONDS):
            while True:
                await self._ready.wait()
                zygote = self._current
                if zygote is None or not zygote.alive:
                    break
                reason = await zygote.check.changed(self.preload)
                if reason is None:
                    return zygote
                if self._current is zygote:
                    logger.info(
                        "Replacing the warm-start zygote (pid %d): %s", zygote.process.pid, reason
                    )
                    self._retire(zygote)
        logger.info("No warm-start zygote is ready; starting the run cold")
        return None

    async def spawn(
        self,
        *,
        argv0: str,
        env: Mapping[str, str],
        cwd: str,
        fds: tuple[int, int, int],
        memory_limit_bytes: int | None,
    ) -> WarmChild | None:
        """Fork a run's process from the zygote; ``None`` means: start it cold.

        Waits for the zygote to be ready when it is (re)starting.
        """
        zygote = await self._current_zygote()
        if zygote is None:
            return None
        request_id = next(self._ids)
        body = json.dumps(
            {
                "op": "spawn",
                "id": request_id,
                "argv0": argv0,
                "env": dict(env),
                "cwd": cwd,
                "memory_limit_bytes": memory_limit_bytes,
            }
        ).encode()
        if len(body) > MAX_MESSAGE_BYTES:
            logger.info("The run's environment is too large for a warm start; starting it cold")
            return None
        event = trio.Event()
        answer: list[dict[str, Any]] = []
        zygote.pending[request_id] = (event, answer)
        # Shielded: a run cancelled while the zygote forks must still learn the
        # pid, or its process would run on untracked.
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + SPAWN_ANSWER_SECONDS
            try:
                async with zygote.send_lock:
                    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    await zygote.sock.sendmsg([body], ancillary)
                await event.wait()
            except OSError as exc:
                logger.warning(
                    "The warm-start zygote could not take a run (%s); starting it cold", exc
                )
                return None
            finally:
                zygote.pending.pop(request_id, None)
        if not answer:
            logger.warning("The warm-start zygote did not answer; starting the run cold")
            if zygote.alive and not zygote.retired:
                self._retire(zygote)  # too slow to trust with the next run
            return None
        if answer[0]["op"] != "started":
            error = answer[0].get("error")
            logger.warning(
                "The warm-start zygote could not fork (%s); starting the run cold", error
            )
            return None
        child: WarmChild = answer[0]["child"]
        self._retire_if_worn(zygote)
        return child

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a zygote until cancelled (``nursery.start`` protocol)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await self._keep_one()
            await trio.sleep_forever()


@asynccontextmanager
async def open_warm_starter(
    preload: Sequence[str] = (), *, max_forks: int = 1000, max_rss_growth_mb: float = 50.0
) -> AsyncIterator[WarmStarter]:
    """A :class:`WarmStarter` serving in a nursery of its own until the block ends."""
    starter = WarmStarter(
        preload=tuple(preload), max_forks=max_forks, max_rss_growth_mb=max_rss_growth_mb
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(starter.serve)
        yield starter
        nursery.cancel_scope.cancel()

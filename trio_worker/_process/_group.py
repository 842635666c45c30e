"""Signalling and reaping whole process groups, so no grandchild outlives a run.

A flow run's process is started in a new session, so it leads its own process
group and every process it spawns (a shell's children, a ``subprocess`` of the
flow) is in that group unless it makes a session of its own. Stopping a run is
SIGTERM to the group, a grace period, SIGKILL to the group, and a last SIGKILL
sweep after the leader has exited: a grandchild that ignores SIGTERM would
otherwise be re-parented to init and live on (Prefect's #20979).

The public helpers (re-exported by ``trio_worker`` for any backend that runs
local processes): :func:`run_process_group` (start, stop on cancel, sweep),
:func:`terminate_process_group`, :func:`kill_process_group`,
:func:`sweep_process_group`, :func:`signal_process_group`, and the
infrastructure-pid format ``"hostname:pid"``
(:func:`format_infrastructure_pid`, :func:`parse_infrastructure_pid`).
"""

from __future__ import annotations

import functools
import os
import signal
import socket
from collections.abc import Awaitable, Sequence
from typing import Any, Final, Protocol

import trio

__all__ = [
    "HOSTNAME",
    "GroupLeader",
    "format_infrastructure_pid",
    "group_is_alive",
    "is_orphaned",
    "kill_process_group",
    "parent_pid",
    "parse_infrastructure_pid",
    "process_env_value",
    "process_start_time",
    "run_process_group",
    "signal_process_group",
    "sweep_process_group",
    "terminate_process_group",
]

#: How often a stop checks whether the group has emptied.
GROUP_POLL_SECONDS: Final = 0.05
#: This host's name, the first half of every infrastructure pid made here.
HOSTNAME: Final = socket.gethostname()
#: In a run's env: the pid of the worker that started it (orphan detection).
WORKER_PID_ENV: Final = "TRIO_WORKER_PID"
#: How far up the parent chain a run's worker is looked for (a zygote between).
ANCESTRY_DEPTH: Final = 4


def format_infrastructure_pid(pid: int) -> str:
    """Return ``"hostname:pid"``: no worker on another host will ever signal it."""
    return f"{HOSTNAME}:{pid}"


def parse_infrastructure_pid(value: str) -> tuple[str | None, int]:
    """Split ``"host:pid"`` (ours, Prefect 3.0) or a bare ``"pid"`` (Prefect 3.9).

    Returns:
        ``(host, pid)``; ``host`` is None for a bare pid, whose host is unknown.

    Raises:
        ValueError: when the pid part is not a number.
    """
    host, _, pid = value.rpartition(":")
    return (host or None), int(pid)


def signal_process_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to every process of group ``pgid``; False when none is left."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        # The group now belongs to someone else (pid reuse); it is not ours to signal.
        return False
    return True


def group_is_alive(pgid: int) -> bool:
    """Whether any process is left in group ``pgid``."""
    return signal_process_group(pgid, 0)


async def kill_process_group(pgid: int, *, grace_seconds: float) -> None:
    """SIGTERM the group, wait up to ``grace_seconds`` for it to empty, then SIGKILL it.

    For groups whose leader is not our child (an earlier worker's run); our own
    children are stopped by :func:`terminate_process_group`, which also reaps.
    """
    if not signal_process_group(pgid, signal.SIGTERM):
        return
    with trio.move_on_after(grace_seconds):
        # The kernel offers no wake-up for "group is empty"; poll it briefly.
        while group_is_alive(pgid):  # noqa: ASYNC110
            await trio.sleep(GROUP_POLL_SECONDS)
    signal_process_group(pgid, signal.SIGKILL)


class GroupLeader(Protocol):
    """A process that leads its group and whose exit can be awaited.

    A ``trio.Process``, or a warm-started run whose exit its zygote reports.
    """

    @property
    def pid(self) -> int: ...

    def wait(self) -> Awaitable[object]: ...


async def terminate_process_group(process: GroupLeader, *, grace_seconds: float) -> None:
    """Stop a run's process and everything in its group (``deliver_cancel`` for run_process).

    Trio runs this shielded when the run's scope is cancelled and reaps the
    leader afterwards; a warm-started run's zygote reaps it.
    """
    pgid = process.pid
    signal_process_group(pgid, signal.SIGTERM)
    with trio.move_on_after(grace_seconds):
        await process.wait()
        # The kernel offers no wake-up for "group is empty"; poll it briefly.
        while group_is_alive(pgid):  # noqa: ASYNC110
            await trio.sleep(GROUP_POLL_SECONDS)
    signal_process_group(pgid, signal.SIGKILL)


def sweep_process_group(pgid: int) -> bool:
    """SIGKILL whatever is left in group ``pgid`` (after its leader exited).

    Returns:
        Whether any process was left.
    """
    return signal_process_group(pgid, signal.SIGKILL)


async def run_process_group(
    command: Sequence[str],
    *,
    grace_seconds: float,
    task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> int:
    """Run ``command`` as the leader of a new process group and return its exit status.

    ``task_status.started(process)`` is called once it exists (start it with
    ``nursery.start`` to learn its pid). When cancelled, the group gets
    SIGTERM, ``grace_seconds``, then SIGKILL; either way, whatever is left in
    the group when the leader has exited is swept with SIGKILL.

    Args:
        command: the argv.
        grace_seconds: how long the group may take to exit after SIGTERM.
        task_status: receives the started ``trio.Process``.
        **options: passed to ``trio.run_process`` (``env``, ``cwd``, ``stdout``...).

    Raises:
        OSError: the command cannot be started (before ``started``).
    """
    process: trio.Process | None = None
    spawn_error: OSError | None = None

    async def spawn(task_status: trio.TaskStatus[trio.Process]) -> None:
        await trio.run_process(
            list(command),
            check=False,
            start_new_session=True,
            deliver_cancel=functools.partial(terminate_process_group, grace_seconds=grace_seconds),
            task_status=task_status,
            **options,
        )

    try:
        async with trio.open_nursery() as nursery:
            try:
                process = await nursery.start(spawn)
            except OSError as exc:  # raised here, not grouped by the nursery
                spawn_error = exc
            else:
                task_status.started(process)
    finally:
        if process is not None:
            sweep_process_group(process.pid)
    if spawn_error is not None:
        raise spawn_error
    assert process is not None
    assert process.returncode is not None  # run_process reaped it
    return process.returncode


def is_orphaned(pid: int, *, worker_pid: int | None) -> bool:
    """Whether ``pid`` exists and the worker that started it is gone.

    Compared with the recorded worker pid, not with pid 1: under a subreaper
    (``systemd --user``, a container's init) an orphan's new parent is not 1.
    The worker is looked for among the first ancestors (a warm-started run's
    parent is the zygote, whose parent is the worker).

    Args:
        pid: the run's process.
        worker_pid: the pid of the worker that started it (its
            ``TRIO_WORKER_PID``); None when unknown (an older worker's run):
            then only re-parenting to pid 1 tells.
    """
    parent = parent_pid(pid)
    if parent is None:
        return False
    if worker_pid is None:
        return parent == 1
    ancestor: int | None = parent
    for _ in range(ANCESTRY_DEPTH):
        if ancestor is None or ancestor <= 1:
            return True
        if ancestor == worker_pid:
            return False
        ancestor = parent_pid(ancestor)
    return True


def _proc_stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; the rest
    # follows the last ')'.
    return text[text.rindex(")") + 2 :].split()


def process_env_value(pid: int, name: str) -> str | None:
    """The value of env var ``name`` in process ``pid``, or None (unset or unreadable)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            entries = environ.read().split(b"\0")
    except OSError:
        return None
    prefix = name.encode() + b"="
    for entry in entries:
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid``, or None when it does not exist (or /proc is unavailable)."""
    fields = _proc_stat_fields(pid)
    return None if fields is None else int(fields[1])


def process_running(pid: int, started: int | None) -> bool:
    """Whether ``pid`` (which started at ``started``, see :func:`process_start_time`) still runs.

    A zombie counts as ended: a process whose parent died is reaped by init,
    or, under a pid 1 that reaps nothing (some containers), never.
    """
    fields = _proc_stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X") and int(fields[19]) == started


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; tells a reused pid from the original."""
    fields = _proc_stat_fields(pid)
    return None if fields is None else int(fields[19])

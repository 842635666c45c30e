"""Signalling and reaping whole process groups, so no grandchild outlives a run.

A flow run's process is started in a new session, so it leads its own process
group and every process it spawns (a shell's children, a ``subprocess`` of the
flow) is in that group unless it makes a session of its own. Stopping a run is
SIGTERM to the group, a grace period, SIGKILL to the group, and a last SIGKILL
sweep after the leader has exited: a grandchild that ignores SIGTERM would
otherwise be re-parented to init and live on (Prefect's #20979).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable
from typing import Final, Protocol

import trio

__all__ = [
    "GroupLeader",
    "group_is_alive",
    "kill_process_group",
    "parent_pid",
    "process_env_value",
    "process_start_time",
    "signal_process_group",
    "terminate_process_group",
]

#: How often a stop checks whether the group has emptied.
GROUP_POLL_SECONDS: Final = 0.05


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

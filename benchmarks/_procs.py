"""Process-tree figures from /proc: RSS and CPU time of a process and its descendants."""

from __future__ import annotations

import os
from typing import Final

import attrs

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")


@attrs.frozen
class ProcStat:
    """The fields of ``/proc/PID/stat`` the benchmark uses (CPU in seconds, RSS in bytes)."""

    pid: int
    state: str
    cpu: float
    children_cpu: float
    rss: int


def read_stat(pid: int) -> ProcStat | None:
    """Read ``/proc/PID/stat``; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime = 14, stime = 15, cutime = 16, cstime = 17, rss = 24
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ProcStat(
        pid=pid,
        state=fields[0],
        cpu=(utime + stime) / CLOCK_TICKS,
        children_cpu=(cutime + cstime) / CLOCK_TICKS,
        rss=int(fields[21]) * PAGE_SIZE,
    )


def peak_rss(pid: int) -> int | None:
    """The process's own peak RSS in bytes (``VmHWM``), tracked by the kernel; None if gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all its threads), from ``/proc/PID/task/*/children``."""
    result: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return result
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                result.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return result


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (zombies excluded), depth first."""
    found: list[int] = []
    stack = children(pid)
    while stack:
        child = stack.pop()
        stat = read_stat(child)
        if stat is None or stat.state == "Z":
            continue
        found.append(child)
        stack.extend(children(child))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    stat = read_stat(pid)
    return stat is not None and stat.state != "Z"


@attrs.frozen
class TreeSample:
    """One look at a process tree.

    Attributes:
        rss: summed RSS of the root and its live descendants (shared pages count per process).
        own_cpu: CPU seconds of the root process itself (all its threads).
        tree_cpu: ``own_cpu`` plus CPU of reaped children and of live descendants.
        processes: how many processes the tree has (root included).
        helpers: how many of them are the worker's long-lived helpers rather
            than runs (the warm-start zygote: a direct child that stays for the
            worker's life, while the runs it forks are its children).
    """

    rss: int
    own_cpu: float
    tree_cpu: float
    processes: int
    helpers: int = 0

    @property
    def runs(self) -> int:
        """Processes that are runs (or their children): neither the root nor a helper."""
        return self.processes - 1 - self.helpers


#: The warm-start zygote's command line (its forked runs share it; only the
#: worker's direct child with it is the zygote).
ZYGOTE_MARKER = b"trio_worker._process._zygote"


def is_helper(pid: int) -> bool:
    """Whether ``pid`` (a direct child of a worker) is the warm-start zygote."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return ZYGOTE_MARKER in f.read()
    except OSError:
        return False


def sample_tree(pid: int) -> TreeSample | None:
    """Sum RSS and CPU over ``pid`` and its descendants; None if ``pid`` is gone."""
    root = read_stat(pid)
    if root is None:
        return None
    rss = root.rss
    tree_cpu = root.cpu + root.children_cpu
    count = 1
    helpers = sum(1 for child in children(pid) if is_helper(child))
    for child in descendants(pid):
        stat = read_stat(child)
        if stat is None:
            continue
        rss += stat.rss
        tree_cpu += stat.cpu + stat.children_cpu
        count += 1
    return TreeSample(
        rss=rss, own_cpu=root.cpu, tree_cpu=tree_cpu, processes=count, helpers=helpers
    )

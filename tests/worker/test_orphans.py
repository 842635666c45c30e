"""Orphan detection compares with the recorded worker pid, so it holds under a subreaper.

Under ``systemd --user`` (or a container init that reaps) an orphan's new
parent is that subreaper, not pid 1. Here a real subreaper process starts a
"worker" that starts a run and exits: the run is re-parented to the subreaper.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import trio

from tests.helpers import wait_for
from trio_worker._process._group import is_orphaned, parent_pid, signal_process_group

SUBREAPER = textwrap.dedent(
    """
    import ctypes, pathlib, subprocess, sys
    PR_SET_CHILD_SUBREAPER = 36
    assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    worker = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess; print(subprocess.Popen(['sleep', '60'], start_new_session=True,"
         " stdout=subprocess.DEVNULL).pid)"],
        stdout=subprocess.PIPE, text=True,
    )
    run = int(worker.stdout.readline())
    worker.wait()  # the worker died; its run lives on, re-parented to us
    pathlib.Path(sys.argv[1]).write_text(f"{worker.pid} {run}")
    sys.stdin.read()
    """
)


async def test_a_run_whose_worker_died_under_a_subreaper_is_orphaned(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    subreaper = await trio.lowlevel.open_process(
        [sys.executable, "-c", SUBREAPER, str(pids)], stdin=subprocess.PIPE
    )
    run = 0
    try:

        async def written() -> bool:
            return pids.exists() and bool(pids.read_text())

        await wait_for(written, what="the worker to start its run and die")
        worker, run = map(int, pids.read_text().split())
        assert parent_pid(run) == subreaper.pid != 1  # not re-parented to init
        assert is_orphaned(run, worker_pid=worker)
        # The rule of old, "its parent is init", took it for a live worker's run:
        assert not is_orphaned(run, worker_pid=None)
        # While the recorded worker is an ancestor, the run is not orphaned.
        assert not is_orphaned(run, worker_pid=subreaper.pid)
    finally:
        if run:
            signal_process_group(run, 9)
        assert subreaper.stdin is not None
        await subreaper.stdin.aclose()
        with trio.fail_after(10):
            await subreaper.wait()


def test_a_process_that_does_not_exist_is_not_orphaned() -> None:
    assert not is_orphaned(2**22 + 1, worker_pid=1234)

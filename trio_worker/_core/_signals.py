"""Shutdown signals, watched in one place for every command.

The daemons that drain (``trio-worker start``, ``task-worker``, ``demo``): the
first SIGINT/SIGTERM drains, the second cancels everything. The embedded API
(``server start``) has nothing to drain: its first signal stops it (pass no
``on_first``).

Library code installs no handlers; the CLI runs :func:`watch_shutdown_signals`
as a task of its own nursery (trio's ``open_signal_receiver``), so a signal is
an ordinary event in the task tree, never code run inside a handler.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import trio

__all__ = ["watch_shutdown_signals"]

logger = logging.getLogger("trio_worker.signals")


async def watch_shutdown_signals(
    on_first: Callable[[], object] | None,
    cancel_scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``on_first()`` on the first signal and cancel ``cancel_scope`` on the second.

    Args:
        on_first: starts a graceful stop (it must not block); ``None`` when
            there is nothing to drain: the first signal cancels ``cancel_scope``.
        cancel_scope: the scope a second signal (or, without ``on_first``, the
            first) cancels at once.
        task_status: started once the handlers are installed.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        received = 0 if on_first is not None else 1
        async for signum in signals:
            received += 1
            name = signal.Signals(signum).name
            if received == 1:
                assert on_first is not None
                logger.warning("%s received: draining (send it again to stop at once)", name)
                on_first()
            elif received == 2:
                if on_first is not None:
                    logger.warning("%s received again: stopping now", name)
                else:
                    # Nothing to drain: stopping is the expected answer, not news.
                    logger.info("%s received: stopping", name)
                cancel_scope.cancel()
            else:
                # Keep the handler: a third Ctrl-C must not interrupt the
                # final state reports with a KeyboardInterrupt.
                logger.warning("%s received: already stopping", name)

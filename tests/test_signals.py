"""The one shutdown-signal watcher, driven by real signals sent to this process."""

from __future__ import annotations

import logging
import os
import signal

import pytest
import trio

from trio_worker._core._signals import watch_shutdown_signals


async def _until(condition: trio.Event | trio.CancelScope) -> None:
    with trio.fail_after(5):
        if isinstance(condition, trio.Event):
            await condition.wait()
        else:
            while not condition.cancel_called:
                await trio.sleep(0.001)


async def test_first_signal_drains_second_cancels(caplog: pytest.LogCaptureFixture) -> None:
    drained = trio.Event()
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()
        await nursery.start(watch_shutdown_signals, drained.set, scope)
        os.kill(os.getpid(), signal.SIGTERM)
        await _until(drained)
        assert not scope.cancel_called
        os.kill(os.getpid(), signal.SIGINT)
        await _until(scope)
        # A third one is taken too (no KeyboardInterrupt while reports are sent).
        os.kill(os.getpid(), signal.SIGINT)
        with trio.fail_after(5):
            while "already stopping" not in caplog.text:
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    assert "SIGTERM received: draining" in caplog.text
    assert "SIGINT received again: stopping now" in caplog.text


async def test_without_a_drain_the_first_signal_stops(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_worker.signals")
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()
        await nursery.start(watch_shutdown_signals, None, scope)
        os.kill(os.getpid(), signal.SIGTERM)
        await _until(scope)
        nursery.cancel_scope.cancel()
    assert "SIGTERM received: stopping" in caplog.text
    assert "draining" not in caplog.text

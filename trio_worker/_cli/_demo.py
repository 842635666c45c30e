"""``trio-worker demo``: the whole system on one machine, in one command.

It serves the embedded API in-process (a temporary database unless ``--db``),
creates a ``process`` pool and a deployment of :mod:`trio_worker.demo_flow`,
schedules runs of which some are meant to fail, crash or be cancelled, and
starts a worker with a limit, all in one nursery. A live line shows the runs
by state; a summary table compares what each run was meant to do with what
it did. Ctrl-C drains the worker and still prints the summary.

On a terminal the live line is drawn with rich (imported here only: the
worker's own start-up never loads it), and log lines print above it instead
of over it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import click
import trio

from trio_worker._cli import main
from trio_worker._cli._common import run_async
from trio_worker._client._client import PrefectClient
from trio_worker._core._logging import configure_logging
from trio_worker._core._models import FlowRun, State, StateType
from trio_worker._core._settings import Settings
from trio_worker._core._signals import watch_shutdown_signals
from trio_worker._process._config import process_base_job_template
from trio_worker._process._worker import ProcessWorker

__all__ = ["demo"]

POOL: Final = "demo-pool"
REFRESH_SECONDS: Final = 0.25
EXPECTED: Final = {
    "complete": StateType.COMPLETED,
    "fail": StateType.FAILED,
    "crash": StateType.CRASHED,
    "cancel": StateType.CANCELLED,
}
COLUMNS: Final = ("SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def plan_outcomes(runs: int) -> list[str]:
    """Decide what each run should do: mostly complete, a few fail, crash, cancel."""
    special = max(1, runs // 10)
    outcomes = ["fail"] * special + ["crash"] * special + ["cancel"] * max(1, runs // 20)
    outcomes = outcomes[: max(0, runs - 1)]  # always at least one that completes
    return outcomes + ["complete"] * (runs - len(outcomes))


@attrs.define
class DemoRun:
    """One scheduled run of the demo and what it was meant to do."""

    flow_run: FlowRun
    outcome: str
    state: StateType = StateType.SCHEDULED
    cancel_requested: bool = False

    @property
    def as_intended(self) -> bool:
        """Whether the run ended as planned."""
        return self.state is EXPECTED[self.outcome]


def _progress_line(runs: list[DemoRun], started: float) -> str:
    counts = Counter(run.state.value for run in runs)
    finished = sum(counts[c] for c in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"))
    elapsed = max(time.monotonic() - started, 1e-9)
    # Only the states some run is in: the line must fit a narrow terminal.
    parts = [f"{counts[c]} {c.lower()}" for c in COLUMNS if counts[c]]
    return f"{' | '.join(parts)} | {finished / elapsed:.1f} runs/s"


class _Progress:
    """Where the progress line goes: a rich live line on a terminal, else changed lines."""

    def __init__(self, live: Any | None) -> None:
        self._live = live
        self._last = ""

    def show(self, line: str) -> None:
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text(line))
        elif line != self._last:
            click.echo(line)
        self._last = line


async def _watch(client: PrefectClient, runs: list[DemoRun], progress: _Progress) -> None:
    """Refresh states, cancel the runs meant to be cancelled, show progress until all end."""
    started = time.monotonic()
    by_id = {run.flow_run.id: run for run in runs}
    while True:
        current = await client.read_flow_runs(
            flow_runs={"id": {"any_": [str(i) for i in by_id]}}, limit=200
        )
        for flow_run in current:
            if flow_run.state is not None:
                by_id[flow_run.id].state = flow_run.state.type
        for run in runs:
            if (
                run.outcome == "cancel"
                and run.state is StateType.RUNNING
                and not run.cancel_requested
            ):
                run.cancel_requested = True
                await client.set_flow_run_state(
                    run.flow_run.id, State.of(StateType.CANCELLING, "cancelled by the demo")
                )
        progress.show(_progress_line(runs, started))
        if all(run.state in EXPECTED.values() for run in runs):
            return
        await trio.sleep(REFRESH_SECONDS)


def _verdict(run: DemoRun) -> str:
    if run.as_intended:
        return "ok"
    return "not started" if run.state is StateType.SCHEDULED else "UNEXPECTED"


def _print_summary(runs: list[DemoRun]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for title in ("run", "meant to", "ended", ""):
        table.add_column(title.upper())
    for run in runs:
        table.add_row(run.flow_run.name, run.outcome, run.state.value, _verdict(run))
    console = Console(highlight=False)
    console.print(table)
    good = sum(run.as_intended for run in runs)
    console.print(f"{good} of {len(runs)} runs ended as intended.")


#: Each line works as typed, in this order, in a shell where trio-worker is on
#: the PATH (tests/cli/test_demo.py runs them against a fresh API).
NEXT_STEPS: Final = """
Try next, in a new directory, with trio-worker on the PATH:
  trio-worker server start &                       # an API that outlives this demo
  export PREFECT_API_URL=http://127.0.0.1:4200/api
  printf 'def hello(name="world"):\\n    print(f"hello {name}")\\n' > flows.py
  trio-worker work-pool create my-pool
  trio-worker deployment create hello --pool my-pool --entrypoint flows.py:hello
  trio-worker deployment run hello/hello --param name=trio
  trio-worker start --pool my-pool --run-once      # runs it, then exits
  trio-worker flow-run ls
  # Outgrowing one machine? Point PREFECT_API_URL at a Prefect server instead.
"""


async def _demo(runs_wanted: int, limit: int, db: Path | None, seconds: float) -> bool:
    from trio_worker._server import serve_api

    interrupted = False
    runs: list[DemoRun] = []
    workers: list[ProcessWorker] = []
    # Everything the demo waits on; a Ctrl-C drains the worker, then cancels it.
    watching = trio.CancelScope()
    with tempfile.TemporaryDirectory(prefix="trio-worker-demo-") as scratch:
        db_path = db or Path(scratch) / "demo.db"
        async with trio.open_nursery() as nursery:

            async def drain_and_stop_watching(worker: ProcessWorker) -> None:
                await worker.drain(5.0)
                watching.cancel()  # the runs are over; their states won't change

            def on_signal() -> None:
                nonlocal interrupted
                interrupted = True
                click.echo("\nInterrupted: draining the worker (Ctrl-C again to stop now)")
                if workers:
                    nursery.start_soon(drain_and_stop_watching, workers[0])
                else:
                    watching.cancel()

            # A second Ctrl-C stops the worker, not the API the runs report to.
            await nursery.start(watch_shutdown_signals, on_signal, watching)
            api_url: str = await nursery.start(
                functools.partial(serve_api, port=0, db_path=db_path)
            )
            click.echo(f"Embedded API at {api_url} (database {db_path})")
            settings = Settings(
                api_url=api_url,
                query_seconds=0.5,
                heartbeat_seconds=5.0,
                prefetch_seconds=0,
                state_dir=str(Path(scratch) / "state"),
            )
            async with PrefectClient(api_url, settings=settings) as client:
                with watching:
                    runs.extend(await _schedule(client, runs_wanted, seconds))
                    click.echo(
                        f"Scheduled {len(runs)} runs; starting a worker with --limit {limit}"
                    )
                    worker = ProcessWorker(
                        POOL,
                        name=f"demo-{uuid.uuid4().hex[:6]}",
                        limit=limit,
                        settings=settings,
                        cancel_grace_seconds=5.0,
                    )
                    async with worker, trio.open_nursery() as inner:
                        workers.append(worker)
                        inner.start_soon(functools.partial(worker.start, printer=lambda _: None))
                        with _live_progress() as progress:
                            await _watch(client, runs, progress)
                        # Every run has ended; their processes exit on their own.
                        await worker.drain(5.0)
                        inner.cancel_scope.cancel()
                # Refresh the final states for the summary.
                with trio.CancelScope(shield=True):
                    for run in runs:
                        fresh = await client.read_flow_run(run.flow_run.id)
                        if fresh.state is not None:
                            run.state = fresh.state.type
            nursery.cancel_scope.cancel()
    click.echo()
    _print_summary(runs)
    click.echo(NEXT_STEPS)
    return not interrupted and all(run.as_intended for run in runs)


@contextlib.contextmanager
def _live_progress() -> Iterator[_Progress]:
    """A live line on a terminal (log lines print above it), plain lines otherwise."""
    if not sys.stdout.isatty():
        yield _Progress(None)
        return
    from rich.console import Console
    from rich.live import Live

    with Live(console=Console(), refresh_per_second=8, redirect_stderr=True) as live:
        # The log handler must write to the stderr that Live redirects.
        configure_logging("text", level=logging.WARNING)
        try:
            yield _Progress(live)
        finally:
            configure_logging("text", level=logging.WARNING)


async def _schedule(client: PrefectClient, count: int, seconds: float) -> list[DemoRun]:
    await client.create_work_pool(
        POOL, type="process", base_job_template=process_base_job_template()
    )
    flow = await client.create_flow("demo-flow")
    deployment = await client.create_deployment(
        flow_id=flow.id,
        name="demo",
        work_pool_name=POOL,
        entrypoint="trio_worker.demo_flow:demo_flow",
        parameters={"seconds": seconds},
        job_variables={"stream_output": False},
    )
    runs = []
    for number, outcome in enumerate(plan_outcomes(count), start=1):
        flow_run = await client.create_flow_run_from_deployment(
            deployment.id, parameters={"number": number, "outcome": outcome}
        )
        runs.append(DemoRun(flow_run=flow_run, outcome=outcome))
    return runs


@main.command()
@click.option(
    "--runs",
    type=click.IntRange(min=1, max=200),
    default=20,
    show_default=True,
    help="How many flow runs to schedule.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="The worker's limit: most runs at once.",
)
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keep the demo's database in this file (default: a temporary one).",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="About how long each run works.",
)
def demo(runs: int, limit: int, db: Path | None, seconds: float) -> None:
    """Show trio-worker at work: an embedded API, a pool, runs and a worker, in one command.

    Exits 0 when every run ended as intended (completed, failed, crashed or
    cancelled on purpose).
    """
    configure_logging("text", level=logging.WARNING)
    if not run_async(_demo, runs, limit, db, seconds):
        sys.exit(1)

"""A worker's local record of the processes it started, kept across restarts.

When a worker dies (SIGKILL, OOM, a host reboot of the worker's container),
its flow-run processes may live on in their own process groups, and their
runs are left PENDING or RUNNING. The next worker of the same name on the same
host reads this record and reconciles each entry (``_reconcile.py``).

A run is recorded from before the worker proposes PENDING for it, not only
once its process exists: a worker killed between its claim and its process
would otherwise leave the run PENDING with no one to start or end it. The
record's ``phase`` says how far it got (``_claims.py`` settles all but
``started``): ``claimed`` (PENDING proposed, nothing started), ``starting``
(about to spawn: a process may exist, its pid unknown), ``started`` (a process
with ``pid``), ``exited`` (the process ended with ``exit_status``; the record
stays until the run's final state is reported, which a kill can also cut short).

One JSON file per worker name, rewritten atomically (write, fsync, rename)
on every change, from a thread so the loop never blocks on the disk.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Final

import attrs
import platformdirs
import trio

__all__ = [
    "CLAIMED",
    "EXITED",
    "STARTED",
    "STARTING",
    "RunRecord",
    "RunRecords",
    "default_state_dir",
]

logger = logging.getLogger("trio_worker.run_records")

#: ``RunRecord.phase``: PENDING proposed (or about to be); no process started.
CLAIMED: Final = "claimed"
#: About to spawn the run's process: one may exist, its pid is not known.
STARTING: Final = "starting"
#: The run's process exists: ``pid`` and ``start_ticks`` name it.
STARTED: Final = "started"
#: The run's process ended (``exit_status``; None when unknown); its end is not reported yet.
EXITED: Final = "exited"


def default_state_dir() -> Path:
    """The user's state directory for trio-worker (platform conventions)."""
    return Path(platformdirs.user_state_dir("trio-worker"))


@attrs.frozen
class RunRecord:
    """One run a worker claimed, and the process it started for it.

    Attributes:
        flow_run_id: the run the process belongs to.
        pid: the process id (also its process-group id: it leads its session);
            None before the process exists.
        start_ticks: when the process started, in clock ticks since boot; a
            different value for the same pid means the pid was reused.
        started_at: ISO time of the record, for people reading the file.
        phase: ``claimed``, ``starting`` or ``started`` (see the module docstring).
        transition_id: the id of the PENDING state the worker proposed: the
            run's state is still that claim only if it carries this id.
        exit_status: the process's exit status (phase ``exited``).
    """

    flow_run_id: str
    pid: int | None
    start_ticks: int | None
    started_at: str
    phase: str = STARTED
    transition_id: str | None = None
    exit_status: int | None = None


class RunRecords:
    """The record file of one worker name; changes are serialised and atomic."""

    def __init__(self, worker_name: str, directory: str | Path | None = None) -> None:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", worker_name)
        self.path = Path(directory or default_state_dir()) / f"runs-{slug}.json"
        self._records: dict[str, RunRecord] = {}
        self._lock = trio.Lock()
        # Group commit: every change bumps the generation; one write covers all
        # the changes made before its snapshot was taken.
        self._generation = 0
        self._warned = False
        self._written = 0

    async def load(self) -> list[RunRecord]:
        """Read the records an earlier worker of this name left behind."""
        data = await trio.to_thread.run_sync(self._read)
        self._records = {r["flow_run_id"]: RunRecord(**r) for r in data}
        return list(self._records.values())

    def _read(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return []  # a torn file cannot happen with rename; a hand-edited one is ignored
        return data if isinstance(data, list) else []

    async def add(self, record: RunRecord) -> None:
        """Record a run (claimed, starting or started); return once the record is on disk.

        A record of the same run replaces the earlier one, keeping its claim's
        ``transition_id`` when the new one has none.
        """
        earlier = self._records.get(record.flow_run_id)
        if earlier is not None and record.transition_id is None:
            record = attrs.evolve(record, transition_id=earlier.transition_id)
        self._records[record.flow_run_id] = record
        self._generation += 1
        await self._save(self._generation)

    def get(self, flow_run_id: str) -> RunRecord | None:
        """The current record of a run, if any."""
        return self._records.get(flow_run_id)

    async def remove(self, flow_run_id: str) -> None:
        """Forget a process that has been reaped (or reconciled); return once on disk."""
        if self._records.pop(flow_run_id, None) is not None:
            self._generation += 1
            await self._save(self._generation)

    async def _save(self, generation: int) -> None:
        """Make sure a snapshot with every change up to ``generation`` is on disk.

        Writes are serialised; a caller whose change was taken into a write
        that finished while it waited for the lock returns without writing,
        so a burst of N changes costs a few writes (and fsyncs), not N.
        """
        async with self._lock:
            if self._written >= generation:
                return
            taken = self._generation
            snapshot = [attrs.asdict(r) for r in self._records.values()]
            try:
                await trio.to_thread.run_sync(self._write, snapshot)
            except OSError as exc:
                # The record only helps a later restart; a run must not fail
                # because the state directory cannot be written.
                if not self._warned:
                    self._warned = True
                    logger.warning(
                        "Cannot record started runs in %s (%s); a restarted worker will "
                        "not be able to reconcile them",
                        self.path,
                        exc,
                    )
                return
            self._written = taken

    def _write(self, snapshot: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as file:
            json.dump(snapshot, file)
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(self.path)

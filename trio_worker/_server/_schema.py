"""The embedded API's SQLite schema, as numbered migrations applied at start-up.

Columns exist for what the API filters, sorts or orchestrates on; everything a
response merely echoes lives in a JSON ``body`` column, so adding a Prefect
field never needs a migration. ``PRAGMA user_version`` records how many
migrations a database file has seen; start-up applies the rest in one
transaction, and refuses a file written by a newer trio-worker.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

_V1: Final = """
CREATE TABLE flows (
    id TEXT PRIMARY KEY, created TEXT NOT NULL, updated TEXT NOT NULL,
    name TEXT NOT NULL UNIQUE, tags TEXT NOT NULL, labels TEXT NOT NULL
);
CREATE TABLE work_pools (
    id TEXT PRIMARY KEY, created TEXT NOT NULL, updated TEXT NOT NULL,
    name TEXT NOT NULL UNIQUE, description TEXT, type TEXT NOT NULL,
    base_job_template TEXT NOT NULL, is_paused INTEGER NOT NULL, concurrency_limit INTEGER,
    default_queue_id TEXT, storage_configuration TEXT NOT NULL
);
CREATE TABLE work_queues (
    id TEXT PRIMARY KEY, created TEXT NOT NULL, updated TEXT NOT NULL,
    work_pool_id TEXT NOT NULL REFERENCES work_pools(id) ON DELETE CASCADE,
    name TEXT NOT NULL, description TEXT, is_paused INTEGER NOT NULL,
    concurrency_limit INTEGER, priority INTEGER NOT NULL, last_polled TEXT,
    UNIQUE (work_pool_id, name)
);
CREATE TABLE workers (
    id TEXT PRIMARY KEY, created TEXT NOT NULL, updated TEXT NOT NULL,
    work_pool_id TEXT NOT NULL REFERENCES work_pools(id) ON DELETE CASCADE,
    name TEXT NOT NULL, last_heartbeat_time TEXT NOT NULL,
    heartbeat_interval_seconds INTEGER, UNIQUE (work_pool_id, name)
);
CREATE TABLE deployments (
    id TEXT PRIMARY KEY, created TEXT NOT NULL, updated TEXT NOT NULL,
    flow_id TEXT NOT NULL REFERENCES flows(id) ON DELETE CASCADE,
    name TEXT NOT NULL, work_queue_id TEXT REFERENCES work_queues(id) ON DELETE SET NULL,
    concurrency_limit INTEGER, last_polled TEXT, body TEXT NOT NULL,
    UNIQUE (flow_id, name)
);
CREATE TABLE flow_runs (
    id TEXT PRIMARY KEY, created TEXT NOT NULL, updated TEXT NOT NULL,
    name TEXT NOT NULL, flow_id TEXT NOT NULL, deployment_id TEXT, work_queue_id TEXT,
    state_id TEXT, state_type TEXT, state_name TEXT, state TEXT,
    expected_start_time TEXT, next_scheduled_start_time TEXT,
    start_time TEXT, end_time TEXT, run_count INTEGER NOT NULL DEFAULT 0,
    total_run_time REAL NOT NULL DEFAULT 0, infrastructure_pid TEXT,
    idempotency_key TEXT, body TEXT NOT NULL
);
CREATE INDEX ix_flow_runs_scheduled ON flow_runs (state_type, next_scheduled_start_time);
CREATE INDEX ix_flow_runs_queue ON flow_runs (work_queue_id, state_type);
CREATE INDEX ix_flow_runs_deployment ON flow_runs (deployment_id, state_type);
CREATE UNIQUE INDEX ix_flow_runs_idempotency ON flow_runs (flow_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE TABLE flow_run_states (
    id TEXT PRIMARY KEY, flow_run_id TEXT NOT NULL, timestamp TEXT NOT NULL, body TEXT NOT NULL
);
CREATE INDEX ix_flow_run_states_run ON flow_run_states (flow_run_id, timestamp);
CREATE TABLE task_runs (
    id TEXT PRIMARY KEY, created TEXT NOT NULL, updated TEXT NOT NULL,
    name TEXT NOT NULL, flow_run_id TEXT, task_key TEXT NOT NULL, dynamic_key TEXT NOT NULL,
    state_id TEXT, state_type TEXT, state_name TEXT, state TEXT,
    deferred INTEGER NOT NULL DEFAULT 0, delivered INTEGER NOT NULL DEFAULT 0,
    expected_start_time TEXT, next_scheduled_start_time TEXT,
    start_time TEXT, end_time TEXT, run_count INTEGER NOT NULL DEFAULT 0,
    total_run_time REAL NOT NULL DEFAULT 0, body TEXT NOT NULL
);
CREATE INDEX ix_task_runs_queue ON task_runs (task_key, state_type, deferred, delivered);
CREATE INDEX ix_task_runs_flow_run ON task_runs (flow_run_id);
CREATE TABLE task_run_states (
    id TEXT PRIMARY KEY, task_run_id TEXT NOT NULL, timestamp TEXT NOT NULL, body TEXT NOT NULL
);
CREATE INDEX ix_task_run_states_run ON task_run_states (task_run_id, timestamp);
CREATE TABLE logs (
    id TEXT PRIMARY KEY, created TEXT NOT NULL, flow_run_id TEXT, task_run_id TEXT,
    timestamp TEXT NOT NULL, level INTEGER NOT NULL, body TEXT NOT NULL
);
CREATE INDEX ix_logs_flow_run ON logs (flow_run_id, timestamp);
CREATE TABLE variables (
    id TEXT PRIMARY KEY, created TEXT NOT NULL, updated TEXT NOT NULL,
    name TEXT NOT NULL UNIQUE, value TEXT NOT NULL, tags TEXT NOT NULL
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
    occurred TEXT NOT NULL, received TEXT NOT NULL, event TEXT NOT NULL, body TEXT NOT NULL
);
CREATE INDEX ix_events_occurred ON events (occurred);
"""

_V2: Final = """
DROP INDEX ix_task_runs_queue;
CREATE INDEX ix_task_runs_waiting ON task_runs (task_key, next_scheduled_start_time, created)
    WHERE state_type = 'SCHEDULED' AND deferred = 1 AND delivered = 0;
CREATE INDEX ix_task_runs_retrying ON task_runs (task_key, next_scheduled_start_time, created)
    WHERE state_type = 'SCHEDULED' AND deferred = 1 AND delivered = 0
    AND state_name = 'AwaitingRetry';
"""
"""The task-run queue reads the next waiting runs of a key in order from an index.

The partial indexes hold only waiting runs, so finding the next one costs the
same with ten or ten thousand runs queued, and a run leaving the queue costs
one index entry.
"""

_V3: Final = """
ALTER TABLE flow_runs ADD COLUMN heartbeat_at TEXT;
ALTER TABLE flow_runs ADD COLUMN holder TEXT;
ALTER TABLE flow_runs ADD COLUMN holder_since TEXT;
ALTER TABLE flow_runs ADD COLUMN holder_seen TEXT;
ALTER TABLE flow_runs ADD COLUMN claims_released INTEGER NOT NULL DEFAULT 0;
ALTER TABLE task_runs ADD COLUMN lease_holder TEXT;
ALTER TABLE task_runs ADD COLUMN lease_since TEXT;
ALTER TABLE task_runs ADD COLUMN lease_expires TEXT;
ALTER TABLE task_runs ADD COLUMN lease_lost_by TEXT;
ALTER TABLE task_runs ADD COLUMN lease_lapses INTEGER NOT NULL DEFAULT 0;
ALTER TABLE task_runs ADD COLUMN lapsed_run_count INTEGER NOT NULL DEFAULT 0;
CREATE INDEX ix_task_runs_lease ON task_runs (lease_expires) WHERE lease_holder IS NOT NULL;
"""
"""Liveness (``_liveness``): who holds a run, since when, and when it last said so.

Flow runs: ``heartbeat_at`` is the engine's last ``prefect.flow-run.heartbeat``;
``holder``/``holder_since``/``holder_seen`` the worker whose heartbeat lists
the run; ``claims_released`` counts PENDING claims given back. Task runs carry
the lease of the task worker they were delivered to.
"""

MIGRATIONS: Final[tuple[str, ...]] = (_V1, _V2, _V3)
"""Migration ``i`` takes a database from ``user_version`` i to i + 1."""

SCHEMA_VERSION: Final = len(MIGRATIONS)

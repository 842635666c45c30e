"""``PoolSync``: the worker's view of its pool, and its heartbeat.

Each heartbeat reads the pool (creating it when allowed, giving it a template
when it has none), warns once about what a person should fix (a pool of
another type, a given template that an existing pool ignores), and sends the
worker heartbeat with the runs in flight. The pool as last read is what the
submitter renders templates with and what ``/ready`` reports on.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

import attrs

from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import ConflictError, NotFoundError
from trio_worker._core._models import WorkPool

__all__ = ["PoolSync", "WarnOnce"]

logger = logging.getLogger("trio_worker.worker")

#: The most distinct warn-once keys remembered (keys may name runs).
WARNED_KEYS: Final = 1024


class WarnOnce:
    """Log a warning once per key; remembers a bounded number of keys.

    A key may name a run (a foreign run's cancellation), so the memory of what
    was said is bounded: after ``max_keys`` others, a key may warn again.
    """

    def __init__(self, log: logging.Logger, *, max_keys: int = WARNED_KEYS) -> None:
        self._log = log
        self._max_keys = max_keys
        self._warned: OrderedDict[str, None] = OrderedDict()

    def __call__(self, key: str, message: str, *args: object) -> None:
        """Warn ``message % args`` unless ``key`` was warned about recently."""
        if key in self._warned:
            self._warned.move_to_end(key)
            return
        self._warned[key] = None
        while len(self._warned) > self._max_keys:
            self._warned.popitem(last=False)
        self._log.warning(message, *args)

    def __len__(self) -> int:
        return len(self._warned)


class PoolSync:
    """Read (or create) the pool, keep it, and heartbeat.

    Args:
        client: the worker's open API client.
        work_pool_name: the pool served.
        worker_type: the worker's type (a new pool gets it).
        worker_name: named in the heartbeat.
        create_pool_if_not_found: create the pool when it does not exist.
        base_job_template: the template a new pool gets (None: the default).
        default_template: returns the worker type's default template.
        heartbeat_interval_seconds: sent with the heartbeat.
        in_flight: returns the ids of the runs in flight (sent with the heartbeat).
        warn_once: where one-time warnings go.
    """

    def __init__(
        self,
        client: PrefectClient,
        *,
        work_pool_name: str,
        worker_type: str,
        worker_name: str,
        create_pool_if_not_found: bool,
        base_job_template: Mapping[str, Any] | None,
        default_template: Callable[[], dict[str, Any]],
        heartbeat_interval_seconds: float,
        in_flight: Callable[[], Collection[Any]],
        warn_once: WarnOnce,
    ) -> None:
        self._client = client
        self._name = work_pool_name
        self._type = worker_type
        self._worker_name = worker_name
        self._create = create_pool_if_not_found
        self._template = dict(base_job_template) if base_job_template else None
        self._default_template = default_template
        self._interval = heartbeat_interval_seconds
        self._in_flight = in_flight
        self._warn_once = warn_once
        #: The pool as last read, or None while it is unknown.
        self.work_pool: WorkPool | None = None

    async def sync(self) -> None:
        """Read (or create) the pool, give it a template if it has none, and heartbeat."""
        client = self._client
        try:
            pool = await client.read_work_pool(self._name)
        except NotFoundError:
            if not self._create:
                self._warn_once(
                    "no-pool",
                    "Work pool %r not found and creating it is disabled; will look again",
                    self._name,
                )
                self.work_pool = None
                return
            template = self._template or self._default_template()
            try:
                pool = await client.create_work_pool(
                    self._name, type=self._type, base_job_template=template
                )
                logger.info("Created work pool %r of type %r", pool.name, pool.type)
            except ConflictError:  # another worker created it a moment ago
                pool = await client.read_work_pool(self._name)
        else:
            if self._template is not None:
                self._warn_once(
                    "template-ignored",
                    "Work pool %r already exists; the given base job template is ignored",
                    pool.name,
                )
        if not pool.base_job_template:
            template = self._default_template()
            await client.update_work_pool(pool.name, base_job_template=template)
            pool = attrs.evolve(pool, base_job_template=template)
        if pool.type != self._type:
            self._warn_once(
                "type-mismatch",
                "Work pool %r has type %r but this worker is of type %r; runs may not start",
                pool.name,
                pool.type,
                self._type,
            )
        if pool.is_paused and (self.work_pool is None or not self.work_pool.is_paused):
            logger.warning(
                "Work pool %r is paused: no runs will start until it is resumed", pool.name
            )
        self.work_pool = pool
        await client.send_worker_heartbeat(
            pool.name,
            self._worker_name,
            heartbeat_interval_seconds=self._interval,
            flow_run_ids=list(self._in_flight()),
        )

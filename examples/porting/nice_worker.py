"""A Prefect custom worker, ported: the ``nice`` worker runs each flow run under ``nice``.

The Prefect original is shown beside this port in docs/custom-worker.md
("Porting from Prefect"); the differences are the ones listed there: attrs
instead of pydantic, a ``prepare_for_flow_run`` that returns a new (frozen)
configuration instead of changing ``self``, and Trio's ``run_process`` in a
nursery instead of anyio's ``open_process``
(here through the public ``run_process_group``, which also stops the whole
process group on cancellation), and ``run(ctx, task_status)`` with a typed
``RunContext`` instead of ``run(flow_run, configuration, task_status)``. The
rest (``setup``, ``teardown``, ``get_flow_run_logger``, ``start()``, a
variables schema derived from the configuration) is used as in Prefect.
``tests/examples/test_porting.py`` runs it.
"""

from __future__ import annotations

import functools
import shlex
import sys
from typing import Any

import attrs
import trio

# --8<-- [start:port]
from trio_worker import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
    RunContext,
    format_infrastructure_pid,
    job_metadata,
    run_process_group,
)
from trio_worker.models import Deployment, Flow, FlowRun, WorkPool


@attrs.frozen(kw_only=True)
class NiceJobConfiguration(BaseJobConfiguration):
    niceness: int = attrs.field(
        default=10,
        metadata=job_metadata(title="Niceness", description="Added to the run's nice value."),
    )

    def prepare_for_flow_run(
        self,
        flow_run: FlowRun,
        deployment: Deployment | None = None,
        flow: Flow | None = None,
        work_pool: WorkPool | None = None,
        worker_name: str | None = None,
        **worker_part: Any,
    ) -> NiceJobConfiguration:
        prepared = super().prepare_for_flow_run(
            flow_run, deployment, flow, work_pool, worker_name, **worker_part
        )
        labels = prepared.labels | {"example.com/niceness": str(self.niceness)}
        return attrs.evolve(prepared, labels=labels)  # frozen: return a copy


class NiceWorker(BaseWorker[NiceJobConfiguration, BaseVariables]):
    type = "nice"
    job_configuration = NiceJobConfiguration  # the variables schema is derived from it

    async def setup(self) -> None:
        await super().setup()
        self.started_runs = 0

    async def run(
        self,
        ctx: RunContext[NiceJobConfiguration],
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> BaseWorkerResult:
        configuration = ctx.configuration  # typed: no isinstance needed
        command = shlex.split(configuration.command or "")
        argv = ["nice", "-n", str(configuration.niceness), *command]
        async with trio.open_nursery() as nursery:
            process = await nursery.start(
                functools.partial(
                    run_process_group,
                    argv,
                    grace_seconds=ctx.cancel_grace_seconds,
                    env=configuration.env,
                )
            )
            identifier = format_infrastructure_pid(process.pid)
            task_status.started(identifier)
            self.started_runs += 1
            ctx.logger.info("Started %s at niceness +%d", identifier, configuration.niceness)
        return BaseWorkerResult(identifier=identifier, status_code=process.returncode)

    def default_command(self) -> str:
        return shlex.join([sys.executable, "-m", "trio_worker.engine"])


# --8<-- [end:port]

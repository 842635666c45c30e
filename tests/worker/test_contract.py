"""The backend contract: a typed ``run(ctx)``, and the old ``run(flow_run, configuration)`` form."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import trio

from trio_worker import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult
from trio_worker._core._models import FlowRun
from trio_worker._core._settings import Settings
from trio_worker._worker._context import RunContext, RunLimits, run_logger

FLOW_RUN = FlowRun(id=uuid.uuid4(), name="run", flow_id=uuid.uuid4())


def _ctx() -> RunContext[BaseJobConfiguration]:
    return RunContext(
        flow_run=FLOW_RUN,
        configuration=BaseJobConfiguration(command="echo hi"),
        logger=run_logger(FLOW_RUN, worker_name="w"),
        limits=RunLimits(memory_limit_mb=64),
    )


async def test_run_receives_the_typed_context() -> None:
    seen: list[RunContext[BaseJobConfiguration]] = []

    class Typed(BaseWorker[BaseJobConfiguration, BaseVariables]):
        async def run(
            self,
            ctx: RunContext[BaseJobConfiguration],
            task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
        ) -> BaseWorkerResult:
            seen.append(ctx)
            task_status.started("here:1")
            return BaseWorkerResult("here:1", 0)

    worker = Typed("pool", settings=Settings(api_url="http://127.0.0.1:9/api"))
    ctx = _ctx()
    assert await worker._start_run(ctx, trio.TASK_STATUS_IGNORED) == BaseWorkerResult("here:1", 0)
    assert seen == [ctx]


async def test_run_of_the_old_form_still_works_with_a_deprecation_warning() -> None:
    calls: list[tuple[Any, ...]] = []
    with pytest.warns(DeprecationWarning, match=r"Old.run\(flow_run, configuration, task_status\)"):

        class Old(BaseWorker[BaseJobConfiguration, BaseVariables]):
            async def run(  # type: ignore[override]
                self,
                flow_run: FlowRun,
                configuration: Any,
                task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
            ) -> BaseWorkerResult:
                calls.append((flow_run, configuration))
                return BaseWorkerResult("here:2", 3)

    worker = Old("pool", settings=Settings(api_url="http://127.0.0.1:9/api"))
    ctx = _ctx()
    assert await worker._start_run(ctx, trio.TASK_STATUS_IGNORED) == BaseWorkerResult("here:2", 3)
    assert calls == [(FLOW_RUN, ctx.configuration)]


def test_a_subclass_that_keeps_the_typed_run_is_not_warned() -> None:
    class Child(BaseWorker[BaseJobConfiguration, BaseVariables]):
        pass

    assert not Child._legacy_run

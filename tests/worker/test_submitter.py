"""The submitter's claim: PENDING is proposed only for a run the worker may still start.

The API is another host (``httpx.MockTransport``) that records what it is asked.
"""

from __future__ import annotations

import httpx
import trio

from tests.worker.test_loops import loops_for
from tests.worker.test_reporter import a_run, mock_api, verdict
from trio_worker._core._models import SetStateStatus, StateType
from trio_worker._worker._metrics import WorkerMetrics
from trio_worker._worker._run_table import RunTable


async def test_a_run_handed_over_as_the_worker_is_cancelled_is_not_claimed() -> None:
    """A shutdown that cuts in before the claim leaves the run SCHEDULED for another worker.

    Once PENDING is proposed the claim is shielded (its answer must be read);
    before, nothing has happened yet: claiming the run only to report it
    CRASHED "shut down before the run finished" would end a run that never ran.
    """
    asked: list[str] = []

    async def api(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return verdict(SetStateStatus.ACCEPT, StateType.PENDING, request)

    table = RunTable(None, metrics=WorkerMetrics())
    async with mock_api(api) as client:
        with trio.fail_after(5):
            async with trio.open_nursery() as runs:
                loops = loops_for(client, runs, table)
                runs.cancel_scope.cancel()  # the worker is going away
                await runs.start(loops.submitter.submit, a_run())
    assert asked == []
    assert len(table) == 0

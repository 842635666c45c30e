"""The flow ``trio-worker demo`` deploys: it sleeps a little, then does as it is told.

It is a plain function, run by trio-worker's engine in its own process, so
the demo shows every path a real run can take: completing, failing with an
exception, crashing with a non-zero exit, and being cancelled while it runs.
"""

from __future__ import annotations

import logging
import os
import random
import time

logger = logging.getLogger(__name__)


def demo_flow(number: int, outcome: str = "complete", seconds: float = 1.0) -> int:
    """Work for about ``seconds``, then end as ``outcome`` says.

    Args:
        number: which run of the demo this is (shown in its logs).
        outcome: ``complete``, ``fail`` (raise), ``crash`` (exit 3) or
            ``cancel`` (run long enough to be cancelled).
        seconds: roughly how long to work.

    Returns:
        ``number`` squared, when it completes.
    """
    logger.info("demo run %d starting; it will %s", number, outcome)
    if outcome == "cancel":
        time.sleep(300)
    time.sleep(seconds * random.uniform(0.5, 1.5))
    if outcome == "fail":
        raise RuntimeError(f"demo run {number} failed on purpose")
    if outcome == "crash":
        os._exit(3)
    return number * number

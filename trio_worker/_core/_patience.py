"""Calls the worker cannot do without, kept going through an API outage.

The client already retries each request a few times (about half a minute in
all). That is right for a poll, which the next poll replaces, but not for the
answers a run's fate hangs on: the PENDING proposal that says whether this
worker owns a run, and the final state that says how it ended. Giving up on
those leaves a run PENDING or RUNNING with nobody behind it (anchors.md row
20). :func:`until_answered` repeats such a call for as long as its caller's
patience (and any enclosing deadline) allows, waiting by the one backoff policy
(:mod:`trio_worker._core._retry`), with jitter.

This module keeps the name its callers import; the loop lives in ``_retry``.
"""

from __future__ import annotations

from trio_worker._core._retry import (
    FIRST_PAUSE_SECONDS,
    LONGEST_PAUSE_SECONDS,
    UNTIL_ANSWERED,
    until_answered,
)

__all__ = ["FIRST_PAUSE_SECONDS", "LONGEST_PAUSE_SECONDS", "UNTIL_ANSWERED", "until_answered"]

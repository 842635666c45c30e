"""Keep httpx from loading its own command line into trio-worker's processes.

``import httpx`` also imports ``httpx._main`` (its ``httpx`` command) whenever
that module's imports succeed, i.e. whenever rich and pygments are installed;
trio-worker depends on rich for the commands that draw. That costs every
worker and every flow-run engine some 5 MB of RSS and a few tenths of a
second of start-up for a command line they never use. Marking the module as
absent before httpx is first imported makes httpx fall back to its stub.
Only process entry points call this (the CLI, the engine's ``__main__``):
importing trio_worker as a library changes nothing.
"""

from __future__ import annotations

import sys

__all__ = ["skip_httpx_cli"]


def skip_httpx_cli() -> None:
    """Make httpx skip importing its command line, if httpx is not imported yet."""
    if "httpx" not in sys.modules and "httpx._main" not in sys.modules:
        # None in sys.modules is the documented way to make an import fail.
        sys.modules["httpx._main"] = None  # type: ignore[assignment]

"""Start a command with its address space capped before its first instruction.

The memory ceiling (job variable ``memory_limit_mb``) must be in force before
the command runs at all: a cap set from the parent after the spawn loses the
race against a command that allocates at once (``dd bs=600M``). Setting it in
a pre-exec hook would run Python between fork and exec, which is unsafe while
other threads exist (trio's thread cache). So the command is started through
an exec wrapper that sets ``RLIMIT_AS`` on itself and then *execs* the command,
which inherits the limit and keeps the wrapper's pid (the run's infrastructure
pid and process group stay what they were):

- ``prlimit --as=N -- command...`` from util-linux when it is on the PATH
  (about 1 ms of start-up);
- otherwise the worker's own interpreter, ``python -I -S -c`` with a
  three-line program (about 15 ms).

Both exit 127 when the command is not found and 126 when it cannot be
executed, as a shell does, so the run's CRASHED message says why.
"""

from __future__ import annotations

import resource
import shutil
import sys
from collections.abc import Sequence
from typing import Final

__all__ = ["MEBIBYTE", "capped_command", "effective_limit"]

MEBIBYTE: Final = 1024 * 1024

#: Run by ``python -I -S -c`` with argv ``[limit_bytes, command, *args]``.
_WRAPPER: Final = """\
import os, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    sys.stderr.write(f"failed to execute {sys.argv[2]}: {exc.strerror}\\n")
    sys.exit(127 if isinstance(exc, FileNotFoundError) else 126)
"""


def effective_limit(limit_mb: int) -> int:
    """``limit_mb`` in bytes, lowered to the worker's own hard limit if that is smaller.

    An unprivileged process may not raise its hard limit, so asking for more
    than the worker has would fail the run instead of capping it.
    """
    wanted = limit_mb * MEBIBYTE
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        return min(wanted, hard)
    return wanted


def capped_command(
    command: Sequence[str], limit_bytes: int, *, prlimit: str | None = None
) -> list[str]:
    """The argv that runs ``command`` with ``RLIMIT_AS`` set to ``limit_bytes`` from the start.

    Args:
        command: the run's command (``command[0]`` is looked up on the child's PATH).
        limit_bytes: soft and hard address-space limit.
        prlimit: path of ``prlimit``; by default looked up on the worker's PATH.
            Pass ``""`` to force the Python wrapper.
    """
    if prlimit is None:
        prlimit = shutil.which("prlimit") or ""
    if prlimit:
        return [prlimit, f"--as={limit_bytes}", "--", *command]
    return [sys.executable, "-I", "-S", "-c", _WRAPPER, str(limit_bytes), *command]

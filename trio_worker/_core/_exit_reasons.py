"""Turn a process's exit status into one sentence a person can act on.

The sentence becomes the message of the run's CRASHED state, so it must say
what happened and, where we can tell, what to do about it.
"""

from __future__ import annotations

import signal
from typing import Final

__all__ = ["describe_exit"]

_HINTS: Final[dict[int, str]] = {
    1: "the flow run's process failed; see its logs for the traceback",
    2: "the command was used incorrectly (bad arguments?)",
    126: "the command is not executable: check its permissions",
    127: "the command was not found: check the job's `command` and the PATH",
}


_SIGNAL_NUMBERS: Final = frozenset(int(s) for s in signal.Signals)


def describe_exit(returncode: int) -> str:
    """Explain a non-zero ``returncode`` (negative = killed by that signal number).

    >>> describe_exit(3)
    'Flow run infrastructure exited with non-zero status code 3.'
    """
    # Negative: we saw the signal. 129-159: a shell reported its child's signal.
    number = -returncode if returncode < 0 else returncode - 128
    if returncode < 0 or number in _SIGNAL_NUMBERS:
        name = signal.Signals(number).name if number in _SIGNAL_NUMBERS else f"signal {number}"
        message = f"Flow run infrastructure was killed by {name} (exit status {returncode})."
        if number == signal.SIGKILL:
            message += (
                " SIGKILL often means the process ran out of memory (the kernel's OOM killer)"
                " or hit a memory limit."
            )
        elif number == signal.SIGTERM:
            message += " Something asked it to stop: a cancellation, a shutdown or an operator."
        return message
    message = f"Flow run infrastructure exited with non-zero status code {returncode}."
    hint = _HINTS.get(returncode)
    if hint:
        message += f" Likely cause: {hint}."
    return message

"""A plain Python function, deployed and run by trio-worker (see deploy.sh).

No decorator and no import of trio-worker: the engine imports this file, calls
the function with the flow run's parameters, and records COMPLETED, or FAILED
with the exception. What the function prints reaches the run's logs.
"""

from __future__ import annotations


# --8<-- [start:flow]
def greet(name: str = "world", times: int = 1, shout: bool = False) -> str:
    """Greet ``name`` ``times`` times; the arguments are the run's parameters."""
    greeting = f"Hello, {name}!"
    if shout:
        greeting = greeting.upper()
    for _ in range(times):
        print(greeting)
    return greeting


# --8<-- [end:flow]

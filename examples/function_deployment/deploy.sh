#!/usr/bin/env bash
# Deploy flows.py:greet, run it with parameters, and let a worker run it once.
# Needs PREFECT_API_URL (the line `trio-worker server start` prints).
set -euo pipefail
cd "$(dirname "$0")"

# --8<-- [start:pool]
trio-worker work-pool create greetings --type process
# --8<-- [end:pool]

# --8<-- [start:deploy]
trio-worker deployment create hello --pool greetings \
    --entrypoint flows.py:greet --param name=Ada
# --8<-- [end:deploy]

# --8<-- [start:run]
trio-worker deployment run greet/hello --param times=3
# --8<-- [end:run]

# --8<-- [start:worker]
trio-worker start --pool greetings --run-once
# --8<-- [end:worker]

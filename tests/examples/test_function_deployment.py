"""examples/function_deployment: the documented commands, run for real against the embedded API.

``deploy.sh`` is the exact sequence the quickstart shows (docs include it by
snippet), so if a command or flag changes, this test and the docs change together.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import trio

from tests.helpers import clean_env
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import FlowRun, StateType

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "function_deployment"


def _env(api_url: str) -> dict[str, str]:
    # The `trio-worker` script lives beside this interpreter (nox venv or dev venv).
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**clean_env(), "PREFECT_API_URL": api_url, "PATH": path}


async def _run(argv: list[str], api_url: str, cwd: Path) -> str:
    with trio.fail_after(120):
        done = await trio.run_process(
            argv, env=_env(api_url), cwd=cwd, capture_stdout=True, capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def _runs_by_state(api_url: str) -> dict[StateType, list[FlowRun]]:
    async with PrefectClient(api_url) as client:
        runs = await client.read_flow_runs()
    by_state: dict[StateType, list[FlowRun]] = {}
    for run in runs:
        assert run.state is not None
        by_state.setdefault(run.state.type, []).append(run)
    return by_state


async def test_deploy_script_then_more_runs_with_other_parameters(
    api_url: str, tmp_path: Path
) -> None:
    workdir = tmp_path / "function_deployment"
    shutil.copytree(EXAMPLE, workdir)
    out = await _run(["bash", str(workdir / "deploy.sh")], api_url, tmp_path)
    # The worker streams the flow's output; deployment and run parameters merged.
    assert out.count("Hello, Ada!") == 3, out
    (first,) = (await _runs_by_state(api_url))[StateType.COMPLETED]
    assert first.parameters == {"name": "Ada", "times": 3}
    logs = await _run(["trio-worker", "flow-run", "logs", str(first.id)], api_url, tmp_path)
    assert logs.count("Hello, Ada!") == 3, logs

    # Parameters given to `deployment run` override the deployment's; one that
    # does not fit the function fails that run (FAILED, with the exception).
    cli = ["trio-worker", "deployment", "run", "greet/hello"]
    await _run([*cli, "--param", "name=Grace", "--param", "shout=true"], api_url, workdir)
    await _run([*cli, "--param", "times=oops"], api_url, workdir)
    out = await _run(
        ["trio-worker", "start", "--pool", "greetings", "--run-once"], api_url, workdir
    )
    assert "HELLO, GRACE!" in out, out
    by_state = await _runs_by_state(api_url)
    assert len(by_state[StateType.COMPLETED]) == 2
    (failed,) = by_state[StateType.FAILED]
    assert failed.state is not None and "TypeError" in (failed.state.message or "")

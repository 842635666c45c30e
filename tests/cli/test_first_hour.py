"""What a newcomer meets in their first hour (issue 18): one test or more per point.

Every command runs as a user runs it, a ``python -m trio_worker`` subprocess
against a real embedded API; each test names the point of the issue it covers.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.cli.conftest import CliResult, RunCli
from tests.helpers import clean_env, wait_for
from tests.test_task_worker import EXAMPLE, Child, child_env, child_worker
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import StateType
from trio_worker._core._settings import Settings
from trio_worker._taskworker._tasks import Task
from trio_worker._taskworker._worker import TaskWorker

# -- point 1: `start` without PREFECT_API_URL says which API and database ------------------


def _embedded_env(tmp_path: Path) -> dict[str, str]:
    return {
        **clean_env(),
        "TRIO_WORKER_DB": str(tmp_path / "api.db"),
        "TRIO_WORKER_API_PORT": "0",
        "TRIO_WORKER_STATE_DIR": str(tmp_path / "state"),
    }


async def _run(*args: str, env: dict[str, str], cwd: Path | None = None) -> CliResult:
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "trio_worker", *args],
            env=env,
            cwd=cwd,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return CliResult(done.returncode, done.stdout.decode(), done.stderr.decode())


async def test_point1_start_without_api_url_names_the_api_and_database_first(
    tmp_path: Path,
) -> None:
    result = await _run("start", "-p", "solo", "--run-once", env=_embedded_env(tmp_path))
    assert result.returncode == 0, result
    first = result.stderr.splitlines()[0]
    assert "PREFECT_API_URL is not set; serving the embedded API at http://" in first
    assert f"(database {tmp_path / 'api.db'})" in first
    assert "set PREFECT_API_URL to use another API" in first


async def test_point1_start_help_says_what_happens_without_an_api_url() -> None:
    result = await _run("start", "--help", env=clean_env())
    text = " ".join(result.stdout.split())
    assert "Without PREFECT_API_URL" in text and "TRIO_WORKER_DB" in text


async def test_point1_a_second_api_on_the_same_database_is_refused(tmp_path: Path) -> None:
    env = _embedded_env(tmp_path)
    db = str(tmp_path / "api.db")
    server = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_worker", "server", "start", "--port", "0", "--db", db],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert server.stdout is not None
        seen = b""
        with trio.fail_after(30):
            while b"\n" not in seen:
                seen += await server.stdout.receive_some(4096)
        url = seen.decode().splitlines()[0].removeprefix("export PREFECT_API_URL=")
        worker = await _run("start", "-p", "solo", "--run-once", env=env)
        worker.assert_one_line_error(f"database {db} is already served by the API at {url}")
        assert f"export PREFECT_API_URL={url}" in worker.stderr
        second = await _run("server", "start", "--port", "0", "--db", db, env=env)
        second.assert_one_line_error("already served by the API at")
        # On the port it looks at, `start` uses that API, and says so first.
        port = url.split(":")[2].split("/")[0]
        reuse = await _run(
            "start", "-p", "solo", "--run-once", env={**env, "TRIO_WORKER_API_PORT": port}
        )
        assert reuse.returncode == 0, reuse
        first = reuse.stderr.splitlines()[0]
        assert f"using the API already running at {url} (database {db})" in first
    finally:
        server.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            assert await server.wait() == 0


# -- point 10: "did you mean" for commands, and Prefect's habits ----------------------------


async def test_point10_a_top_level_typo_gets_a_suggestion() -> None:
    result = await _run("strat", env=clean_env())
    result.assert_usage_error("No such command 'strat'. Did you mean 'start'?")
    nested = await _run("deployment", "crate", env=clean_env())
    nested.assert_usage_error("Did you mean 'create'?")


async def test_point10_prefect_worker_start_points_at_start() -> None:
    result = await _run("worker", "start", "--pool", "p", env=clean_env())
    result.assert_usage_error("trio-worker start --pool NAME")


# -- point 12: one exit-status convention -------------------------------------------------


async def test_point12_usage_errors_exit_2_failures_exit_1(run_cli: RunCli) -> None:
    (await run_cli("start", "--pol", "x")).assert_usage_error("Did you mean '--pool'?")
    (await run_cli("deployment", "run")).assert_usage_error("Missing argument")
    (await run_cli("deployment", "run", "d", "--param", "x")).assert_usage_error("KEY=VALUE")
    (await run_cli("deployment", "inspect", "nope")).assert_one_line_error("not found")


async def test_point12_an_api_url_without_its_path_names_the_fix(run_cli: RunCli) -> None:
    result = await run_cli("work-pool", "ls", env={"PREFECT_API_URL": "http://127.0.0.1:4200"})
    result.assert_one_line_error("has no path; the API is under /api: http://127.0.0.1:4200/api")


async def test_point12_ctrl_c_is_one_line_and_status_130() -> None:
    # A command blocked on an API that never answers (a socket that accepts
    # and stays silent) is interrupted the way a person does it.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        env: dict[str, Any] = {**clean_env(), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_worker", "work-pool", "ls"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        with trio.fail_after(30):
            # Wait until the command is connected (it then waits for an answer).
            connection, _ = await trio.to_thread.run_sync(silent.accept)
            process.send_signal(signal.SIGINT)
            code = await process.wait()
            connection.close()
        assert process.stderr is not None
        err = (await process.stderr.receive_some(65536)).decode()
    assert code == 130
    assert err.strip().splitlines() == ["Interrupted."]


# -- point 8: `deployment create` reads the function's definition, without importing it ----

FLOWS = (
    "import sys\n"
    "print('imported!', file=sys.stderr)\n"  # never printed: the CLI does not import it
    "def hello(name='world', times=1):\n"
    "    print(f'hello {name}' * times)\n"
    "def broken():\n"
    "    raise ValueError('on purpose')\n"
)


async def _deploy(run_cli: RunCli, client: PrefectClient, tmp_path: Path, *extra: str) -> CliResult:
    (tmp_path / "flows.py").write_text(FLOWS)
    if not await client.read_work_pools():
        await client.create_work_pool("my-pool", type="process")
    return await run_cli(
        "deployment", "create", "hello", "--pool", "my-pool", "--entrypoint", *extra
    )


async def test_point8_create_refuses_a_function_the_file_does_not_define(
    run_cli: RunCli, client: PrefectClient, tmp_path: Path
) -> None:
    result = await _deploy(run_cli, client, tmp_path, "flows.py:helo")
    result.assert_usage_error("flows.py has no function 'helo'. Did you mean 'hello'?")
    assert "imported!" not in result.stderr
    assert await client.read_deployments() == []
    created = await _deploy(run_cli, client, tmp_path, "flows.py:hello")
    assert created.returncode == 0, created
    assert "imported!" not in created.stderr


async def test_point8_11_run_refuses_a_parameter_the_flow_does_not_take(
    run_cli: RunCli, client: PrefectClient, tmp_path: Path
) -> None:
    assert (await _deploy(run_cli, client, tmp_path, "flows.py:hello")).returncode == 0
    result = await run_cli("deployment", "run", "hello/hello", "--param", "nme=trio")
    result.assert_usage_error(
        "the flow has no parameter 'nme'. Did you mean 'name'?", "(accepted: name, times)"
    )
    assert await client.read_flow_runs() == []
    fine = await run_cli("deployment", "run", "hello/hello", "--param", "name=trio")
    assert fine.returncode == 0, fine


async def test_point8_a_function_gone_at_run_time_is_failed_not_crashed(
    run_cli: RunCli, client: PrefectClient, tmp_path: Path
) -> None:
    (tmp_path / "flows.py").write_text(FLOWS)
    await client.create_work_pool("my-pool", type="process")
    created = await run_cli(
        "deployment", "create", "broken", "--pool", "my-pool", "--entrypoint", "flows.py:broken"
    )
    assert created.returncode == 0, created
    # The file changes after the deployment: the engine records FAILED and exits 1.
    (tmp_path / "flows.py").write_text(FLOWS.replace("def broken", "def renamed"))
    assert (await run_cli("deployment", "run", "broken/broken")).returncode == 0
    worker = await run_cli("start", "--pool", "my-pool", "--run-once")
    assert worker.returncode == 0, worker
    (run,) = await client.read_flow_runs()
    assert run.state is not None and run.state.type is StateType.FAILED
    assert "ended FAILED" in worker.stderr
    assert "crashed" not in worker.stderr.lower()
    assert "CRASHED" not in worker.stderr


# -- point 11: mistyped pools and worker types -------------------------------------------


async def test_point11_start_on_a_mistyped_pool_suggests_the_existing_one(
    run_cli: RunCli, client: PrefectClient
) -> None:
    await client.create_work_pool("my-pool", type="process")
    result = await run_cli("start", "--pool", "my-pol", "--run-once")
    # A daemon goes on (a new pool of a family such as etl-1, etl-2 is no typo),
    # but the close name is on a WARNING line of its own, before anything else.
    assert result.returncode == 0, result
    assert "WARNING" in result.stderr
    assert "Work pool 'my-pol' not found. Did you mean 'my-pool'?" in result.stderr
    assert sorted(p.name for p in await client.read_work_pools()) == ["my-pol", "my-pool"]


async def test_point11_start_on_a_new_pool_says_it_creates_it(run_cli: RunCli) -> None:
    result = await run_cli("start", "--pool", "fresh", "--run-once")
    assert result.returncode == 0, result
    assert "Work pool 'fresh' does not exist yet: the worker creates it." in result.stderr


async def test_point11_work_pool_create_with_a_mistyped_type(
    run_cli: RunCli, client: PrefectClient
) -> None:
    result = await run_cli("work-pool", "create", "p", "--type", "procss")
    result.assert_usage_error("--type 'procss' is not an installed worker type.", "'process'")
    assert await client.read_work_pools() == []
    # A type served by workers elsewhere is fine; -t is the short form.
    elsewhere = await run_cli("work-pool", "create", "k", "-t", "kubernetes")
    assert elsewhere.returncode == 0, elsewhere


# -- point 13: the same flags spelled the same way ----------------------------------------


async def test_point13_help_is_consistent() -> None:
    env = clean_env()
    flow_runs = (await _run("flow-run", "ls", "--help", env=env)).stdout
    task_runs = (await _run("task-run", "ls", "--help", env=env)).stdout
    assert "-s, --state" in flow_runs and "-s, --state" in task_runs
    create = (await _run("deployment", "create", "--help", env=env)).stdout
    start = (await _run("start", "--help", env=env)).stdout
    assert "-q, --work-queue" in create and "-q, --work-queue" in start
    pool = (await _run("work-pool", "create", "--help", env=env)).stdout
    assert "-t, --type" in pool
    flat = " ".join(start.split())
    assert "[default: (unlimited)" in flat
    assert "[default: (10, or PREFECT_WORKER_PREFETCH_SECONDS)]" in flat
    inspect = (await _run("task-run", "inspect", "--help", env=env)).stdout
    assert "an id or a run name" in inspect


# -- point 15: delete, and results where they are stored -----------------------------------


async def test_point15_delete_a_flow_run_a_deployment_and_a_pool(
    run_cli: RunCli, client: PrefectClient, tmp_path: Path
) -> None:
    assert (await _deploy(run_cli, client, tmp_path, "flows.py:hello")).returncode == 0
    assert (await run_cli("deployment", "run", "hello/hello")).returncode == 0
    (run,) = await client.read_flow_runs()
    deleted = await run_cli("flow-run", "delete", run.name)
    assert deleted.returncode == 0, deleted
    assert f"Deleted flow run {run.name!r}" in deleted.stdout
    assert await client.read_flow_runs() == []
    assert (await run_cli("deployment", "delete", "hello/hello")).returncode == 0
    assert await client.read_deployments() == []
    assert (await run_cli("work-pool", "delete", "my-pool", "--yes")).returncode == 0
    assert await client.read_work_pools() == []
    again = await run_cli("work-pool", "delete", "my-pool")
    again.assert_one_line_error("work pool 'my-pool' not found")


async def test_point15_task_run_inspect_shows_the_result_value(
    api_url: str,
    run_cli: RunCli,
    client: PrefectClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRIO_WORKER_TASK_STORAGE", str(tmp_path / "store"))
    add = Task(_add, key="first-hour-add")
    worker = TaskWorker(add, settings=Settings(api_url=api_url))
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.start)
        handle = await add.enqueue(client, (40, 2))
        await wait_for(
            lambda: _completed(client, handle.task_run_id), what="the task run completes"
        )
        nursery.cancel_scope.cancel()
    run = await client.read_task_run(handle.task_run_id)
    for ref in (str(run.id), run.name):
        shown = await run_cli("task-run", "inspect", ref)
        assert shown.returncode == 0, shown
        assert "result:" in shown.stdout
        (line,) = [ln for ln in shown.stdout.splitlines() if ln.startswith("result:")]
        assert line.split()[-1] == "42"


def _add(x: int, y: int) -> int:
    return x + y


async def _completed(client: PrefectClient, run_id: uuid.UUID) -> bool:
    run = await client.read_task_run(run_id)
    return run.state is not None and run.state.type is StateType.COMPLETED


# -- points 5, 6, 7: the task worker's Ctrl-C, output and start-up -------------------------


async def _submit_example(api_url: str, tmp_path: Path) -> None:
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, str(EXAMPLE / "submit.py")],
            env=child_env(api_url, tmp_path),
            cwd=EXAMPLE,
            capture_stdout=True,
        )
    assert done.stdout.decode().splitlines() == ["add: 42", "slugify: hello-background-tasks"]


async def _interrupt(child: Child) -> tuple[int, str]:
    child.process.send_signal(signal.SIGINT)
    with trio.fail_after(30):
        code = await child.process.wait()
    assert child.process.stderr is not None
    async for chunk in child.process.stderr:
        child.output += chunk.decode(errors="replace")
    return code, child.output


async def test_point5_ctrl_c_on_the_example_script_is_one_line(
    api_url: str, tmp_path: Path
) -> None:
    script = [sys.executable, str(EXAMPLE / "serve.py")]
    async with child_worker(api_url, tmp_path, command=script, cwd=EXAMPLE) as child:
        await _submit_example(api_url, tmp_path)
        code, output = await _interrupt(child)
    assert code == 130
    assert "Traceback" not in output and "ExceptionGroup" not in output
    assert output.strip().splitlines()[-1] == "Stopped."


async def test_point6_the_task_worker_says_one_line_per_run_and_no_http(
    api_url: str, tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "trio_worker", "task-worker", "serve"]
    args = ("tasks:add", "tasks:slugify")
    async with child_worker(api_url, tmp_path, *args, command=command, cwd=EXAMPLE) as child:
        await _submit_example(api_url, tmp_path)
        await child.wait_for_line("tasks.slugify 'slugify' COMPLETED in")
        await child.wait_for_line("tasks.add 'add' COMPLETED in")
        code, output = await _interrupt(child)
    assert code == 0, output
    assert output.count("subscribed to") == 1
    assert "HTTP Request" not in output
    assert "Traceback" not in output


async def test_point7_the_task_worker_fails_fast_on_an_unreachable_api(tmp_path: Path) -> None:
    env = {
        **child_env("http://127.0.0.1:9/api", tmp_path),
        "PREFECT_CLIENT_MAX_RETRIES": "0",
    }
    result = await _run("task-worker", "serve", "tasks:add", env=env, cwd=EXAMPLE)
    result.assert_one_line_error("ConnectError", "is the API at PREFECT_API_URL running?")


async def test_point12_a_task_that_cannot_be_imported_names_the_parameter(
    tmp_path: Path,
) -> None:
    env = child_env("http://127.0.0.1:9/api", tmp_path)
    result = await _run("task-worker", "serve", "tasks:ad", env=env, cwd=EXAMPLE)
    result.assert_usage_error("MODULE:TASK", "no function or task 'ad'. Did you mean 'add'?")
    missing = await _run("task-worker", "serve", "taskz:add", env=env, cwd=EXAMPLE)
    missing.assert_usage_error("MODULE:TASK", "cannot import 'taskz'")


# -- point 14: one log format, the run's name on its output, a drain that says what it does --

#: The worker's line format (trio_worker._core._logging.TEXT_FORMAT), e.g.
#: ``2026-12-04 17:34:28,725 INFO trio_worker.flow_runs: ...``.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")


async def test_point14_one_log_format_and_run_names_on_streamed_output(
    run_cli: RunCli, client: PrefectClient, tmp_path: Path
) -> None:
    assert (await _deploy(run_cli, client, tmp_path, "flows.py:hello")).returncode == 0
    assert (await run_cli("deployment", "run", "hello/hello", "--count", "2")).returncode == 0
    worker = await run_cli("start", "--pool", "my-pool", "--limit", "2", "--run-once")
    assert worker.returncode == 0, worker
    names = sorted(r.name for r in await client.read_flow_runs())
    assert sorted(line.split(" | ")[0] for line in worker.stdout.splitlines()) == names
    assert all(line.endswith(" | hello world") for line in worker.stdout.splitlines())
    for line in worker.stderr.splitlines():
        prefix, sep, rest = line.partition(" | ")
        if sep and prefix in names:
            # A run's stderr: what flows.py printed there, and the engine's own
            # lines in the worker's format.
            assert rest == "imported!" or LOG_LINE.match(rest), line
        else:
            assert LOG_LINE.match(line), line


async def test_point14_the_drain_says_what_it_waits_for_and_what_it_cut_short(
    api_url: str, run_cli: RunCli, client: PrefectClient, tmp_path: Path
) -> None:
    (tmp_path / "flows.py").write_text(
        "import time\ndef slow():\n    print('working', flush=True)\n    time.sleep(120)\n"
    )
    await client.create_work_pool("my-pool", type="process")
    created = await run_cli(
        "deployment", "create", "slow", "--pool", "my-pool", "--entrypoint", "flows.py:slow"
    )
    assert created.returncode == 0, created
    assert (await run_cli("deployment", "run", "slow/slow")).returncode == 0
    (run,) = await client.read_flow_runs()
    env = {**clean_env(), "PREFECT_API_URL": api_url, "PREFECT_WORKER_QUERY_SECONDS": "0.2"}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_worker", "start", "-p", "my-pool", "--drain-timeout", "0.5"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    seen = b""
    with trio.fail_after(60):
        while f"{run.name} | working".encode() not in seen:
            seen += await process.stdout.receive_some(4096)
        process.send_signal(signal.SIGINT)
        err = b"".join([chunk async for chunk in process.stderr]).decode()
        assert await process.wait() == 0
    assert f"Draining: waiting up to 0.5 s for 1 run(s) to finish: '{run.name}'" in err
    assert "Drain timeout (0.5 s) reached: stopping 1 run(s) still going" in err
    assert f"Flow run '{run.name}' cut short: Worker" in err
    done = await client.read_flow_run(run.id)
    assert done.state is not None and done.state.type is StateType.CRASHED


async def test_point12_a_group_alone_shows_its_help_not_an_error() -> None:
    for args in ((), ("deployment",)):
        result = await _run(*args, env=clean_env())
        assert result.returncode == 2, result  # click's status for a missing command
        assert result.stderr.startswith("Usage: trio-worker"), result
        assert "Commands:" in result.stderr and "Error" not in result.stderr

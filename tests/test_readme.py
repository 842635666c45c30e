"""The README's commands are the ones CI runs and the ones tests type, so the first page never lies."""

from __future__ import annotations

import re
from pathlib import Path

from tests.shell import BIN_DIR, bash_blocks, free_port, run_block, shell_env

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    test_command = bash_blocks(README)[1].strip()
    assert "nox" in test_command
    ci_lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert test_command in ci_lines


def test_readme_first_command_runs_the_demo() -> None:
    first = bash_blocks(README)[0].strip()
    assert first.endswith(".venv/bin/trio-worker demo")
    assert "python3 -m venv .venv" in first and "pip install ." in first


async def test_readme_tour_runs_verbatim_after_the_install_command(tmp_path: Path) -> None:
    # The install command made .venv in the clone; here .venv/bin/activate puts
    # this test's interpreter (where trio-worker is installed) on the PATH.
    activate = tmp_path / ".venv" / "bin" / "activate"
    activate.parent.mkdir(parents=True)
    activate.write_text(f'export PATH="{BIN_DIR}:$PATH"\n')
    port = free_port()
    env = shell_env(tmp_path, TRIO_WORKER_API_PORT=str(port))
    env["PATH"] = "/usr/bin:/bin"  # no trio-worker until the tour's activation line
    name_of_a_run = (
        '"$(trio-worker flow-run ls --json | '
        'python -c \'import json, sys; print(json.load(sys.stdin)[0]["name"])\')"'
    )
    result = await run_block(
        bash_blocks(README)[2],
        cwd=tmp_path,
        env=env,
        substitute={"127.0.0.1:4200": f"127.0.0.1:{port}", "<run name>": name_of_a_run},
    )
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("| hello trio") == 3  # each run's output, under its name
    assert "INFO trio_worker.flow_runs.print: hello trio" in result.stdout  # one run's logs
    assert result.stdout.count(" Completed ") == 3


async def test_readme_task_worker_block_runs_verbatim(api_url: str, tmp_path: Path) -> None:
    result = await run_block(
        bash_blocks(README)[3], cwd=ROOT, env=shell_env(tmp_path, PREFECT_API_URL=api_url)
    )
    assert result.returncode == 0, result.stdout
    assert "add: 42" in result.stdout
    assert "slugify: hello-background-tasks" in result.stdout
    assert "Traceback" not in result.stdout


def test_readme_links_resolve() -> None:
    links = re.findall(r"\]\(([^)#]+)\)", README)
    assert links
    for link in links:
        if "://" not in link:
            assert (ROOT / link).is_file(), link

"""``start --install-policy``: a worker type reaches pip only as a plain package name.

The type may come from the API (the pool's ``type``), so whoever can create a
pool chooses it. ``python -m pip`` is shadowed here by a stand-in on
``PYTHONPATH`` that records its arguments, so the tests see exactly what pip
would have been asked, without installing anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.conftest import RunCli
from trio_worker._cli._registry import worker_type_package
from trio_worker._core._exceptions import ConfigurationError

FAKE_PIP = """
import json, os, sys
with open(os.environ["FAKE_PIP_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(1)
"""

REFUSED = [
    "x @ file:///tmp/evil",
    "x@https://evil.example/x.whl",
    "--index-url=https://evil.example/simple",
    "-e",
    "x; sys_platform == 'linux'",
    "../evil",
    "a/b",
    "a b",
    "x\ny",
    "",
    "-x",
    "x-",
    "x" * 101,
]


@pytest.mark.parametrize("type_name", REFUSED)
def test_only_plain_names_make_a_package(type_name: str) -> None:
    with pytest.raises(ConfigurationError, match="is not a package name"):
        worker_type_package(type_name)


@pytest.mark.parametrize("type_name", ["kubernetes", "k8s", "my_type", "a.b-c", "X1"])
def test_plain_names_make_trio_worker_packages(type_name: str) -> None:
    assert worker_type_package(type_name) == f"trio-worker-{type_name}"


def _fake_pip(tmp_path: Path) -> tuple[dict[str, str], Path]:
    package = tmp_path / "fakepip" / "pip"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(FAKE_PIP)
    log = tmp_path / "pip-calls.jsonl"
    return {"PYTHONPATH": str(package.parent), "FAKE_PIP_LOG": str(log)}, log


@pytest.mark.parametrize(
    "type_name", ["x @ file:///tmp/evil", "--index-url=https://evil.example/simple"]
)
async def test_a_type_that_is_not_a_name_is_refused_before_pip_runs(
    run_cli: RunCli, tmp_path: Path, type_name: str
) -> None:
    env, log = _fake_pip(tmp_path)
    result = await run_cli(
        "start", "-p", "p", "--type", type_name, "--install-policy", "always", env=env
    )
    result.assert_one_line_error("is not a package name", "refusing to install")
    assert not log.exists(), log.read_text()


async def test_a_plain_type_is_handed_to_pip_as_that_one_package(
    run_cli: RunCli, tmp_path: Path
) -> None:
    env, log = _fake_pip(tmp_path)
    result = await run_cli(
        "start", "-p", "p", "--type", "acme", "--install-policy", "always", env=env
    )
    assert result.returncode == 1
    assert "could not install trio-worker-acme" in result.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls == [["install", "trio-worker-acme"]]

"""The README's commands are the ones CI runs, so the first page never lies."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL)]


def test_ci_runs_the_readme_test_command() -> None:
    readme_blocks = _bash_blocks((ROOT / "README.md").read_text())
    test_command = readme_blocks[1]
    assert "nox" in test_command
    ci_lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert test_command in ci_lines


def test_readme_first_command_runs_the_demo() -> None:
    first = _bash_blocks((ROOT / "README.md").read_text())[0]
    assert first.endswith("trio-worker demo")
    assert "pip install ." in first

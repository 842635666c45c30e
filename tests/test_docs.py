"""The docs read completely where people read them: generated content is committed, and fresh.

Reference tables and example code live in the Markdown itself (so the pages
read on the code host, not only in the built site); ``docs/_hooks/generate.py``
refreshes them from the code and ``examples/``. A page that fell behind fails here.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).parents[1]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs/_hooks/generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_pages_are_fresh() -> None:
    stale = _generator().stale_pages(write=False)
    assert stale == [], f"run `python docs/_hooks/generate.py` to refresh {stale}"


def test_no_page_depends_on_the_site_build_to_show_its_content() -> None:
    for page in sorted((ROOT / "docs").rglob("*.md")):
        text = page.read_text()
        assert "--8<--" not in text, page  # a snippet include shows as a marker on the code host
        assert ":::" not in text, page  # a plugin directive shows as itself
        for marker in re.findall(r"<!-- generated: ([\w-]+) -->", text):
            assert f"<!-- end: {marker} -->" in text, (page, marker)


def test_example_blocks_equal_the_example_files() -> None:
    generator = _generator()
    blocks = 0
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for spec, code in re.findall(
            r"<!-- from: (\S+) -->\n```[^\n]*\n(.*?)^```$", page.read_text(), re.DOTALL | re.M
        ):
            assert code == generator.example_text(spec), (page, spec)
            blocks += 1
    assert blocks >= 14


def test_a_stale_page_is_detected(tmp_path: Path) -> None:
    generator = _generator()
    page = (ROOT / "docs" / "reference" / "cli.md").read_text()
    assert generator.refresh("reference/cli.md", page) == page
    edited = page.replace("Show trio-worker at work", "Show it at work", 1)
    assert generator.refresh("reference/cli.md", edited) != edited


def test_architecture_names_only_files_that_exist() -> None:
    # docs/architecture.md names the owner of every behaviour by its path under
    # trio_worker/; a path that no longer exists is a drawing that drifted.
    text = (ROOT / "docs" / "architecture.md").read_text()
    paths = set(re.findall(r"(?<![\w./])(_[a-z]+/(?:_[a-z_]+\.py)?)", text))
    assert len(paths) >= 30, paths
    missing = sorted(path for path in paths if not (ROOT / "trio_worker" / path).exists())
    assert missing == [], missing

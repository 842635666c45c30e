"""What a warm-start zygote was made from, compared with the present before each fork."""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import pytest

from trio_worker._process._zygote_image import (
    ImageCheck,
    ZygoteImage,
    environ_digest,
    executable_identity,
)


def _image(source: Path, **changes: object) -> ZygoteImage:
    st = source.stat()
    image = ZygoteImage(
        preload=("mod",),
        environ=environ_digest(os.environ),
        executable=executable_identity(),
    ).with_sources([[str(source), st.st_size, st.st_mtime_ns]])
    return attrs.evolve(image, **changes)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "mod.py"
    path.write_text("X = 1\n")
    return path


def test_an_unchanged_image_has_no_difference(source: Path) -> None:
    assert _image(source).difference(("mod",), environ_digest(os.environ)) is None


def test_each_kind_of_change_is_named(source: Path) -> None:
    current = environ_digest(os.environ)
    assert _image(source).difference(("other",), current) == "the preload list changed"
    changed_env = environ_digest({**os.environ, "NEW": "1"})
    assert _image(source).difference(("mod",), changed_env) == "the worker's environment changed"
    moved = _image(source, executable=(0, 0, 0, 0))
    assert moved.difference(("mod",), current) is not None
    assert "interpreter" in str(moved.difference(("mod",), current))
    image = _image(source)
    source.write_text("X = 22\n")
    assert image.difference(("mod",), current) == f"{source} changed"
    source.unlink()
    assert image.difference(("mod",), current) == f"{source} is gone"


def test_a_malformed_sources_report_is_ignored(source: Path) -> None:
    image = _image(source).with_sources([["only-a-path"], "junk"])
    assert image.sources == {}


async def test_a_found_change_stays_found(source: Path) -> None:
    check = ImageCheck(_image(source))
    assert await check.changed(("mod",)) is None
    source.write_text("X = 333\n")
    assert await check.changed(("mod",)) == f"{source} changed"
    source.write_text("X = 1\n")  # same size again, but the zygote's copy is still old
    assert await check.changed(("mod",)) == f"{source} changed"

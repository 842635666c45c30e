"""What a warm-start zygote was made from (compared with the present before each fork),
and what it prepares once for every run (the API client's SSL context)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import attrs
import certifi
import pytest

from trio_worker._client._client import PrefectClient
from trio_worker._core._settings import Settings
from trio_worker._process._zygote_image import (
    ImageCheck,
    ZygoteImage,
    environ_digest,
    executable_identity,
)
from trio_worker._process._zygote_prepare import prepare_ssl_context


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


def test_the_zygote_prepares_one_ssl_context_for_runs_with_its_tls_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Built once in the zygote (loading a CA bundle costs tens of ms per run);
    # a run with other TLS settings builds its own; the bundle is watched.
    bundle = tmp_path / "ca.pem"
    bundle.write_text(Path(certifi.where()).read_text())
    monkeypatch.setenv("PREFECT_API_SSL_CERT_FILE", str(bundle))
    context_for, watched = prepare_ssl_context()
    assert watched == [str(bundle)]
    context = context_for(Settings(ssl_cert_file=str(bundle)))
    assert isinstance(context, ssl.SSLContext)
    assert context_for(Settings(ssl_cert_file=str(bundle))) is context
    assert context_for(Settings()) is None
    assert context_for(Settings(ssl_cert_file=str(bundle), tls_insecure_skip_verify=True)) is None
    client = PrefectClient("https://api.example/api", ssl_context=context)
    assert client.ssl_context is context
    assert PrefectClient("http://api.example/api", ssl_context=context).ssl_context is None


def test_a_zygote_whose_tls_settings_are_unusable_prepares_no_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    context_for, watched = prepare_ssl_context()
    assert watched == []
    assert context_for(Settings(ssl_cert_file=str(tmp_path / "missing.pem"))) is None

"""What the warm-start zygote does once, before its first fork, so that no run does it.

Every run forked from the zygote shares what is done here, and each thing
done here is something a warm child used to do on its own, paying in CPU
before the user's first line and in private memory (measured in
docs/performance.md, "Warm start"): importing the engine, httpx's lazy
imports, Prefect's engine modules and the operator's ``--preload`` list;
building the API client's SSL context; the converter's first use. It also
lists the source files behind all of it, which the worker compares with the
disk before each fork (:mod:`trio_worker._process._zygote_image`).
"""

from __future__ import annotations

import importlib
import os
import sys
import sysconfig
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import ssl

    from trio_worker._core._settings import Settings

__all__ = [
    "BASE_MODULES",
    "OPTIONAL_MODULES",
    "SslContextFor",
    "preload",
    "prepare_converter",
    "prepare_ssl_context",
    "sources",
]

#: The zygote's SSL context for a run's settings, when it fits them (else None).
SslContextFor = Callable[["Settings"], "ssl.SSLContext | None"]

#: Modules imported before any request: the engine and what it imports, including
#: what httpx and trio import lazily on a client's first use (httpx imports
#: httpcore, h11 and h2 when a transport is made, httpcore its Trio backend on the
#: first connection, the socket layer the IDNA codec): measured at 50-70 ms of
#: every warm run's CPU when left to the child.
BASE_MODULES: Final = (
    "trio_worker._engine._run",
    "trio_worker._client._client",
    "trio_worker.models",
    "httpcore",
    "httpcore._backends.trio",
    "encodings.idna",
)
#: Imported when installed, so a Prefect ``@flow`` does not pay for it per run:
#: Prefect itself, and what its engine and ``from prefect import flow`` import
#: lazily on a run's way to the user's code (measured at about 0.2 s of each warm
#: ``@flow`` run's CPU when left to the child).
OPTIONAL_MODULES: Final = (
    "prefect",
    "prefect.engine",
    "prefect.main",
    "prefect.flow_engine",
    "prefect.flow_runs",
    "prefect.runtime.flow_run",
    "prefect.input.run_input",
    "prefect.telemetry.run_telemetry",
    "prefect.logging.formatters",
    "anyio._backends._asyncio",
)


def preload(modules: Sequence[str]) -> list[str]:
    """Import ``modules``; return one line per module that failed (the zygote still serves)."""
    for name in BASE_MODULES:
        importlib.import_module(name)
    problems = []
    for name in [*OPTIONAL_MODULES, *modules]:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            if name not in OPTIONAL_MODULES:
                problems.append(f"{name}: {exc}")
        except Exception as exc:  # a broken module must not stop warm starts
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
    return problems


def prepare_ssl_context() -> tuple[SslContextFor, list[str]]:
    """Build the API client's SSL context once, for every run whose TLS settings match.

    Loading a CA bundle costs tens of ms; a context built here is shared by
    the children (an ``SSL_CTX`` is plain memory; OpenSSL reseeds its random
    generator in a forked child by itself). Returns the lookup and the CA
    bundle's path, which the worker watches like a module's source.
    """
    from trio_worker._client._tls import create_ssl_context
    from trio_worker._core._exceptions import ConfigurationError
    from trio_worker._core._settings import Settings

    try:
        mine = Settings.from_env()
        context = create_ssl_context(mine)
    except ConfigurationError:
        return (lambda settings: None), []
    key = (mine.ssl_cert_file, mine.tls_insecure_skip_verify)

    def matching(settings: Settings) -> ssl.SSLContext | None:
        return (
            context if (settings.ssl_cert_file, settings.tls_insecure_skip_verify) == key else None
        )

    if mine.tls_insecure_skip_verify:
        return matching, []
    import certifi

    return matching, [mine.ssl_cert_file or certifi.where()]


def prepare_converter() -> None:
    """Make the converter's first use happen here, once, rather than in every run.

    cattrs writes and compiles a function per model on first use, and finds the
    hook for a value's runtime type (a field typed ``Any``) through predicates
    whose ``issubclass`` checks walk every subclass of an ABC: the walk touches
    every class object, and each touched page is copied into the child. Left to
    the children, that was 10-20 ms of each warm run's CPU and about 3 MB of
    its private memory. (``get_structure_hook`` appeared in cattrs 24.1; with
    an older one only the samples are run.)
    """
    import attrs

    from trio_worker._core import _models
    from trio_worker._core._converter import CONVERTER, structure, unstructure

    structure_hook = getattr(CONVERTER, "get_structure_hook", None)
    unstructure_hook = getattr(CONVERTER, "get_unstructure_hook", None)
    models = [
        value
        for value in vars(_models).values()
        if isinstance(value, type) and attrs.has(value) and value.__module__ == _models.__name__
    ]
    if structure_hook is not None and unstructure_hook is not None:
        for model in models:
            structure_hook(model)
            unstructure_hook(model)
    # What a run sends and reads first: a proposed state, the verdict, JSON values.
    samples: tuple[object, ...] = (None, "", 0, 0.0, True, [], {})
    for sample in samples:
        unstructure(sample)
    state = unstructure(_models.State.of(_models.StateType.RUNNING))
    structure({"status": "ACCEPT", "state": state, "details": {}}, _models.OrchestrationResult)


def sources(extra: Sequence[str] = ()) -> list[list[object]]:
    """``[path, size, mtime_ns]`` of each imported module's file outside the standard library.

    The worker compares them with the disk before each fork
    (:mod:`trio_worker._process._zygote_image`): an edited or upgraded module
    retires this zygote. The standard library changes only with the
    interpreter, which the worker checks itself.
    """
    paths = sysconfig.get_paths()
    stdlib = tuple(os.path.join(paths[k], "") for k in ("stdlib", "platstdlib"))
    installed = tuple(os.path.join(paths[k], "") for k in ("purelib", "platlib"))
    found = []
    files = [getattr(module, "__file__", None) for module in list(sys.modules.values())]
    for path in [*files, *extra]:
        if not isinstance(path, str) or (
            path.startswith(stdlib) and not path.startswith(installed)
        ):
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        found.append([path, st.st_size, st.st_mtime_ns])
    return found

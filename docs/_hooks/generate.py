"""MkDocs hook: fill reference tables from the code, at build time.

Pages hold prose and markers; this hook replaces each marker with a table
generated from the source of truth, so no table is ever copied by hand:

- ``reference/configuration.md``

  - ``<!-- generated: settings -->``: every :class:`trio_worker.Settings` field,
    from the environment variable and help text in its metadata, and its default;
  - ``<!-- generated: start-options -->``: every option of ``trio-worker start``,
    read from the click command;
  - ``<!-- generated: other-env -->``: the variables read outside ``Settings``;

- ``operations.md``: ``<!-- generated: metrics -->``, the Prometheus metrics a
  worker serves at ``/metrics``, read from a fresh ``WorkerMetrics`` registry.

A marker that is missing, or a field without metadata, fails the build: a page
cannot silently fall behind the code. (The CLI reference needs no hook: the
``mkdocs-click`` directive reads the click commands.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import click


def _generators() -> dict[str, dict[str, Callable[[], str]]]:
    return {
        "reference/configuration.md": {
            "settings": settings_table,
            "start-options": start_options_table,
            "other-env": other_env_table,
        },
        "operations.md": {"metrics": metrics_table},
    }


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the generated-content markers of the pages that have them."""
    generators = _generators().get(page.file.src_uri, {})
    for name, generate in generators.items():
        marker = f"<!-- generated: {name} -->"
        if marker not in markdown:
            raise ValueError(f"{page.file.src_uri} lost its marker {marker}")
        markdown = markdown.replace(marker, generate())
    return markdown


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(value: object) -> str:
    if value is None:
        return "unset"
    if value == ():
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def settings_table() -> str:
    """One row per ``Settings`` field: env var, ``Settings`` attribute, default, meaning."""
    from trio_worker import Settings

    rows = []
    for field in attrs.fields(Settings):
        if "env" not in field.metadata or "help" not in field.metadata:
            raise ValueError(f"Settings.{field.name} has no env/help metadata")
        default: object = field.default
        factory = getattr(default, "factory", None)
        if callable(factory):  # an attrs.Factory: show the value it makes
            default = factory()
        rows.append(
            [
                f"`{field.metadata['env']}`",
                f"`{field.name}`",
                _default(default),
                _cell(field.metadata["help"]),
            ]
        )
    return _table(["Environment variable", "`Settings` field", "Default", "Meaning"], rows)


def _option_names(option: click.Option) -> str:
    names = ", ".join(f"`{name}`" for name in option.opts)
    if option.secondary_opts:
        names += " / " + ", ".join(f"`{name}`" for name in option.secondary_opts)
    return names


def _option_value(option: click.Option) -> str:
    if option.is_flag:
        return "flag"
    if isinstance(option.type, click.Choice):
        return " \\| ".join(f"`{choice}`" for choice in option.type.choices)
    return option.type.name.upper() if option.type.name else ""


def start_options_table() -> str:
    """One row per option of ``trio-worker start``, from the click command itself."""
    from trio_worker._cli import main

    context = click.Context(main)
    start = main.get_command(context, "start")
    if start is None:
        raise ValueError("`trio-worker start` is not registered")
    rows = []
    for param in start.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        default = param.default
        # No default (None, or click's "unset" sentinel) and off-by-default flags show blank.
        shown = isinstance(default, str | int | float) and not (param.is_flag and not default)
        rows.append(
            [
                _option_names(param),
                _option_value(param),
                _default(default) if shown else "",
                _cell(param.help or ""),
            ]
        )
    return _table(["Option", "Value", "Default", "Meaning"], rows)


def other_env_table() -> str:
    """The variables read outside ``Settings``, named by the constants the code reads."""
    from trio_worker import _task_store
    from trio_worker._cli import _server

    storage = [_task_store.STORAGE_ENV, *_task_store.PREFECT_STORAGE_ENVS]
    rows = [
        [
            f"`{_server.DB_ENV_VAR}`",
            "`server start`, and `start` when it serves the embedded API",
            "SQLite file of the embedded API when `--db` is not given "
            "(default: `api.db` in the user's data directory).",
        ],
        [
            ", ".join(f"`{name}`" for name in storage),
            "`task-worker serve`, `.delay()`, `.result()`",
            "Directory of task parameters and results, first one set wins "
            "(default: `$PREFECT_HOME/storage`, else `~/.prefect/storage`). "
            "Submitters and task workers must share it.",
        ],
    ]
    return _table(["Environment variable", "Read by", "Meaning"], rows)


def metrics_table() -> str:
    """One row per metric of a worker's ``/metrics``, from a fresh registry."""
    from prometheus_client.metrics import MetricWrapperBase

    from trio_worker._metrics import WorkerMetrics

    rows = []
    for metric in vars(WorkerMetrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        (family,) = metric.describe()
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels = ", ".join(f"`{label}`" for label in getattr(metric, "_labelnames", ()))
        rows.append([f"`{name}`", family.type, labels, _cell(family.documentation)])
    return _table(["Metric", "Type", "Labels", "Meaning"], rows)

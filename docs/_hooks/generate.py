"""Generated documentation: reference tables and code samples, committed in the pages.

The pages are Markdown that reads completely where people read it (on the
code host too), so generated content is committed in them, between markers,
and refreshed from the source of truth by this module:

- ``<!-- generated: NAME -->`` ... ``<!-- end: NAME -->``: a table made from the
  code (``reference/configuration.md``: ``settings`` and
  ``start-options``; ``operations.md``: ``metrics``; ``reference/cli.md``: ``cli``,
  every command and option, read from the click commands);
- ``<!-- from: PATH[:SECTION] -->`` before a fenced code block: the block holds
  that file of ``examples/`` (or the part between its ``--8<-- [start:SECTION]``
  and ``[end:SECTION]`` comments), the file tests run.

Run ``python docs/_hooks/generate.py`` after changing the code, the settings
or an example; ``--check`` only reports stale pages (``tests/test_docs.py``
fails on any). As an MkDocs hook it refreshes each page at build time, so the
built site is never stale either. A marker that is missing fails both.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import click

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
REGION = re.compile(r"(<!-- generated: ([\w-]+) -->\n)(.*?)(<!-- end: \2 -->)", re.DOTALL)
INCLUDE = re.compile(
    r"(<!-- from: ([^ ]+?) -->\n```[^\n]*\n)(.*?)(^```$)", re.DOTALL | re.MULTILINE
)
SECTION_MARK = re.compile(r"^\s*(#|//)\s*--8<-- \[(start|end):([\w-]+)\]\s*$")


def _generators() -> dict[str, dict[str, Callable[[], str]]]:
    return {
        "reference/configuration.md": {
            "settings": settings_table,
            "start-options": start_options_table,
        },
        "reference/cli.md": {"cli": cli_reference},
        "operations.md": {"metrics": metrics_table},
    }


def example_text(spec: str) -> str:
    """The text of ``examples/...`` file ``PATH``, or its ``SECTION``, dedented."""
    path, _, section = spec.partition(":")
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    if section:
        try:
            start = next(
                i for i, line in enumerate(lines) if line.strip().endswith(f"[start:{section}]")
            )
            end = next(
                i for i, line in enumerate(lines) if line.strip().endswith(f"[end:{section}]")
            )
        except StopIteration:
            raise ValueError(f"{path} has no section {section!r}") from None
        lines = lines[start + 1 : end]
    kept = [line for line in lines if not SECTION_MARK.match(line)]
    return textwrap.dedent("\n".join(kept)).strip("\n") + "\n"


def refresh(src_uri: str, markdown: str) -> str:
    """Return the page with every generated region and example block refreshed."""
    generators = _generators().get(src_uri, {})
    found = {match.group(2) for match in REGION.finditer(markdown)}
    for name in generators:
        if name not in found:
            raise ValueError(f"{src_uri} lost its markers <!-- generated: {name} --> ... end")

    def region(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in generators:
            raise ValueError(f"{src_uri}: no generator for <!-- generated: {name} -->")
        return f"{match.group(1)}\n{generators[name]().strip()}\n\n{match.group(4)}"

    markdown = REGION.sub(region, markdown)
    return INCLUDE.sub(lambda m: f"{m.group(1)}{example_text(m.group(2))}{m.group(4)}", markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs hook: build the page with fresh generated content."""
    return refresh(page.file.src_uri, markdown)


def stale_pages(*, write: bool) -> list[str]:
    """Refresh every page under ``docs/``; return those that were stale (rewritten if ``write``)."""
    stale = []
    for path in sorted(DOCS.rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        fresh = refresh(path.relative_to(DOCS).as_posix(), text)
        if fresh != text:
            stale.append(path.relative_to(ROOT).as_posix())
            if write:
                path.write_text(fresh, encoding="utf-8")
    return stale


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
        names = f"`{field.metadata['env']}`"
        if "fallback_env" in field.metadata:
            names += f" (else `{field.metadata['fallback_env']}`)"
        rows.append(
            [
                names,
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
    if option.metavar:
        return f"`{option.metavar}`"
    if isinstance(option.type, click.Choice):
        return " \\| ".join(f"`{choice}`" for choice in option.type.choices)
    return option.type.name.upper() if option.type.name else ""


def options_table(command: click.Command) -> str:
    """One row per option of ``command``, from the click command itself."""
    rows = []
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        default = param.default
        # No default (None, or click's "unset" sentinel) and off-by-default flags show blank.
        shown = isinstance(default, str | int | float) and not (param.is_flag and not default)
        if isinstance(param.show_default, str):
            text = param.show_default  # e.g. "unlimited"
        else:
            text = _default(default) if shown else ""
        rows.append([_option_names(param), _option_value(param), text, _cell(param.help or "")])
    return _table(["Option", "Value", "Default", "Meaning"], rows)


def start_options_table() -> str:
    """One row per option of ``trio-worker start``."""
    from trio_worker._cli import main

    start = main.get_command(click.Context(main), "start")
    if start is None:
        raise ValueError("`trio-worker start` is not registered")
    return options_table(start)


def _help_text(command: click.Command) -> str:
    return inspect.cleandoc(command.help or "").replace("\b\n", "")


def _command_section(command: click.Command, path: list[str], parent: click.Context) -> list[str]:
    context = click.Context(command, info_name=path[-1], parent=parent)
    title = " ".join(path)
    lines = [f"{'#' * min(len(path) + 1, 4)} `{title}`", "", _help_text(command), ""]
    lines += ["```text", command.get_usage(context), "```", ""]
    if any(isinstance(p, click.Option) and not p.hidden for p in command.params):
        lines += [options_table(command), ""]
    if isinstance(command, click.Group):
        for name in command.list_commands(context):
            sub = command.get_command(context, name)
            if sub is not None and not sub.hidden:
                lines += _command_section(sub, [*path, name], context)
    return lines


def cli_reference() -> str:
    """Every command of ``trio-worker`` with its help, usage and options."""
    from trio_worker._cli import main

    root = click.Context(main, info_name="trio-worker")
    lines = []
    for name in main.list_commands(root):
        command = main.get_command(root, name)
        if command is not None:
            lines += _command_section(command, ["trio-worker", name], root)
    return "\n".join(lines)


def metrics_table() -> str:
    """One row per metric of a worker's ``/metrics``, from a fresh registry."""
    from prometheus_client.metrics import MetricWrapperBase

    from trio_worker._worker._metrics import WorkerMetrics

    rows = []
    for metric in vars(WorkerMetrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        (family,) = metric.describe()
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels = ", ".join(f"`{label}`" for label in getattr(metric, "_labelnames", ()))
        rows.append([f"`{name}`", family.type, labels, _cell(family.documentation)])
    return _table(["Metric", "Type", "Labels", "Meaning"], rows)


def main(argv: list[str] | None = None) -> int:
    """Refresh the pages; with ``--check``, only list the stale ones (exit 1 if any)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report stale pages, write nothing")
    args = parser.parse_args(argv)
    stale = stale_pages(write=not args.check)
    for page in stale:
        print(f"{'stale' if args.check else 'refreshed'}: {page}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())

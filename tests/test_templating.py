"""The template engine against the behaviour verified on Prefect (prefect-api-subset.md §7)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_worker._core._exceptions import TemplateError
from trio_worker._core._template_references import (
    resolve_block_document_references,
    resolve_variables,
)
from trio_worker._core._templating import (
    NOTSET,
    Placeholder,
    PlaceholderKind,
    apply_values,
    find_placeholders,
    lookup_path,
)

# Every row of the §7.1 table: (template, values, env, expected).
TABLE_7_1: list[tuple[Any, dict[str, Any], dict[str, str], Any]] = [
    ("{{ n }}", {"n": 5}, {}, 5),
    ("{{ n }}", {"n": {"a": [1, 2]}}, {}, {"a": [1, 2]}),
    ("{{n}}", {"n": True}, {}, True),
    ("x-{{ n }}", {"n": 5}, {}, "x-5"),
    ("{{ a }}-{{ b }}", {"a": 1, "b": None}, {}, "1-None"),
    ("p={{ n }}", {"n": {"a": 1}}, {}, "p={'a': 1}"),
    ("{{ missing }}", {}, {}, NOTSET),
    ("pre-{{ missing }}-post", {}, {}, "pre--post"),
    ({"k": "{{ missing }}", "j": "{{ n }}", "lit": 7}, {"n": 1}, {}, {"j": 1, "lit": 7}),
    (["{{ missing }}", "{{ n }}", "pre {{ missing }}"], {"n": 2}, {}, [2, "pre "]),
    (
        {"outer": {"inner": "{{ x.y }}", "l": ["{{ x.z[1] }}"]}},
        {"x": {"y": "deep", "z": [10, 20]}},
        {},
        {"outer": {"inner": "deep", "l": [20]}},
    ),
    ("{{ n }}", {"n": None}, {}, None),
    ("a-{{ $MYVAR }}", {}, {"MYVAR": "from-env"}, "a-from-env"),
    ("x {{ prefect.variables.foo }} {{ n }}", {"n": 3}, {}, "x {{ prefect.variables.foo }} 3"),
    ("{{ n }}", {"n": "{{ m }}", "m": "…"}, {}, "{{ m }}"),
]


@pytest.mark.parametrize(("template", "values", "env", "expected"), TABLE_7_1)
def test_apply_values_matches_prefect_table(
    template: Any, values: dict[str, Any], env: dict[str, str], expected: Any
) -> None:
    result = apply_values(template, values, env=env)
    assert result == expected
    assert type(result) is type(expected)


def test_apply_values_does_not_modify_its_inputs() -> None:
    template = {"a": ["{{ x }}", {"b": "{{ y }}"}], "c": "{{ missing }}"}
    values = {"x": [1], "y": {"z": 2}}
    before = copy.deepcopy((template, values))
    apply_values(template, values, env={})
    assert (template, values) == before


def test_apply_values_dashes_and_negative_indexes_in_names() -> None:
    values = {"a-b": 1, "l": [1, 2, 3]}
    assert apply_values("{{ a-b }}", values, env={}) == 1
    assert apply_values("{{ l[-1] }}", values, env={}) == 3
    assert apply_values(["{{ l[5] }}", "{{ l.x }}"], values, env={}) == []


def test_apply_values_embedded_keeps_python_str_for_each_type() -> None:
    values = {"t": True, "f": 1.5, "l": [1, "a"]}
    assert apply_values("{{ t }}/{{ f }}/{{ l }}", values, env={}) == "True/1.5/[1, 'a']"


def test_apply_values_whole_string_env_is_stringified_and_missing_is_empty() -> None:
    assert apply_values("{{ $N }}", {}, env={"N": "5"}) == "5"
    assert apply_values({"k": "{{ $NOPE }}"}, {}, env={}) == {"k": ""}


def test_apply_values_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIO_WORKER_TEMPLATING_TEST", "yes")
    assert apply_values("{{ $TRIO_WORKER_TEMPLATING_TEST }}", {}) == "yes"


def test_apply_values_leaves_block_and_variable_placeholders_for_later() -> None:
    template = {"b": "{{ prefect.blocks.secret.tok }}", "v": "{{ prefect.variables.foo }}"}
    assert apply_values(template, {}, env={}) == template


def test_apply_values_repeated_placeholder_is_embedded() -> None:
    assert apply_values("{{ n }}{{ n }}", {"n": 1}, env={}) == "11"
    assert apply_values(" {{ n }}", {"n": 1}, env={}) == " 1"


def test_apply_values_is_a_single_pass_even_with_several_placeholders() -> None:
    values = {"a": "{{ b }}", "b": "B"}
    assert apply_values("{{ a }} {{ b }}", values, env={}) == "{{ b }} B"


def test_apply_values_keep_notset_keeps_placeholders() -> None:
    template = {"k": "{{ missing }}", "e": "x-{{ missing }}-{{ n }}", "l": ["{{ missing }}"]}
    assert apply_values(template, {"n": 1}, remove_notset=False, env={}) == {
        "k": "{{ missing }}",
        "e": "x-{{ missing }}-1",
        "l": ["{{ missing }}"],
    }
    assert apply_values("{{ gone }}", {}, remove_notset=False, env={}) == "{{ gone }}"


def test_apply_values_passes_non_string_scalars_and_keys_through() -> None:
    template = {"{{ n }}": [1, 2.5, False, None]}
    assert apply_values(template, {"n": "x"}, env={}) == template


def test_apply_values_rejects_non_json_values() -> None:
    with pytest.raises(TemplateError, match="tuple"):
        apply_values({"a": (1, 2)}, {}, env={})


def test_lookup_path_walks_dicts_and_lists_only() -> None:
    values = {"x": {"1": "one", "s": "abc", "l": [{"k": "v"}]}}
    assert lookup_path(values, "x.1") == "one"
    assert lookup_path(values, "x.l[0].k") == "v"
    assert lookup_path(values, "x.s[0]") is NOTSET
    assert lookup_path(values, "x.l.k") is NOTSET


def test_find_placeholders_classifies_by_prefix() -> None:
    template = {
        "a": "{{ x }} {{ $HOME }}",
        "b": ["{{ prefect.variables.v }}", "{{prefect.blocks.secret.s}}"],
        "{{ key }}": 3,
    }
    assert find_placeholders(template) == {
        Placeholder("{{ x }}", "x", PlaceholderKind.STANDARD),
        Placeholder("{{ $HOME }}", "$HOME", PlaceholderKind.ENV_VAR),
        Placeholder("{{ prefect.variables.v }}", "prefect.variables.v", PlaceholderKind.VARIABLE),
        Placeholder(
            "{{prefect.blocks.secret.s}}", "prefect.blocks.secret.s", PlaceholderKind.BLOCK_DOCUMENT
        ),
    }


# --- hypothesis ------------------------------------------------------------------------

_names = st.sampled_from(["n", "a", "x.y", "x.z[1]", "l[0]", "missing", "$HOME", "a-b"])
_placeholder = _names.map(lambda name: "{{ " + name + " }}")
_text = st.one_of(
    st.text(max_size=8),
    _placeholder,
    st.lists(st.one_of(st.text(max_size=4), _placeholder), max_size=4).map("".join),
)
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=6)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
_templates = st.recursive(
    st.one_of(_scalars, _text),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
_values = st.dictionaries(st.sampled_from(["n", "a", "x", "l", "a-b", "other"]), _json, max_size=6)


@given(template=_templates, values=_values, remove_notset=st.booleans())
def test_apply_values_never_raises_on_json(
    template: Any, values: dict[str, Any], remove_notset: bool
) -> None:
    apply_values(template, values, remove_notset=remove_notset, env={"HOME": "/h"})


@given(value=_json, name=st.from_regex(r"[A-Za-z_][\w\-]{0,10}", fullmatch=True))
def test_whole_string_placeholder_returns_the_value_itself(value: Any, name: str) -> None:
    assert apply_values("{{ " + name + " }}", {name: value}, env={}) is value
    assert apply_values({"k": "{{" + name + "}}"}, {name: value}, env={})["k"] is value


# --- variables and blocks (§7.2) ----------------------------------------------------------


class FakeVariables:
    """Stands in for the API client's read-variable-by-name, counting calls."""

    def __init__(self, variables: Mapping[str, Any]) -> None:
        self.variables = variables
        self.calls: list[str] = []

    async def __call__(self, name: str) -> Any:
        self.calls.append(name)
        return self.variables.get(name)


async def test_resolve_variables_whole_keeps_type_embedded_stringifies_missing_empty() -> None:
    get = FakeVariables({"cpu": {"cpu": 2}, "region": "eu-west-1"})
    template = {
        "whole": "{{ prefect.variables.cpu }}",
        "embedded": "x{{ prefect.variables.cpu }}",
        "again": ["{{ prefect.variables.region }}", "{{prefect.variables.region}}-b"],
        "missing": "{{ prefect.variables.nope }}",
        "missing_embedded": "a{{ prefect.variables.nope }}b",
        "other": "{{ n }} {{ prefect.blocks.secret.x }}",
        "scalar": 3,
    }
    result = await resolve_variables(template, get)
    assert result == {
        "whole": {"cpu": 2},
        "embedded": "x{'cpu': 2}",
        "again": ["eu-west-1", "eu-west-1-b"],
        "missing": "",
        "missing_embedded": "ab",
        "other": "{{ n }} {{ prefect.blocks.secret.x }}",
        "scalar": 3,
    }
    assert sorted(get.calls) == ["cpu", "nope", "region"]


async def test_resolve_variables_without_placeholders_makes_no_calls() -> None:
    get = FakeVariables({})
    assert await resolve_variables({"a": "{{ n }}"}, get) == {"a": "{{ n }}"}
    assert get.calls == []


class FakeBlocks:
    """Stands in for reading block documents by (slug, name) and by id, counting calls."""

    def __init__(self, blocks: Mapping[tuple[str, str], Mapping[str, Any]]) -> None:
        self.blocks = blocks
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, slug: str, name: str) -> Mapping[str, Any] | None:
        self.calls.append((slug, name))
        return self.blocks.get((slug, name))


BLOCKS: dict[tuple[str, str], Mapping[str, Any]] = {
    ("secret", "tok"): {"value": "s3cr3t"},
    ("secret", "cfg"): {"value": {"image": "repo/img", "n": 3}},
    ("local-file-system", "lfs"): {"basepath": "/data/x"},
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ prefect.blocks.secret.tok }}", "s3cr3t"),
        ("Bearer {{ prefect.blocks.secret.tok }}", "Bearer s3cr3t"),
        ("{{ prefect.blocks.secret.cfg }}", {"image": "repo/img", "n": 3}),
        ("{{ prefect.blocks.secret.cfg.image }}", "repo/img"),
        ("{{ prefect.blocks.secret.cfg.n }}", 3),
        ("{{ prefect.blocks.secret.cfg.value.n }}", 3),
        ("{{ prefect.blocks.local-file-system.lfs }}", {"basepath": "/data/x"}),
        ("{{ prefect.blocks.local-file-system.lfs.basepath }}", "/data/x"),
        ("n={{ prefect.blocks.secret.cfg.n }}", "n=3"),
    ],
)
async def test_resolve_block_placeholders_as_prefect(template: str, expected: Any) -> None:
    assert await resolve_block_document_references(template, FakeBlocks(BLOCKS)) == expected


async def test_resolve_blocks_reads_each_block_once_and_leaves_other_placeholders() -> None:
    get = FakeBlocks(BLOCKS)
    template = {
        "a": "{{ prefect.blocks.secret.cfg.image }}",
        "b": ["{{ prefect.blocks.secret.cfg }}", "{{ n }}", "{{ prefect.variables.v }}"],
    }
    result = await resolve_block_document_references(template, get)
    assert result == {
        "a": "repo/img",
        "b": [{"image": "repo/img", "n": 3}, "{{ n }}", "{{ prefect.variables.v }}"],
    }
    assert get.calls == [("secret", "cfg")]


async def test_resolve_blocks_without_reader_leaves_placeholders() -> None:
    template = {"a": "{{ prefect.blocks.secret.tok }}"}
    assert await resolve_block_document_references(template, None) == template


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ prefect.blocks.secret.nope }}", "Block not found: 'nope' of type 'secret'"),
        ("x {{ prefect.blocks.secret.cfg }}", "cannot be embedded"),
        ("{{ prefect.blocks.secret.cfg.missing }}", "nothing at 'missing'"),
        ("{{ prefect.blocks.secret }}", "must name a block type slug and a document"),
    ],
)
async def test_resolve_blocks_errors_name_the_placeholder(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        await resolve_block_document_references(template, FakeBlocks(BLOCKS))


async def test_resolve_block_document_refs_by_id() -> None:
    async def by_id(block_id: str) -> Mapping[str, Any] | None:
        return {"id-1": {"k": "v"}}.get(block_id)

    template = {"creds": {"$ref": {"block_document_id": "id-1"}}, "n": ["{{ n }}"]}
    result = await resolve_block_document_references(template, None, get_block_document=by_id)
    assert result == {"creds": {"k": "v"}, "n": ["{{ n }}"]}
    with pytest.raises(TemplateError, match="id-2"):
        await resolve_block_document_references(
            {"$ref": {"block_document_id": "id-2"}}, None, get_block_document=by_id
        )

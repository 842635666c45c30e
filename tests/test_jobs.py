"""Job configurations: schema generation, rendering (§7.3), merging and per-run preparation."""

from __future__ import annotations

import copy
import datetime as dt
import json
import pathlib
import uuid
from collections.abc import Mapping
from typing import Any

import attrs
import pytest

from trio_worker._core._exceptions import ConfigurationError, JobVariableError, TemplateError
from trio_worker._core._job_prepare import prepare_for_flow_run
from trio_worker._core._job_schema import job_metadata, json_schema
from trio_worker._core._jobs import (
    BaseJobConfiguration,
    BaseVariables,
    default_base_job_template,
    from_template_and_values,
    merge_job_variables,
)
from trio_worker._core._models import Deployment, Flow, FlowRun, WorkPool
from trio_worker._process._config import (
    ProcessJobConfiguration,
    ProcessVariables,
    process_base_job_template,
)
from trio_worker._version import __version__

# The default `process` template captured from a real Prefect 3.9.1 server (byte for byte).
CAPTURED = pathlib.Path(__file__).parent / "data" / "process-base-job-template.json"


def captured_template() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(CAPTURED.read_text())
    return result


# --- the default template -----------------------------------------------------------------


def test_process_template_equals_the_one_captured_from_prefect() -> None:
    template = process_base_job_template()
    assert template == captured_template()
    assert json.dumps(template) == json.dumps(captured_template())
    assert json.dumps(template, indent=2) == CAPTURED.read_text()


def test_default_template_parts_come_from_the_classes() -> None:
    template = default_base_job_template(ProcessJobConfiguration, ProcessVariables)
    assert template["job_configuration"] == ProcessJobConfiguration.json_template()
    assert template["variables"] == ProcessVariables.json_schema()
    assert BaseJobConfiguration.json_template() == {
        "command": "{{ command }}",
        "env": "{{ env }}",
        "labels": "{{ labels }}",
        "name": "{{ name }}",
    }
    assert list(BaseVariables.json_schema()["properties"]) == ["name", "env", "labels", "command"]


def test_template_without_variables_class_uses_the_configuration_schema() -> None:
    template = default_base_job_template(BaseJobConfiguration)
    assert list(template["variables"]["properties"]) == ["command", "env", "labels", "name"]


@attrs.frozen(kw_only=True)
class CustomVariables(BaseVariables):
    cpu: int = attrs.field(metadata=job_metadata(description="CPUs."))
    ratio: float = 0.5
    tags: list[str] = attrs.field(factory=list)
    extra: dict[str, Any] | None = None
    where: pathlib.Path | None = None


def test_schema_of_custom_types_required_and_default_title() -> None:
    schema = json_schema(CustomVariables)
    props = schema["properties"]
    assert schema["required"] == ["cpu"]
    assert list(schema) == ["properties", "required", "type"]
    assert props["cpu"] == {"description": "CPUs.", "title": "Cpu", "type": "integer"}
    assert props["ratio"] == {"default": 0.5, "title": "Ratio", "type": "number"}
    assert props["tags"] == {"items": {"type": "string"}, "title": "Tags", "type": "array"}
    assert props["extra"]["anyOf"] == [{"type": "object"}, {"type": "null"}]
    assert props["where"]["anyOf"] == [{"format": "path", "type": "string"}, {"type": "null"}]


def test_json_template_honours_a_template_override() -> None:
    @attrs.frozen(kw_only=True)
    class Custom(BaseJobConfiguration):
        manifest: dict[str, Any] = attrs.field(
            factory=dict, metadata=job_metadata(template="{{ job_manifest }}")
        )

    assert Custom.json_template()["manifest"] == "{{ job_manifest }}"


# --- from_template_and_values (§7.3) --------------------------------------------------------


async def get_variable(name: str) -> Any:
    return {"region": "eu-west-1"}.get(name)


async def get_block(slug: str, name: str) -> Mapping[str, Any] | None:
    return {("secret", "tok"): {"value": "s3cr3t"}}.get((slug, name))


async def test_verified_example_of_section_7_3() -> None:
    template = process_base_job_template()
    template["job_configuration"]["env"] = {
        "BASE": "1",
        "REGION": "{{ prefect.variables.region }}",
        "TOKEN": "{{ prefect.blocks.secret.tok }}",
    }
    template["variables"]["properties"]["env"]["default"] = {"VARDEFAULT": "d"}
    values = {
        "env": {"FROM_DEP": "x"},
        "env.DOTTED": "y",
        "stream_output": False,
        "command": "echo {{ prefect.variables.region }}",
    }
    before = copy.deepcopy((template, values))
    config = await from_template_and_values(
        template,
        values,
        get_variable=get_variable,
        get_block=get_block,
        config_cls=ProcessJobConfiguration,
    )
    expected = {
        "command": "echo eu-west-1",
        "env": {
            "BASE": "1",
            "REGION": "eu-west-1",
            "TOKEN": "s3cr3t",
            "VARDEFAULT": "d",
            "DOTTED": "y",
            "FROM_DEP": "x",
        },
        "labels": {},
        "name": None,
        "stream_output": False,
        "working_dir": None,
    }
    assert attrs.asdict(config) == expected
    assert list(config.env) == ["BASE", "REGION", "TOKEN", "VARDEFAULT", "DOTTED", "FROM_DEP"]
    assert (template, values) == before


async def test_default_template_without_values() -> None:
    config = await ProcessJobConfiguration.from_template_and_values(process_base_job_template(), {})
    assert attrs.asdict(config) == {
        "command": None,
        "env": {},
        "labels": {},
        "name": None,
        "stream_output": True,
        "working_dir": None,
    }


async def test_values_fill_fields_and_env_values_become_strings() -> None:
    config = await from_template_and_values(
        process_base_job_template(),
        {
            "env": {"N": 5, "B": True, "GONE": None},
            "labels": {"team": "a"},
            "name": "job",
            "working_dir": "/tmp/w",
            "stream_output": "false",
            "unknown": 1,
        },
        config_cls=ProcessJobConfiguration,
    )
    assert config.env == {"N": "5", "B": "True", "GONE": None}
    assert config.labels == {"team": "a"}
    assert (config.name, config.working_dir, config.stream_output) == ("job", "/tmp/w", False)


async def test_empty_command_and_working_dir_mean_unset() -> None:
    config = await from_template_and_values(
        process_base_job_template(),
        {"command": "", "working_dir": ""},
        config_cls=ProcessJobConfiguration,
    )
    assert (config.command, config.working_dir) == (None, None)


async def test_default_env_replaces_a_placeholder_env_and_values_merge_into_it() -> None:
    template = process_base_job_template()
    template["variables"]["properties"]["env"]["default"] = {"A": "1"}
    config = await from_template_and_values(template, {})
    assert config.env == {"A": "1"}
    config = await from_template_and_values(template, {"env": {"B": "2"}})
    # The default replaced the placeholder, so the configuration's env is now a dict
    # and the values' env is merged into it (Prefect does the same).
    assert config.env == {"A": "1", "B": "2"}


async def test_null_defaults_are_ignored_and_templated_defaults_used() -> None:
    template = {
        "job_configuration": {"name": "run-{{ team }}", "labels": {"t": "{{ team }}"}},
        "variables": {"properties": {"team": {"default": "core"}, "x": {"default": None}}},
    }
    config = await from_template_and_values(template, {})
    assert (config.name, config.labels) == ("run-core", {"t": "core"})
    config = await from_template_and_values(template, {"team": "ops"})
    assert (config.name, config.labels) == ("run-ops", {"t": "ops"})


async def test_variable_placeholders_stay_without_a_reader() -> None:
    template = {"job_configuration": {"name": "{{ prefect.variables.x }}"}, "variables": {}}
    config = await from_template_and_values(template, {})
    assert config.name == "{{ prefect.variables.x }}"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"stream_output": "maybe"}, "job variable 'stream_output' must be boolean, got 'maybe'"),
        ({"env": 5}, "job variable 'env' must be object of string or null, got 5 (int)"),
        ({"labels": {"a": 1}}, "job variable 'labels.a' must be string, got 1 (int)"),
        ({"name": ["x"]}, "job variable 'name' must be string or null, got ['x'] (list)"),
        ({"working_dir": 3}, "job variable 'working_dir' must be string or null, got 3"),
        ({"command": {"a": 1}}, "job variable 'command' must be string or null"),
    ],
)
async def test_values_that_do_not_fit_name_variable_and_type(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(JobVariableError) as info:
        await from_template_and_values(
            process_base_job_template(), values, config_cls=ProcessJobConfiguration
        )
    assert message in str(info.value)
    assert isinstance(info.value, ConfigurationError | ValueError)


async def test_env_that_is_not_an_object_merged_into_a_dict_env_is_rejected() -> None:
    template = {"job_configuration": {"env": {"A": "1"}}, "variables": {"properties": {}}}
    with pytest.raises(JobVariableError, match="'env'"):
        await from_template_and_values(template, {"env": "A=2"})


async def test_missing_required_field_is_reported() -> None:
    @attrs.frozen(kw_only=True)
    class Needs(BaseJobConfiguration):
        image: str

    with pytest.raises(JobVariableError, match="'image' is required"):
        await from_template_and_values(default_base_job_template(Needs), {}, config_cls=Needs)
    config = await from_template_and_values(
        default_base_job_template(Needs), {"image": "img"}, config_cls=Needs
    )
    assert config.image == "img"


@pytest.mark.parametrize(
    "template",
    [{}, {"variables": {}}, {"job_configuration": "x", "variables": {}}, []],
)
async def test_malformed_templates_raise_template_error(template: Any) -> None:
    with pytest.raises(TemplateError):
        await from_template_and_values(template, {})


# --- merge_job_variables ------------------------------------------------------------------


def test_merge_job_variables_merges_env_and_overrides_the_rest() -> None:
    deployment = {"env": {"A": "1", "B": "2"}, "labels": {"x": "1"}, "name": "dep"}
    run = {"env": {"B": "3", "C": None}, "labels": {"y": "2"}}
    before = copy.deepcopy((deployment, run))
    assert merge_job_variables(deployment, run) == {
        "env": {"A": "1", "B": "3", "C": None},
        "labels": {"y": "2"},
        "name": "dep",
    }
    assert (deployment, run) == before


def test_merge_job_variables_handles_missing_sides() -> None:
    assert merge_job_variables(None, None) == {}
    assert merge_job_variables(None, {"env": {"A": "1"}}) == {"env": {"A": "1"}}
    assert merge_job_variables({"env": {"A": "1"}}, None) == {"env": {"A": "1"}}
    assert merge_job_variables({"env": "x"}, {"env": {"A": "1"}}) == {"env": {"A": "1"}}


# --- prepare_for_flow_run (§10) -----------------------------------------------------------

FLOW_RUN = FlowRun(
    id=uuid.UUID("00000000-0000-0000-0000-0000000000f1"),
    name="crimson-fox",
    flow_id=uuid.UUID("00000000-0000-0000-0000-0000000000a1"),
    deployment_id=uuid.UUID("00000000-0000-0000-0000-0000000000d1"),
)
FLOW = Flow(id=FLOW_RUN.flow_id, name="sleeper")
DEPLOYMENT = Deployment(
    id=uuid.UUID("00000000-0000-0000-0000-0000000000d1"),
    name="sleeper-dep",
    flow_id=FLOW.id,
    updated=dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone(dt.timedelta(hours=2))),
)
POOL = WorkPool(id=uuid.UUID("00000000-0000-0000-0000-0000000000b1"), name="pool", type="process")


def test_prepare_layers_env_in_prefect_order() -> None:
    config = ProcessJobConfiguration(
        env={"PREFECT__FLOW_NAME": "from-config", "DROP": None, "PREFECT__FLOW_RUN_ID": None}
    )
    base_env = {"PREFECT_API_URL": "http://api", "DROP": "x", "PREFECT__WORKER_NAME": "base"}
    prepared = prepare_for_flow_run(
        config,
        flow_run=FLOW_RUN,
        deployment=DEPLOYMENT,
        flow=FLOW,
        worker_name="w1",
        work_pool=POOL,
        base_env=base_env,
    )
    assert prepared.env == {
        "PREFECT_API_URL": "http://api",
        "PREFECT__WORKER_NAME": "w1",
        "PREFECT__FLOW_ID": str(FLOW.id),
        "PREFECT__FLOW_NAME": "from-config",
        "PREFECT__DEPLOYMENT_ID": str(DEPLOYMENT.id),
        "PREFECT__DEPLOYMENT_NAME": "sleeper-dep",
    }
    assert config.env["DROP"] is None  # the original is untouched
    assert isinstance(prepared, ProcessJobConfiguration)


def test_prepare_sets_flow_run_id_above_base_env() -> None:
    prepared = prepare_for_flow_run(
        BaseJobConfiguration(),
        flow_run=FLOW_RUN,
        base_env={"PREFECT__FLOW_RUN_ID": "stale", "PREFECT__FLOW_ID": "stale"},
    )
    assert prepared.env == {
        "PREFECT__FLOW_RUN_ID": str(FLOW_RUN.id),
        "PREFECT__FLOW_ID": str(FLOW_RUN.flow_id),
        "PREFECT__DEPLOYMENT_ID": str(FLOW_RUN.deployment_id),
    }


def test_prepare_labels_all_known_objects_and_config_labels_win() -> None:
    config = BaseJobConfiguration(labels={"team": "a", "prefect.io/flow-name": "mine"})
    prepared = config.prepare_for_flow_run(
        flow_run=FLOW_RUN,
        deployment=DEPLOYMENT,
        flow=FLOW,
        worker_name="w1",
        work_pool=POOL,
        base_env={},
    )
    assert prepared.labels == {
        "prefect.io/flow-run-id": str(FLOW_RUN.id),
        "prefect.io/flow-run-name": "crimson-fox",
        "prefect.io/version": __version__,
        "prefect.io/work-pool-name": "pool",
        "prefect.io/work-pool-id": str(POOL.id),
        "prefect.io/worker-name": "w1",
        "prefect.io/flow-id": str(FLOW.id),
        "prefect.io/flow-name": "mine",
        "prefect.io/deployment-id": str(DEPLOYMENT.id),
        "prefect.io/deployment-name": "sleeper-dep",
        "prefect.io/deployment-updated": "2026-01-02T01:04:05.678000Z",
        "team": "a",
    }
    assert list(prepared.labels)[:3] == [
        "prefect.io/flow-run-id",
        "prefect.io/flow-run-name",
        "prefect.io/version",
    ]


def test_prepare_labels_only_what_is_known() -> None:
    run = attrs.evolve(FLOW_RUN, deployment_id=None)
    prepared = prepare_for_flow_run(BaseJobConfiguration(), flow_run=run, base_env={})
    assert set(prepared.labels) == {
        "prefect.io/flow-run-id",
        "prefect.io/flow-run-name",
        "prefect.io/version",
        "prefect.io/flow-id",
    }
    assert "PREFECT__DEPLOYMENT_ID" not in prepared.env


def test_prepare_defaults_name_and_command_but_keeps_given_ones() -> None:
    prepared = prepare_for_flow_run(
        BaseJobConfiguration(),
        flow_run=FLOW_RUN,
        base_env={},
        default_command="/usr/bin/python -m trio_worker.engine",
    )
    assert (prepared.name, prepared.command) == (
        "crimson-fox",
        "/usr/bin/python -m trio_worker.engine",
    )
    given = BaseJobConfiguration(name="mine", command="echo hi")
    prepared = prepare_for_flow_run(given, flow_run=FLOW_RUN, base_env={}, default_command="x")
    assert (prepared.name, prepared.command) == ("mine", "echo hi")
    assert prepare_for_flow_run(given, flow_run=FLOW_RUN, base_env={}).command == "echo hi"


def test_prepare_treats_naive_deployment_updated_as_utc() -> None:
    deployment = attrs.evolve(DEPLOYMENT, updated=dt.datetime(2026, 1, 2, 3, 4, 5))
    prepared = prepare_for_flow_run(
        BaseJobConfiguration(), flow_run=FLOW_RUN, deployment=deployment, base_env={}
    )
    assert prepared.labels["prefect.io/deployment-updated"] == "2026-01-02T03:04:05Z"


def test_prepare_dispatches_to_subclass_overrides() -> None:
    @attrs.frozen(kw_only=True)
    class Tagged(BaseJobConfiguration):
        def prepare_for_flow_run(self, *args: Any, **kwargs: Any) -> Tagged:
            return attrs.evolve(super().prepare_for_flow_run(*args, **kwargs), name="tagged")

    assert prepare_for_flow_run(Tagged(), flow_run=FLOW_RUN, base_env={}).name == "tagged"


def test_a_prefect_style_override_gets_prefects_keywords_and_the_worker_part_first() -> None:
    seen: list[tuple[Any, ...]] = []

    @attrs.frozen(kw_only=True)
    class PrefectStyle(BaseJobConfiguration):
        def prepare_for_flow_run(  # type: ignore[override]
            self, flow_run: FlowRun, deployment: Deployment | None = None, flow: Flow | None = None
        ) -> PrefectStyle:
            seen.append((flow_run, deployment, flow, dict(self.env)))
            return attrs.evolve(super().prepare_for_flow_run(flow_run, deployment, flow), name="p")

    prepared = prepare_for_flow_run(
        PrefectStyle(), flow_run=FLOW_RUN, base_env={"PREFECT_API_URL": "u"}, worker_name="w"
    )
    ((flow_run, deployment, flow, env),) = seen
    assert (flow_run, deployment, flow) == (FLOW_RUN, None, None)
    assert env["PREFECT_API_URL"] == "u"  # the worker's part was applied before the override
    assert prepared.env["PREFECT__WORKER_NAME"] == "w" and prepared.name == "p"


@attrs.frozen(kw_only=True)
class ReturnsNone(BaseJobConfiguration):
    def prepare_for_flow_run(self, flow_run: FlowRun, *_: Any) -> None:  # type: ignore[override]
        super().prepare_for_flow_run(flow_run)


@attrs.frozen(kw_only=True)
class AssignsToSelf(BaseJobConfiguration):
    def prepare_for_flow_run(self, flow_run: FlowRun, *_: Any) -> None:  # type: ignore[override]
        self.name = flow_run.name  # type: ignore[misc]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (ReturnsNone(), r"^ReturnsNone\.prepare_for_flow_run returned None, not a job config"),
        (AssignsToSelf(), r"^AssignsToSelf\.prepare_for_flow_run assigned to a field, but job"),
    ],
)
def test_an_override_in_prefects_mutating_style_fails_naming_the_class(
    config: BaseJobConfiguration, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        prepare_for_flow_run(config, flow_run=FLOW_RUN, base_env={})


@attrs.frozen(kw_only=True)
class ReturnsADict(BaseJobConfiguration):
    def prepare_for_flow_run(self, flow_run: FlowRun, *_: Any) -> Any:  # type: ignore[override]
        return attrs.asdict(super().prepare_for_flow_run(flow_run))


def test_an_override_returning_something_else_is_named_without_its_secrets() -> None:
    """The error becomes the run's CRASHED message: it names the type, not its contents."""
    with pytest.raises(ConfigurationError) as info:
        prepare_for_flow_run(
            ReturnsADict(), flow_run=FLOW_RUN, base_env={"PREFECT_API_KEY": "pnu_secret"}
        )
    assert "ReturnsADict.prepare_for_flow_run returned a dict" in str(info.value)
    assert "pnu_secret" not in str(info.value)

"""Job variables with Literal, Enum and nested attrs classes: schema out, validation back in."""

from __future__ import annotations

import enum
from typing import Any, Literal

import attrs
import pytest

from trio_worker import BaseJobConfiguration, BaseVariables, JobVariableError, job_metadata
from trio_worker._core._job_schema import json_schema, structure


class Tier(enum.StrEnum):
    """How much the run may use."""

    SMALL = "small"
    LARGE = "large"


@attrs.frozen(kw_only=True)
class Volume:
    """A volume mounted into the container."""

    host_path: str
    read_only: bool = False


@attrs.frozen(kw_only=True)
class ClusterVariables(BaseVariables):
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = attrs.field(
        default="IfNotPresent", metadata=job_metadata(title="Pull policy")
    )
    tier: Tier = Tier.SMALL
    volumes: list[Volume] = attrs.field(factory=list)
    scratch: Volume | None = None


@attrs.frozen(kw_only=True)
class ClusterConfiguration(BaseJobConfiguration):
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    tier: Tier = Tier.SMALL
    volumes: list[Volume] = attrs.field(factory=list)
    scratch: Volume | None = None


def test_schema_describes_literals_enums_and_nested_classes_as_prefect_does() -> None:
    schema = json_schema(ClusterVariables)
    properties = schema["properties"]
    assert properties["pull_policy"] == {
        "default": "IfNotPresent",
        "enum": ["Always", "IfNotPresent", "Never"],
        "title": "Pull policy",
        "type": "string",
    }
    assert properties["tier"] == {"$ref": "#/definitions/Tier", "default": "small", "title": "Tier"}
    assert properties["volumes"] == {
        "items": {"$ref": "#/definitions/Volume"},
        "title": "Volumes",
        "type": "array",
    }
    assert properties["scratch"]["anyOf"] == [
        {"$ref": "#/definitions/Volume"},
        {"type": "null"},
    ]
    assert schema["definitions"] == {
        "Tier": {
            "description": "How much the run may use.",
            "enum": ["small", "large"],
            "title": "Tier",
            "type": "string",
        },
        "Volume": {
            "description": "A volume mounted into the container.",
            "properties": {
                "host_path": {"title": "Host Path", "type": "string"},
                "read_only": {"default": False, "title": "Read Only", "type": "boolean"},
            },
            "required": ["host_path"],
            "title": "Volume",
            "type": "object",
        },
    }


def test_rendered_json_is_validated_back_into_enums_literals_and_nested_classes() -> None:
    config = structure(
        ClusterConfiguration,
        {
            "pull_policy": "Always",
            "tier": "large",
            "volumes": [{"host_path": "/data", "read_only": "yes"}, {"host_path": "/tmp"}],
            "scratch": {"host_path": "/scratch", "unknown": 1},
        },
    )
    assert config.pull_policy == "Always"
    assert config.tier is Tier.LARGE
    assert config.volumes == [Volume(host_path="/data", read_only=True), Volume(host_path="/tmp")]
    assert config.scratch == Volume(host_path="/scratch")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"pull_policy": "Sometimes"},
            "job variable 'pull_policy' must be one of 'Always', 'IfNotPresent', 'Never',"
            " got 'Sometimes' (str)",
        ),
        ({"tier": "huge"}, "job variable 'tier' must be one of 'small', 'large', got 'huge'"),
        (
            {"volumes": [{"host_path": "/a"}, {"host_path": 3}]},
            "job variable 'volumes[1].host_path' must be string, got 3 (int)",
        ),
        (
            {"volumes": [{"read_only": True}]},
            "job variable 'volumes[0].host_path' is required (string)",
        ),
        (
            {"scratch": "/scratch"},
            "job variable 'scratch' must be object (Volume) or null, got '/scratch' (str)",
        ),
    ],
)
def test_a_value_that_does_not_fit_names_the_job_variable(
    data: dict[str, Any], message: str
) -> None:
    with pytest.raises(JobVariableError) as info:
        structure(ClusterConfiguration, data)
    assert str(info.value).startswith(message), str(info.value)

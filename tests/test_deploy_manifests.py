"""The deployment files in docs/deploy/ (docs/deploy.md) agree with the worker they deploy.

They are documentation a person copies, so what would break them is checked
here: the YAML parses, the probes ask the worker's health server for routes it
serves, the grace period covers the drain, the memory request covers the
worker's measured RSS, and every flag of each command line exists in
``trio-worker start`` (parsed by the real click command).
"""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from trio_worker._cli._start import start
from trio_worker._process._worker import ProcessWorker
from trio_worker._worker._health import create_health_app
from trio_worker._worker._reporter import REPORT_TIMEOUT_SECONDS

DEPLOY = Path(__file__).parents[1] / "docs" / "deploy"
#: The worker's own peak RSS measured by the benchmark (docs/performance.md), in MiB.
MEASURED_WORKER_RSS_MIB = 56


def _health_routes() -> set[str]:
    worker = ProcessWorker("any", api_url="http://127.0.0.1:9/api")
    source = worker._health_source()
    return {route.path for route in create_health_app(source).routes}  # type: ignore[attr-defined]


def _start_params(args: list[str]) -> dict[str, Any]:
    """Parse ``trio-worker start ARGS`` with the real command: unknown flags fail here."""
    assert args[0] == "start", args
    context = start.make_context("start", list(args[1:]))
    return dict(context.params)


def _drain_budget(params: dict[str, Any]) -> float:
    return float(params["drain_timeout"]) + float(params["cancel_grace_seconds"])


def _mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity.removesuffix(suffix)) * factor
    raise AssertionError(f"unexpected memory quantity {quantity!r}")


def _documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def test_every_manifest_is_included_in_the_page() -> None:
    page = (DEPLOY.parent / "deploy.md").read_text()
    for path in DEPLOY.iterdir():
        # Shown in the page itself (docs/_hooks/generate.py keeps the block equal to the file).
        assert f"<!-- from: docs/deploy/{path.name} -->" in page, path.name


def test_worker_deployment_probes_grace_and_flags() -> None:
    (deployment,) = _documents("worker-deployment.yaml")
    assert deployment["kind"] == "Deployment"
    assert deployment["apiVersion"] == "apps/v1"
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["trio-worker"]
    params = _start_params(container["args"])
    assert params["with_healthcheck"] is True
    assert pod["terminationGracePeriodSeconds"] >= _drain_budget(params) + REPORT_TIMEOUT_SECONDS

    env = {item["name"]: item for item in container["env"]}
    assert env["PREFECT_WORKER_WEBSERVER_HOST"]["value"] == "0.0.0.0"
    port = int(env["PREFECT_WORKER_WEBSERVER_PORT"]["value"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    routes = _health_routes()
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert get["path"] in routes
        assert ports[get["port"]] == port
    # $(POD_NAME) is expanded by the kubelet from the env var of that name.
    assert "$(POD_NAME)" in container["args"]
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"

    resources = container["resources"]
    requested = _mebibytes(resources["requests"]["memory"])
    assert requested >= MEASURED_WORKER_RSS_MIB
    assert _mebibytes(resources["limits"]["memory"]) >= requested


def test_prefect_server_runs_on_postgresql() -> None:
    docs = {doc["kind"]: doc for doc in _documents("prefect-server.yaml")}
    assert set(docs) == {"Deployment", "Service"}
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["command"][:3] == ["prefect", "server", "start"]
    env = {item["name"]: item for item in container["env"]}
    assert "PREFECT_API_DATABASE_CONNECTION_URL" in env
    # Prefect lets these two through without the auth string.
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/api/health"
    # The worker Deployment's PREFECT_API_URL names this Service and port.
    service = docs["Service"]
    (port,) = service["spec"]["ports"]
    (worker,) = _documents("worker-deployment.yaml")
    (worker_container,) = worker["spec"]["template"]["spec"]["containers"]
    worker_env = {item["name"]: item for item in worker_container["env"]}
    api_url = worker_env["PREFECT_API_URL"]["value"]
    assert api_url == f"http://{service['metadata']['name']}:{port['port']}/api"


def test_systemd_unit_flags_and_stop_timeout() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "trio-worker@.service").read_text())
    service = unit["Service"]
    command = shlex.split(service["ExecStart"])
    assert command[0].endswith("/trio-worker")
    params = _start_params(command[1:])
    assert params["with_healthcheck"] is True
    assert params["pool"]
    # SIGTERM to the worker alone, which drains; the runs are its business.
    assert service["KillMode"] == "mixed"
    assert service["KillSignal"] == "SIGTERM"
    stop_seconds = float(service["TimeoutStopSec"])
    assert stop_seconds >= _drain_budget(params) + REPORT_TIMEOUT_SECONDS


def test_a_misspelled_flag_would_be_caught() -> None:
    # The checks above are only worth something if click refuses unknown flags.
    with pytest.raises(click.UsageError, match="--drain-timout"):
        _start_params(["start", "--pool", "p", "--drain-timout", "5"])

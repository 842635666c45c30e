"""Routes for health, version, flows, deployments, work pools, queues and workers."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import trio_worker._server._deployments as _deployments
import trio_worker._server._pool_workers as _pool_workers
import trio_worker._server._pools as _pools
import trio_worker._server._queues as _queues
from trio_worker._server._actions import (
    DeploymentCreate,
    DeploymentFlowRunCreate,
    FlowCreate,
    GetScheduledFlowRuns,
    WorkerHeartbeat,
    WorkPoolCreate,
    WorkPoolUpdate,
    WorkQueueCreate,
    WorkQueueUpdate,
)
from trio_worker._server._common import APIProblem
from trio_worker._server._flow_run_create import create_deployment_flow_run
from trio_worker._server._http import ApiState, empty, json_body, ok, parse, path_id, read_body

__all__ = ["API_VERSION", "PREFECT_VERSION", "core_routes"]

API_VERSION = "0.8.4"
"""The Prefect server API version this implementation speaks."""

PREFECT_VERSION = "3.9.1"
"""The Prefect server version whose behaviour was captured; ``/admin/version`` reports it
so that Prefect clients, which refuse a different major version, accept this server."""


def core_routes(api: ApiState) -> list[Route]:
    """Build the routes; handlers close over ``api``."""

    async def health(request: Request) -> Response:
        return ok(True)

    async def metrics(request: Request) -> Response:
        text = api.liveness_counts.exposition()
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def ready(request: Request) -> Response:
        if api.db is None:
            raise APIProblem(503, {"message": "Database not ready"})
        return ok({"message": "OK"})

    async def version(request: Request) -> Response:
        return ok(API_VERSION)

    async def admin_version(request: Request) -> Response:
        return ok(PREFECT_VERSION)

    async def hello(request: Request) -> Response:
        return ok("👋")

    async def csrf_token(request: Request) -> Response:
        return ok({"detail": "CSRF protection is disabled."}, 422)

    # flows
    async def create_flow(request: Request) -> Response:
        action = parse(FlowCreate, await read_body(request))
        flow, created = await api.run(_deployments.create_flow, action)
        return ok(flow, 201 if created else 200)

    async def read_flow(request: Request) -> Response:
        return ok(await api.run(_deployments.read_flow, path_id(request)))

    async def read_flow_by_name(request: Request) -> Response:
        return ok(await api.run(_deployments.read_flow_by_name, request.path_params["name"]))

    async def filter_flows(request: Request) -> Response:
        return ok(await api.run(_deployments.filter_flows, await json_body(request)))

    # deployments
    async def create_deployment(request: Request) -> Response:
        action = parse(DeploymentCreate, await read_body(request))
        deployment, created = await api.run(_deployments.create_deployment, action)
        return ok(deployment, 201 if created else 200)

    async def read_deployment(request: Request) -> Response:
        return ok(await api.run(_deployments.read_deployment, path_id(request)))

    async def delete_deployment(request: Request) -> Response:
        await api.run(_deployments.delete_deployment, path_id(request))
        return empty()

    async def read_deployment_by_name(request: Request) -> Response:
        params = request.path_params
        return ok(
            await api.run(_deployments.read_deployment_by_name, params["flow_name"], params["name"])
        )

    async def filter_deployments(request: Request) -> Response:
        return ok(await api.run(_deployments.filter_deployments, await json_body(request)))

    async def create_flow_run(request: Request) -> Response:
        deployment_id = path_id(request)
        action = parse(DeploymentFlowRunCreate, await json_body(request))
        run, created = await api.run(create_deployment_flow_run, api.bus, deployment_id, action)
        return ok(run, 201 if created else 200)

    # work pools, queues, workers
    async def create_pool(request: Request) -> Response:
        body = await read_body(request)
        action = parse(WorkPoolCreate, body)
        return ok(await api.run(_pools.create_pool, action, body), 201)

    async def read_pool(request: Request) -> Response:
        return ok(await api.run(_pools.read_pool, request.path_params["name"]))

    async def update_pool(request: Request) -> Response:
        body = await read_body(request)
        action = parse(WorkPoolUpdate, body)
        await api.run(_pools.update_pool, request.path_params["name"], action, body)
        return empty()

    async def delete_pool(request: Request) -> Response:
        await api.run(_pools.delete_pool, request.path_params["name"])
        return empty()

    async def filter_pools(request: Request) -> Response:
        return ok(await api.run(_pools.filter_pools, await json_body(request)))

    async def create_queue(request: Request) -> Response:
        action = parse(WorkQueueCreate, await read_body(request))
        return ok(await api.run(_queues.create_queue, request.path_params["name"], action), 201)

    async def read_queue(request: Request) -> Response:
        params = request.path_params
        return ok(await api.run(_queues.read_queue, params["name"], params["queue"]))

    async def update_queue(request: Request) -> Response:
        params = request.path_params
        action = parse(WorkQueueUpdate, await read_body(request))
        await api.run(_queues.update_queue, params["name"], params["queue"], action)
        return empty()

    async def filter_queues(request: Request) -> Response:
        name = request.path_params["name"]
        return ok(await api.run(_queues.filter_queues, name, await json_body(request)))

    async def heartbeat(request: Request) -> Response:
        action = parse(WorkerHeartbeat, await read_body(request))
        await api.run(_pool_workers.heartbeat, request.path_params["name"], action)
        return empty()

    async def filter_workers(request: Request) -> Response:
        name = request.path_params["name"]
        return ok(await api.run(_pool_workers.filter_workers, name, await json_body(request)))

    async def scheduled_runs(request: Request) -> Response:
        action = parse(GetScheduledFlowRuns, await json_body(request))
        name = request.path_params["name"]
        return ok(await api.run(_pool_workers.get_scheduled_flow_runs, name, action))

    return [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/version", version, methods=["GET"]),
        Route("/admin/version", admin_version, methods=["GET"]),
        Route("/hello", hello, methods=["GET"]),
        Route("/csrf-token", csrf_token, methods=["GET"]),
        Route("/flows/", create_flow, methods=["POST"]),
        Route("/flows/filter", filter_flows, methods=["POST"]),
        Route("/flows/name/{name}", read_flow_by_name, methods=["GET"]),
        Route("/flows/{id}", read_flow, methods=["GET"]),
        Route("/deployments/", create_deployment, methods=["POST"]),
        Route("/deployments/filter", filter_deployments, methods=["POST"]),
        Route("/deployments/name/{flow_name}/{name}", read_deployment_by_name, methods=["GET"]),
        Route("/deployments/{id}/create_flow_run", create_flow_run, methods=["POST"]),
        Route("/deployments/{id}", read_deployment, methods=["GET"]),
        Route("/deployments/{id}", delete_deployment, methods=["DELETE"]),
        Route("/work_pools/", create_pool, methods=["POST"]),
        Route("/work_pools/filter", filter_pools, methods=["POST"]),
        Route("/work_pools/{name}/queues", create_queue, methods=["POST"]),
        Route("/work_pools/{name}/queues/filter", filter_queues, methods=["POST"]),
        Route("/work_pools/{name}/queues/{queue}", read_queue, methods=["GET"]),
        Route("/work_pools/{name}/queues/{queue}", update_queue, methods=["PATCH"]),
        Route("/work_pools/{name}/workers/heartbeat", heartbeat, methods=["POST"]),
        Route("/work_pools/{name}/workers/filter", filter_workers, methods=["POST"]),
        Route("/work_pools/{name}/get_scheduled_flow_runs", scheduled_runs, methods=["POST"]),
        Route("/work_pools/{name}", read_pool, methods=["GET"]),
        Route("/work_pools/{name}", update_pool, methods=["PATCH"]),
        Route("/work_pools/{name}", delete_pool, methods=["DELETE"]),
    ]

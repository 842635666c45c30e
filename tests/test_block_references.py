"""Block references in a pool's template, resolved through a Prefect server's API.

The embedded API stores no blocks (it answers 404, see
tests/worker/test_porting.py); a Prefect server does. Here an
``httpx.MockTransport`` stands in for that other host, answering with the JSON
shape captured from Prefect (prefect-api-subset.md §3.10), so the client's
requests (paths, ``include_secrets``) and the rendering are checked together.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from trio_worker import BaseJobConfiguration, PrefectClient, TemplateError

TOKEN_ID = "5d4c6f0e-8a8e-4e43-9b59-0c3f4f3b1a11"
CONFIG_ID = "0b3a9c2d-1f2e-4d5c-8b7a-6e5f4d3c2b1a"

#: Documents as Prefect's server returns them (ids, schema ids and type trimmed to what matters).
DOCUMENTS: dict[str, dict[str, Any]] = {
    TOKEN_ID: {
        "id": TOKEN_ID,
        "name": "api-token",
        "data": {"value": "s3cr3t"},
        "block_schema_id": "9a8b7c6d-0000-4000-8000-000000000001",
        "block_type_id": "9a8b7c6d-0000-4000-8000-000000000002",
        "block_type_name": "Secret",
        "block_type": {"name": "Secret", "slug": "secret"},
        "block_document_references": {},
        "is_anonymous": False,
    },
    CONFIG_ID: {
        "id": CONFIG_ID,
        "name": "cfg",
        "data": {"image": "repo/img", "tier": "gold"},
        "block_type": {"name": "JSON", "slug": "json"},
        "is_anonymous": False,
    },
}


def prefect_blocks(request: httpx.Request) -> httpx.Response:
    """Answer the two block reads as Prefect's server does; 404 with its detail otherwise."""
    assert request.url.params.get("include_secrets") == "true", request.url
    parts = request.url.path.split("/")
    found = None
    if parts[2] == "block_documents":
        found = DOCUMENTS.get(parts[3])
    elif parts[2:4] == ["block_types", "slug"] and parts[5:7] == ["block_documents", "name"]:
        slug, name = parts[4], parts[7]
        found = next(
            (
                doc
                for doc in DOCUMENTS.values()
                if doc["block_type"]["slug"] == slug and doc["name"] == name
            ),
            None,
        )
    if found is None:
        return httpx.Response(404, json={"detail": "Block document not found"})
    return httpx.Response(200, content=json.dumps(found))


TEMPLATE = {
    "job_configuration": {
        "command": "run --image {{ image }}",
        "env": {
            "TOKEN": "{{ prefect.blocks.secret.api-token }}",
            "AUTH": "Bearer {{ prefect.blocks.secret.api-token }}",
            "IMAGE": "{{ prefect.blocks.json.cfg.image }}",
        },
        "labels": {"$ref": {"block_document_id": CONFIG_ID}},
    },
    "variables": {"properties": {"image": {"type": "string", "default": "x"}}},
}


async def test_placeholders_and_refs_are_read_from_the_api_before_the_backend_sees_them() -> None:
    async with PrefectClient(
        "http://prefect.example/api", transport=httpx.MockTransport(prefect_blocks)
    ) as client:
        configuration = await BaseJobConfiguration.from_template_and_values(
            TEMPLATE,
            {},
            get_block=client.read_block_document_data_by_name,
            get_block_document=client.read_block_document_data,
        )
    assert configuration.env == {"TOKEN": "s3cr3t", "AUTH": "Bearer s3cr3t", "IMAGE": "repo/img"}
    assert configuration.labels == {"image": "repo/img", "tier": "gold"}
    assert configuration.command == "run --image x"


async def test_a_missing_block_is_an_error_naming_it() -> None:
    template = {
        "job_configuration": {"env": {"TOKEN": "{{ prefect.blocks.secret.gone }}"}},
        "variables": {"properties": {}},
    }
    async with PrefectClient(
        "http://prefect.example/api", transport=httpx.MockTransport(prefect_blocks)
    ) as client:
        assert await client.read_block_document_data("no-such-id") is None
        with pytest.raises(TemplateError, match="Block not found: 'gone' of type 'secret'"):
            await BaseJobConfiguration.from_template_and_values(
                template, {}, get_block=client.read_block_document_data_by_name
            )

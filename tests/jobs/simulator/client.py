"""Calls to the simulator the tests of `jobs.simulator` make, and OpenRouter's published schemas to check answers."""

from __future__ import annotations

from functools import cache
from typing import Any

import httpx
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.support import OPENROUTER_SPEC as SPEC
from tests.support import TEST_API_KEY, Simulator, until

__all__ = [
    "AUTH",
    "TERMINAL",
    "api",
    "batch_body",
    "chat",
    "chat_requests",
    "create_batch",
    "get",
    "post_chat",
    "spec_errors",
    "spec_validator",
    "wait_for_batch",
]

TERMINAL = ("completed", "failed", "expired", "cancelled")

AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}


@cache
def spec_validator(pointer: str) -> Draft202012Validator:
    """A validator for the schema at `pointer` in OpenRouter's OpenAPI spec."""
    spec = yaml.load(SPEC.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 (a safe loader)
    resource: Resource[Any] = Resource.from_contents(spec, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:openrouter", resource)
    return Draft202012Validator({"$ref": f"urn:openrouter#{pointer}"}, registry=registry)


def chat(text: str, model: str = "sim/echo", **extra: Any) -> dict[str, Any]:
    """A chat request with one user message."""
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def post_chat(simulator: Simulator, body: dict[str, Any], **options: Any) -> httpx.Response:
    """POST /chat/completions with a key."""
    async with httpx.AsyncClient(**options) as client:
        return await client.post(f"{simulator.base_url}/chat/completions", json=body, headers=AUTH)


async def get(simulator: Simulator, path: str) -> httpx.Response:
    """GET a path of the API with a key."""
    async with httpx.AsyncClient() as client:
        return await client.get(f"{simulator.base_url}/{path}", headers=AUTH)


def spec_errors(pointer: str, value: Any) -> list[str]:
    """What the schema at `pointer` in OpenRouter's spec finds wrong with `value` (nothing: [])."""
    return [f"{list(e.absolute_path)}: {e.message}" for e in spec_validator(pointer).iter_errors(value)]


async def api(simulator: Simulator, method: str, path: str, **options: Any) -> httpx.Response:
    """A call to a path of the API (`/api/v1/...`) with a key; `headers` replaces the key's."""
    headers = options.pop("headers", AUTH)
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.request(method, f"{simulator.base_url}/{path}", headers=headers, **options)


def chat_requests(*texts: str, prefix: str = "req-") -> list[dict[str, Any]]:
    """Batch lines of one user message each, their custom_ids `req-0`, `req-1`..."""
    return [
        {"custom_id": f"{prefix}{i}", "body": {"messages": [{"role": "user", "content": text}]}}
        for i, text in enumerate(texts)
    ]


def batch_body(
    requests: list[dict[str, Any]],
    model: str = "sim/echo:batch",
    endpoint: str = "/v1/chat/completions",
    **extra: Any,
) -> dict[str, Any]:
    """A create's body in the order OpenRouter's stream parser needs: endpoint, model, the rest, requests."""
    return {"endpoint": endpoint, "model": model, **extra, "requests": requests}


async def create_batch(simulator: Simulator, body: dict[str, Any]) -> dict[str, Any]:
    """POST /batches, which must answer 202 with the batch `validating`."""
    created = await api(simulator, "POST", "batches", json=body)
    assert created.status_code == 202, created.text
    batch: dict[str, Any] = created.json()
    assert batch["status"] == "validating"
    return batch


async def wait_for_batch(
    simulator: Simulator, batch_id: str, statuses: tuple[str, ...] = TERMINAL, seconds: float = 30
) -> dict[str, Any]:
    """GET /batches/{id} until its status is one of `statuses`; that answer."""

    async def seen() -> dict[str, Any] | None:
        batch: dict[str, Any] = (await api(simulator, "GET", f"batches/{batch_id}")).json()
        return batch if batch["status"] in statuses else None

    return await until(seen, f"batch {batch_id} in {statuses}", seconds=seconds, every=0.02)

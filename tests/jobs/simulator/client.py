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
from tests.support import TEST_API_KEY, Simulator

__all__ = ["AUTH", "chat", "get", "post_chat", "spec_validator"]

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

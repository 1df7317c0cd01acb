"""What the client sends: at most three models per call, and bodies valid against OpenRouter's OpenAPI spec."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.support import OPENROUTER_SPEC, Simulator, Workers, chat_line, run_cli, write_jsonl
from worker.openrouter import chat_payload

SPEC = OPENROUTER_SPEC


@cache
def chat_request_validator() -> Draft202012Validator:
    spec = yaml.load(SPEC.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 (a safe loader)
    # OpenAPI 3.1 schemas are JSON Schema 2020-12; the spec document itself declares no $schema.
    resource: Resource[Any] = Resource.from_contents(spec, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:openrouter", resource)
    return Draft202012Validator({"$ref": "urn:openrouter#/components/schemas/ChatRequest"}, registry=registry)


def test_one_model_is_sent_as_model_and_several_as_models() -> None:
    assert orjson.loads(chat_payload({"messages": []}, ["a"])) == {"messages": [], "model": "a"}
    assert orjson.loads(chat_payload({"messages": []}, ["a", "b", "c"])) == {
        "messages": [],
        "models": ["a", "b", "c"],
    }


def test_the_spec_validator_rejects_what_openrouter_would() -> None:
    validator = chat_request_validator()
    assert not validator.is_valid({"model": "a"})
    assert not validator.is_valid({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"})
    assert validator.is_valid({"messages": [{"role": "user", "content": "x"}], "models": ["a", "b"]})


@pytest.mark.parametrize("chain", ["sim/echo", "sim/echo,sim/backup,sim/spare,sim/last-resort,sim/echo:free"])
async def test_every_body_sent_matches_the_chat_request_schema(
    env: dict[str, str], simulator: Simulator, tmp_path: Path, chain: str
) -> None:
    await simulator.configure(down_models=["sim/echo", "sim/backup", "sim/spare"])
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            chat_line("a", "plain"),
            {
                "custom_id": "b",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "messages": [
                        {"role": "system", "content": "be brief"},
                        {"role": "user", "content": [{"type": "text", "text": "parts"}]},
                    ],
                    "max_tokens": 20,
                    "temperature": 0.1,
                    "response_format": {"type": "json_object"},
                    "seed": 7,
                },
            },
        ],
    )
    assert run_cli(env, "submit", str(path), "--models", chain).returncode == 0
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(60) == [0], workers.output()[-3000:]
    calls = await simulator.calls()
    assert calls
    validator = chat_request_validator()
    for call in calls:
        errors = [e.message for e in validator.iter_errors(call["body"])]
        assert not errors, (call["body"], errors)
        assert len(call["body"].get("models", [])) <= 3

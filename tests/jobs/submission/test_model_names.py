"""Model names as batch files give them run as OpenRouter's ids; a name that is unknown or ambiguous is refused at
submit with the candidates, and a file's own models can be replaced wholesale."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.simulator.catalogue import CATALOG_FILE
from jobs.submission.model_names import model_names
from tests.support import Simulator, chat_line, run_cli, write_jsonl

OPENROUTER = frozenset(
    m["id"] for m in json.loads(files("jobs.simulator").joinpath(CATALOG_FILE).read_bytes())["data"]
)


def sent_to(call: dict[str, Any]) -> str:
    """The first model a call was sent to (a chain of one goes as `model`)."""
    body = call["body"]
    return str(body["models"][0] if "models" in body else body["model"])


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("gpt-4o-mini", "openai/gpt-4o-mini"),
        ("gpt-4.1", "openai/gpt-4.1"),
        ("claude-sonnet-4.5", "anthropic/claude-sonnet-4.5"),
        # A variant's bare name is that variant's, not its base model's.
        ("gpt-4o-mini:batch", "openai/gpt-4o-mini:batch"),
        # An id is itself.
        ("openai/gpt-4o", "openai/gpt-4o"),
    ],
)
def test_a_bare_name_one_provider_has_is_that_providers_model(name: str, model: str) -> None:
    assert model_names(OPENROUTER).resolve(name) == model


def test_an_unknown_name_is_refused_with_the_close_ids() -> None:
    with pytest.raises(ValueError, match="unknown model 'gpt-4o-mni'") as refused:
        model_names(OPENROUTER).resolve("gpt-4o-mni")
    assert "did you mean 'openai/gpt-4o-mini'" in str(refused.value)
    # A full id the catalogue lacks is not guessed at by its tail.
    with pytest.raises(ValueError, match="unknown model 'someone/gpt-4o-mini'"):
        model_names(OPENROUTER).resolve("someone/gpt-4o-mini")


def test_a_name_under_two_providers_is_refused_naming_both() -> None:
    names = model_names(frozenset({"a/shared", "b/shared", "a/only"}))
    assert names.resolve("only") == "a/only"
    with pytest.raises(ValueError, match="ambiguous model") as refused:
        names.resolve("shared")
    assert str(refused.value) == (
        "ambiguous model 'shared': OpenRouter has it under 2 providers ('a/shared', 'b/shared'); name one"
    )


async def test_a_file_of_bare_names_runs_as_their_ids_and_says_so_once(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    lines = [chat_line(f"r{i}", f"row {i}", model="gpt-4o-mini") for i in range(5)]
    lines.append(chat_line("other", "row x", model="gpt-4.1"))
    done = run_cli(env, "run", str(write_jsonl(tmp_path / "in.jsonl", lines)), "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "model names run as" in line]
    assert said == [
        "model names run as OpenRouter's ids: 'gpt-4.1' as 'openai/gpt-4.1', 'gpt-4o-mini' as "
        "'openai/gpt-4o-mini'"
    ]
    sent = sorted(sent_to(call) for call in await simulator.calls())
    assert sent == ["openai/gpt-4.1"] + ["openai/gpt-4o-mini"] * 5
    async with engine.connect() as conn:
        served = (await conn.execute(text("SELECT DISTINCT model FROM attempt ORDER BY 1"))).scalars().all()
    assert served == ["openai/gpt-4.1", "openai/gpt-4o-mini"]


async def test_replace_models_sends_every_line_to_the_batchs_chain(
    env: dict[str, str], simulator: Simulator, tmp_path: Path
) -> None:
    lines = [chat_line("a", "row a", model="gpt-4o-mini"), chat_line("b", "row b", model="nobody/unknown")]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    # Without it, the line naming an unknown model is refused; with it, neither line's model matters.
    refused = run_cli(env, "submit", str(path), "--models", "sim/echo")
    assert refused.returncode == 2
    assert "LINE 2: unknown model 'nobody/unknown'" in refused.stderr
    done = run_cli(
        env, "run", str(path), "--models", "sim/echo", "--replace-models", "-o", str(tmp_path / "out")
    )
    assert done.returncode == 0, done.stderr
    assert [sent_to(call) for call in await simulator.calls()] == ["sim/echo", "sim/echo"]
    alone = run_cli(env, "submit", str(path), "--replace-models")
    assert alone.returncode == 2
    assert "--replace-models needs --models" in alone.stderr


async def test_an_ambiguous_name_is_refused_at_submit_listing_the_candidates(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(
        models=[
            {"id": "first/shared", "prompt": "0.000001", "completion": "0.000001"},
            {"id": "second/shared", "prompt": "0.000001", "completion": "0.000001"},
        ]
    )
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x", model="shared")])
    refused = run_cli(env, "submit", str(path))
    assert refused.returncode == 2
    assert "LINE 1: ambiguous model 'shared': OpenRouter has it under 2 providers ('first/shared', " in (
        refused.stderr
    )
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM batch"))).scalar_one() == 0

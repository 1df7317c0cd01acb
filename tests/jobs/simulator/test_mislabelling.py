"""Models that mislabel: label noise (another valid label on a share of prompts, the same every time), a fixed
label, and models that err, set through `POST /_sim/config` or `orbatch simulator`'s options, on live calls and
Batch API lines alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.jobs.simulator.client import AUTH, batch_body, chat, create_batch, get, post_chat, wait_for_batch
from tests.support import Simulator

LABELS = ["spam", "ham", "phishing"]
VERDICT = {
    "type": "json_schema",
    "json_schema": {
        "name": "verdict",
        "schema": {
            "type": "object",
            "properties": {
                "label": {"type": "string", "enum": LABELS},
                "tone": {"type": "string", "enum": ["calm", "urgent"]},
                "summary": {"type": "string"},
            },
            "required": ["label", "tone", "summary"],
        },
    },
}
PROMPTS = [f"mail {i}" for i in range(200)]


async def answers(simulator: Simulator, model: str, prompts: list[str] = PROMPTS) -> list[dict[str, Any]]:
    """Each prompt's reply (parsed) from `model`, asked with the verdict schema."""
    replies = []
    async with httpx.AsyncClient(base_url=simulator.base_url, headers=AUTH) as client:
        for prompt in prompts:
            answered = await client.post(
                "/chat/completions", json=chat(prompt, model, response_format=VERDICT)
            )
            assert answered.status_code == 200, answered.text
            replies.append(orjson.loads(answered.json()["choices"][0]["message"]["content"]))
    return replies


def schema_line(custom_id: str, text: str) -> dict[str, Any]:
    """A batch line asking for the verdict schema."""
    return {
        "custom_id": custom_id,
        "body": {"messages": [{"role": "user", "content": text}], "response_format": VERDICT},
    }


async def test_a_model_with_label_noise_answers_another_valid_label_on_its_share_of_prompts(
    simulator: Simulator,
) -> None:
    right = await answers(simulator, "sim/echo")
    await simulator.configure(label_noise={"sim/echo": 0.3})
    noisy = await answers(simulator, "sim/echo")
    changed = [i for i, (a, b) in enumerate(zip(right, noisy, strict=True)) if a != b]
    assert 30 < len(changed) < 90
    for i in changed:
        # Every enum field holds another value of its enum; the rest of the reply is the right one.
        assert noisy[i]["label"] in LABELS
        assert noisy[i]["label"] != right[i]["label"]
        assert noisy[i]["tone"] != right[i]["tone"]
        assert noisy[i]["summary"] == right[i]["summary"]
    # Drawn from the model and the prompt alone: asked again, the same records are mislabelled the same way.
    assert await answers(simulator, "sim/echo") == noisy
    # A model without noise is untouched, and so is a request that asks for no schema.
    assert await answers(simulator, "sim/backup") == right
    plain = await post_chat(simulator, chat("mail 1"))
    assert plain.json()["choices"][0]["message"]["content"] == "echo: mail 1"


async def test_two_models_with_label_noise_disagree_on_some_records(simulator: Simulator) -> None:
    await simulator.configure(label_noise={"sim/echo": 0.2, "sim/backup": 0.2})
    first = [a["label"] for a in await answers(simulator, "sim/echo")]
    second = [a["label"] for a in await answers(simulator, "sim/backup")]
    disagree = sum(a != b for a, b in zip(first, second, strict=True))
    # Each mislabels its own fifth of the records: they disagree on about a third of them, agree on the rest.
    assert 30 < disagree < 110


async def test_a_model_with_a_fixed_label_always_answers_it(simulator: Simulator) -> None:
    right = await answers(simulator, "sim/echo", PROMPTS[:30])
    await simulator.configure(fixed_label={"sim/echo": "spam"})
    fixed = await answers(simulator, "sim/echo", PROMPTS[:30])
    assert {a["label"] for a in fixed} == {"spam"}
    # A field whose enum does not hold the label keeps its own value; the reply stays valid JSON.
    assert [a["tone"] for a in fixed] == [a["tone"] for a in right]
    assert [a["summary"] for a in fixed] == [a["summary"] for a in right]
    assert {a["label"] for a in await answers(simulator, "sim/backup", PROMPTS[:30])} != {"spam"}


async def test_settings_for_a_model_apply_to_its_batch_lines_as_to_its_live_calls(
    simulator: Simulator,
) -> None:
    await simulator.configure(fixed_label={"sim/echo": "phishing"}, label_noise={"sim/backup": 0.5})
    texts = PROMPTS[:40]
    live_noisy = await answers(simulator, "sim/backup", texts)
    requests = [schema_line(f"req-{i}", t) for i, t in enumerate(texts)]
    contents: dict[str, list[str]] = {}
    for model in ("sim/echo:batch", "sim/backup:batch"):
        created = await create_batch(simulator, batch_body(requests, model))
        done = await wait_for_batch(simulator, created["id"])
        assert done["status"] == "completed", done
        by_id = {r["custom_id"]: r["response"]["body"] for r in done["results"]}
        contents[model] = [by_id[f"req-{i}"]["choices"][0]["message"]["content"] for i in range(len(texts))]
    assert {orjson.loads(c)["label"] for c in contents["sim/echo:batch"]} == {"phishing"}
    # The same records are mislabelled the same way in a batch as live.
    assert [orjson.loads(c) for c in contents["sim/backup:batch"]] == live_noisy


async def test_a_model_that_errs_errs_in_its_batch_lines_too(simulator: Simulator) -> None:
    await simulator.configure(err_rate={"sim/echo": 1.0})
    created = await create_batch(simulator, batch_body([schema_line("req-0", "mail 0")]))
    done = await wait_for_batch(simulator, created["id"])
    (line,) = done["results"]
    content = line["response"]["body"]["choices"][0]["message"]["content"]
    assert not content.endswith("}")  # a valid reply cut short: invalid JSON


async def test_a_malformed_setting_is_refused_and_changes_nothing(simulator: Simulator) -> None:
    for wrong in (
        {"label_noise": {"sim/echo": 1.5}},
        {"label_noise": ["sim/echo"]},
        {"err_rate": {"sim/echo": "often"}},
        {"fixed_label": {"sim/echo": ""}},
    ):
        async with httpx.AsyncClient() as client:
            refused = await client.post(f"{simulator.root}/_sim/config", content=orjson.dumps(wrong))
        assert refused.status_code == 400, (wrong, refused.text)
    assert await answers(simulator, "sim/echo", PROMPTS[:5]) == await answers(
        simulator, "sim/backup", PROMPTS[:5]
    )


async def test_the_command_line_starts_a_simulator_whose_models_mislabel(tmp_path: Path) -> None:
    started = Simulator(
        tmp_path / "simulator.log",
        "--fixed-label",
        "sim/echo=ham",
        "--label-noise",
        "sim/backup=1",
        "--err-rate",
        "sim/spare=1",
        "--err-label",
        "unsure",
    )
    try:
        assert (await get(started, "models")).status_code == 200
        assert {a["label"] for a in await answers(started, "sim/echo", PROMPTS[:10])} == {"ham"}
        right = await answers(started, "sim/last-resort", PROMPTS[:10])
        noisy = await answers(started, "sim/backup", PROMPTS[:10])
        assert all(a["label"] != b["label"] for a, b in zip(right, noisy, strict=True))
        erring = await post_chat(started, chat("mail 1", "sim/spare", response_format=VERDICT))
        assert orjson.loads(erring.json()["choices"][0]["message"]["content"])["label"] == "unsure"
    finally:
        started.stop()

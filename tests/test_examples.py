"""The examples run as the README tells a user to run them: the quick start, labelling, summarising, nightly."""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import orjson
import psutil
import pytest

from tests.support import ROOT, Workers, run_cli, write_jsonl

DATA = ROOT / "examples" / "data"


def _fresh_machine_env(data_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ORBATCH_", "OPENROUTER_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env["ORBATCH_DATA_DIR"] = str(data_dir)
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}"
    return env


def _bash(
    script: str, env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - argv built here, no shell
        ["bash", str(ROOT / script), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_the_example_sets_are_what_the_readme_says() -> None:
    spam = [orjson.loads(line) for line in (DATA / "spam.jsonl").read_bytes().splitlines()]
    assert len(spam) == 300
    assert sum(row["truth"] == "spam" for row in spam) == 100
    assert all({"id", "truth", "subject", "body"} <= row.keys() for row in spam)
    with gzip.open(DATA / "sotu.jsonl.gz") as f:
        sotu = [orjson.loads(line) for line in f]
    assert len(sotu) == 233
    assert (sotu[0]["year"], sotu[-1]["year"]) == (1790, 2021)


def test_the_quick_start_runs_on_a_machine_with_no_services_and_no_key(
    tmp_path: Path, data_dir: Path
) -> None:
    done = _bash("examples/quickstart.sh", _fresh_machine_env(data_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "using the local OpenRouter simulator" in done.stdout
    assert "embedded postgres and redis" in done.stderr
    # The first answer as a person reads it, and where the rest are; no raw JSON.
    assert (
        # The simulator's echo stops at the line's max_tokens (5, four characters each), as a model's answer does.
        "First answer, sentiment-1 (google/gemma-4-31b-it:free): echo: The battery la\n" in done.stdout
    )
    assert "All 12 results: out/quickstart/results.jsonl" in done.stdout
    assert "{" not in done.stdout
    # The embedded Postgres and Redis stopped with the run.
    data = str(data_dir)
    assert not [p for p in psutil.process_iter(["cmdline"]) if data in " ".join(p.info["cmdline"] or [])]


@pytest.mark.slow
def test_the_labelling_example_labels_and_scores_all_300_emails(tmp_path: Path, data_dir: Path) -> None:
    done = _bash("examples/labelling/run.sh", _fresh_machine_env(data_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    # The vote's majority scored against the corpus's labels, each model's accuracy and their agreement.
    assert "'label' against 'truth', 300 records, accuracy" in done.stdout
    assert "cohen kappa" in done.stdout
    labels = [orjson.loads(line) for line in (ROOT / "out" / "spam-labels.jsonl").read_bytes().splitlines()]
    assert len(labels) == 300
    assert all(
        set(row["votes"]) == {"google/gemma-4-31b-it:free", "openai/gpt-oss-20b:free"} for row in labels
    )
    assert all(row["label"] in ("spam", "ham", None) and row["reason"] for row in labels)
    # The simulator's second model gives the other label on a tenth of the e-mails: those are the ties.
    apart = (ROOT / "out" / "spam-disagreements.jsonl").read_bytes().splitlines()
    assert 10 < len(apart) < 60
    assert all(orjson.loads(line)["agreement"]["label"] == 0.5 for line in apart)
    # `orbatch status` lists the batch by its name, and finds it by it.
    status = run_cli(_fresh_machine_env(data_dir), "status", "spam-labels", "--json")
    assert status.returncode == 0, status.stderr
    assert (orjson.loads(status.stdout)["name"], orjson.loads(status.stdout)["status"]) == (
        "spam-labels",
        "completed",
    )


@pytest.mark.slow
def test_the_summarisation_example_summarises_the_longest_addresses_in_parts_with_a_small_model(
    tmp_path: Path, data_dir: Path
) -> None:
    done = _bash("examples/summarisation/run.sh", _fresh_machine_env(data_dir), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    summaries = (ROOT / "out" / "sotu-summaries.jsonl").read_bytes().splitlines()
    assert len(summaries) == 233
    longest = [
        orjson.loads(line)
        for line in (ROOT / "out" / "sotu-longest-summaries.jsonl").read_bytes().splitlines()
    ]
    assert [(r["president"], r["year"]) for r in longest] == [
        ("Jimmy Carter", 1981),
        ("Harry S Truman", 1946),
        ("Theodore Roosevelt", 1907),
    ]
    # Each is one summary, made by hundreds of calls of a model whose window holds 512 tokens.
    assert all(r["calls"] > 300 and "[Not the document itself" in r["answer"] for r in longest)
    assert "Jimmy Carter 1981: 217 kB summarised in" in done.stdout


async def test_nightly_writes_results_beside_each_new_file_once(env: dict[str, str], tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_jsonl(inbox / "monday.jsonl", [{"president": "A", "year": 1, "text": "one"}])
    write_jsonl(inbox / "tuesday.jsonl", [{"president": "B", "year": 2, "text": "two"}])
    env = {**env, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}", "MODELS": "sim/echo"}
    workers = Workers(env, tmp_path, 1)
    try:
        done = _bash("examples/nightly/nightly.sh", env, str(inbox))
        assert done.returncode == 0, done.stdout + done.stderr
        monday = orjson.loads((inbox / "monday.results.jsonl").read_bytes())
        assert monday["president"] == "A"
        assert "echo: Summarise this State of the Union address, given by A in 1" in monday["answer"]
        assert (inbox / "tuesday.results.jsonl").exists()
        # Each file's batch is named after it, so `orbatch status` lists them by name.
        listed = orjson.loads(run_cli(env, "status", "--json").stdout)
        assert sorted(batch["name"] for batch in listed) == ["nightly:monday.jsonl", "nightly:tuesday.jsonl"]
        again = _bash("examples/nightly/nightly.sh", env, str(inbox))
        assert again.returncode == 0
        assert again.stdout == ""
    finally:
        workers.kill()

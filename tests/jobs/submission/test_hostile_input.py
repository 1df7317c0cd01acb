"""Hostile input: every bad file gets a clear error with its line, in bounded memory and time, storing nothing."""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.formats.input_lines import LineError, ParsedLine, parse_line
from jobs.submission.submit import SubmitError, SubmitOptions, submit_file
from tests.support import ROOT, chat_line, write_jsonl

OPTIONS = SubmitOptions(models=["sim/echo"])


async def nothing_stored(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        counts = (
            await conn.execute(text("SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM request)"))
        ).one()
    return tuple(counts) == (0, 0)


async def rejected(engine: AsyncEngine, path: Path) -> SubmitError:
    with pytest.raises(SubmitError) as caught:
        await submit_file(engine, path, OPTIONS)
    assert await nothing_stored(engine)
    return caught.value


async def test_a_file_of_blank_lines_is_an_empty_file(engine: AsyncEngine, tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_bytes(b"\n  \n\r\n\t\n")
    error = await rejected(engine, path)
    assert "no requests in the file" in str(error)


async def test_bom_and_crlf_files_are_read_as_plain_jsonl(engine: AsyncEngine, tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + orjson.dumps(chat_line("a", "x"))
        + b"\r\n"
        + orjson.dumps(chat_line("b", "y"))
        + b"\r\n"
    )
    report = await submit_file(engine, path, OPTIONS)
    assert report.total == 2


async def test_a_file_that_is_not_jsonl_at_all(engine: AsyncEngine, tmp_path: Path) -> None:
    csv = tmp_path / "data.csv"
    csv.write_text("id,text\n1,hello\n2,world\n")
    error = await rejected(engine, csv)
    assert [str(e) for e in error.errors] == [
        "LINE 1: not valid JSON at column 1: unexpected character, expected a JSON value",
        "LINE 2: not valid JSON at column 2: unexpected content after document",
        "LINE 3: not valid JSON at column 2: unexpected content after document",
    ]
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40)
    error = await rejected(engine, png)
    assert str(error.errors[0]).startswith("LINE 1: not valid UTF-8 (byte 0x89 at column 1)")


async def test_damaged_gzip_is_refused_saying_where_and_keeps_what_was_stored(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    kept = await submit_file(engine, write_jsonl(tmp_path / "good.jsonl", [chat_line("a", "x")]), OPTIONS)
    lines = b"".join(orjson.dumps(chat_line(f"r{i}", "x" * 50)) + b"\n" for i in range(2000))
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(gzip.compress(lines)[:-20])
    not_gzip = tmp_path / "fake.jsonl.gz"
    not_gzip.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    for path, why in ((truncated, "ends before its end marker"), (not_gzip, "unknown compression method")):
        with pytest.raises(SubmitError) as caught:
            await submit_file(engine, path, OPTIONS)
        assert f"{path}: the gzip data is damaged after line" in caught.value.reason
        assert why in caught.value.reason
        assert "nothing was queued" in caught.value.reason
    async with engine.connect() as conn:
        stored = (await conn.execute(text("SELECT batch_id, count(*) FROM request GROUP BY 1"))).all()
    assert [tuple(r) for r in stored] == [(kept.batch_id, 1)]


async def test_deeply_nested_json_is_refused_by_line(engine: AsyncEngine, tmp_path: Path) -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    path = write_jsonl(tmp_path / "deep.jsonl", [chat_line("ok", "x"), deep, _dumps_deep(2000)])
    started = time.monotonic()
    error = await rejected(engine, path)
    assert time.monotonic() - started < 10
    assert [e.line_no for e in error.errors] == [2, 3]
    assert all("not valid JSON" in str(e) for e in error.errors)


def _dumps_deep(depth: int) -> bytes:
    # orjson refuses to serialise this deep, so the line is written by hand.
    return (
        b'{"custom_id": "n", "messages": [{"role": "user", "content": "x"}], "metadata": '
        + b'{"a": ' * depth
        + b"{}"
        + b"}" * depth
        + b"}"
    )


def _peak_rss_mb(code: str, *args: str) -> float:
    done = subprocess.run(  # noqa: S603 - argv built here, no shell
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip().splitlines()[-1]) / 1024


_SUBMIT_AND_MEASURE = (
    "import asyncio, resource, sys\n"
    "from pathlib import Path\n"
    "from jobs.core.db import create_engine\n"
    "from jobs.submission.submit import SubmitError, SubmitOptions, submit_file\n"
    "async def go():\n"
    "    engine = create_engine(sys.argv[1], pool_size=1)\n"
    "    try:\n"
    "        await submit_file(engine, Path(sys.argv[2]), SubmitOptions(models=['sim/echo']))\n"
    "    except SubmitError as e:\n"
    "        print(e.invalid, str(e.errors[0]) if e.errors else '', sep='|')\n"
    "    await engine.dispose()\n"
    "asyncio.run(go())\n"
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so it would report the parent's peak.
    "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
)


@pytest.mark.slow
async def test_a_50_mb_line_is_refused_without_holding_it(
    env: dict[str, str], engine: AsyncEngine, tmp_path: Path
) -> None:
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as f:
        f.write(orjson.dumps(chat_line("a", "x")) + b"\n")
        f.write(b'{"custom_id": "big", "messages": [{"role": "user", "content": "')
        for _ in range(50):
            f.write(b"y" * (1 << 20))
        f.write(b'"}]}\n')
        f.write(orjson.dumps(chat_line("c", "z")) + b"\n")
    small = write_jsonl(tmp_path / "small.jsonl", [chat_line("a", "x"), b"[]"])
    baseline = _peak_rss_mb(_SUBMIT_AND_MEASURE, env["DATABASE_URL"], str(small))
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _SUBMIT_AND_MEASURE, env["DATABASE_URL"], str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    report, rss_kb = done.stdout.strip().splitlines()
    assert report == "1|LINE 2: longer than the 16777216 byte limit for one line"
    # The reader keeps at most the 16 MiB limit of the line, never its 50 MB.
    assert int(rss_kb) / 1024 < baseline + 40, (baseline, int(rss_kb) / 1024)
    assert await nothing_stored(engine)


@pytest.mark.slow
async def test_a_million_duplicate_ids_are_reported_in_bounded_memory_and_time(
    env: dict[str, str], engine: AsyncEngine, tmp_path: Path
) -> None:
    line = orjson.dumps(chat_line("same", "x")) + b"\n"
    path = tmp_path / "dups.jsonl"
    path.write_bytes(line * 1_000_000)
    started = time.monotonic()
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _SUBMIT_AND_MEASURE, env["DATABASE_URL"], str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.monotonic() - started
    report, rss_kb = done.stdout.strip().splitlines()
    assert report == '999999|LINE 2: duplicate custom_id "same" (first on line 1)'
    small = tmp_path / "two.jsonl"
    small.write_bytes(line * 2)
    baseline = _peak_rss_mb(_SUBMIT_AND_MEASURE, env["DATABASE_URL"], str(small))
    # A million duplicates are counted by Postgres, not held here: memory is that of a two-line file.
    assert int(rss_kb) / 1024 < baseline + 15, (baseline, int(rss_kb) / 1024)
    assert elapsed < 240
    assert await nothing_stored(engine)


# Property-based: whatever a line holds, the parser answers with a request or a LineError, nothing else.

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_any_bytes_give_a_request_or_a_line_error(raw: bytes) -> None:
    try:
        parse_line(raw, 9)
    except LineError as exc:
        assert str(exc).startswith("LINE 9: ")  # noqa: PT017 (any other exception fails the property)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(
            ["custom_id", "messages", "model", "models", "temperature", "body", "url", "stream", "max_tokens"]
        )
        | st.text(max_size=6),
        json_values,
        max_size=6,
    )
)
def test_any_json_object_gives_a_request_or_a_line_error(obj: dict[str, object]) -> None:
    try:
        parsed = parse_line(orjson.dumps(obj), 3)
    except LineError as exc:
        assert str(exc).startswith("LINE 3: ")  # noqa: PT017 (any other exception fails the property)
        return
    assert isinstance(parsed, ParsedLine)
    assert isinstance(parsed.custom_id, str)
    assert parsed.custom_id
    assert "model" not in parsed.body
    assert "models" not in parsed.body


message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=30)}
)


@settings(max_examples=200)
@given(
    custom_id=st.text(min_size=1, max_size=40),
    messages=st.lists(message, min_size=1, max_size=4),
    temperature=st.none() | st.floats(min_value=0, max_value=2),
    models=st.lists(
        st.text(alphabet="abc/:-", min_size=1, max_size=12).filter(str.strip), min_size=1, max_size=5
    ),
)
def test_a_valid_line_keeps_its_id_messages_parameters_and_chain(
    custom_id: str, messages: list[dict[str, str]], temperature: float | None, models: list[str]
) -> None:
    line = {"custom_id": custom_id, "messages": messages, "models": models}
    if temperature is not None:
        line["temperature"] = temperature
    if "\x00" in orjson.dumps(line).decode() or "\\u0000" in orjson.dumps(line).decode():
        return
    parsed = parse_line(orjson.dumps(line), 1)
    assert parsed is not None
    assert parsed.custom_id == custom_id
    assert parsed.body["messages"] == messages
    assert parsed.body.get("temperature") == temperature
    expected: list[str] = []
    for m in models:
        if m.strip() not in expected:
            expected.append(m.strip())
    assert parsed.models == expected

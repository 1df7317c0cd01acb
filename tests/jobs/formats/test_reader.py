"""Reading input: numbered lines from any block boundaries, gzip of any shape, no line held past its limit."""

from __future__ import annotations

import gzip
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from jobs.formats.reader import DamagedGzip, LineReader, read_lines


@dataclass
class Blocks:
    """A source that hands its content over in blocks of a given size."""

    data: bytes
    size: int = 7
    name: str = "in.jsonl"
    where: str = "in.jsonl"
    sha256: str = ""

    async def blocks(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), self.size):
            yield self.data[i : i + self.size]


async def lines_of(data: bytes, limit: int = 1000, size: int = 7) -> list[tuple[int, bytes | None]]:
    return [line async for block in read_lines(Blocks(data, size), limit) for line in block]


async def test_bom_and_crlf_are_stripped_and_blank_lines_keep_their_numbers() -> None:
    data = b'\xef\xbb\xbf{"a": 1}\r\n\r\n{"b": 2}'
    for size in (1, 3, 7, 100):
        assert await lines_of(data, size=size) == [(1, b'{"a": 1}'), (2, b""), (3, b'{"b": 2}')]


async def test_an_overlong_line_is_reported_without_being_kept_whatever_the_blocks() -> None:
    data = b'{"a": 1}\n' + b"x" * 5000 + b"\n" + b'{"b": 2}\n' + b"y" * 101
    for size in (1, 64, 4096, 10_000):
        assert await lines_of(data, limit=100, size=size) == [
            (1, b'{"a": 1}'),
            (2, None),
            (3, b'{"b": 2}'),
            (4, None),
        ]


def test_a_line_at_exactly_the_limit_is_kept() -> None:
    reader = LineReader(10)
    assert reader.feed(b"0123456789\n" + b"0123456789\r\n") == [(1, b"0123456789"), (2, b"0123456789")]


async def test_gzip_is_read_decompressed_across_members_and_zero_padding() -> None:
    plain = b"".join(b'{"n": %d}\n' % i for i in range(2000))
    members = gzip.compress(plain[:7000]) + gzip.compress(plain[7000:]) + b"\x00" * 16
    lines = await lines_of(members, size=333)
    assert [raw for _, raw in lines] == plain.splitlines()


async def test_truncated_or_corrupt_gzip_is_damaged_not_a_crash() -> None:
    whole = gzip.compress(b'{"n": 1}\n' * 1000)
    with pytest.raises(DamagedGzip, match="ends before its end marker"):
        await lines_of(whole[: len(whole) // 2])
    corrupt = whole[:20] + bytes(b ^ 0xFF for b in whole[20:60]) + whole[60:]
    with pytest.raises(DamagedGzip):
        await lines_of(corrupt)


async def test_a_decompression_bomb_is_read_in_bounded_memory() -> None:
    # 256 MiB of one byte compresses to a quarter of a MiB; reading it never holds much of it.
    bomb = gzip.compress(b"z" * (256 << 20), 9)
    tracemalloc.start()
    try:
        lines = await lines_of(bomb, limit=1 << 20, size=1 << 16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == [(1, None)]
    assert peak < 16 << 20

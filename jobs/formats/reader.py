"""Input bytes to numbered lines: a file on disk or a stored upload, gzip or not, no line held past its limit."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = ["DamagedGzip", "FileSource", "LineReader", "Source", "file_sha256", "read_lines"]

# Input is read (and gzip decompressed) this much at a time.
READ_BLOCK_BYTES = 1024 * 1024

_BOM = b"\xef\xbb\xbf"
_GZIP_MAGIC = b"\x1f\x8b"


class Source(Protocol):
    """Where a batch's lines come from: its name, where it is (for messages), its sha256, its bytes in blocks."""

    name: str
    where: str
    sha256: str

    def blocks(self) -> AsyncIterator[bytes]:
        """The raw (possibly gzip-compressed) content, in blocks."""
        ...


def file_sha256(path: Path) -> str:
    """The file's sha256, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(READ_BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(slots=True)
class FileSource:
    """A file on disk; its sha256 is read when the source is made."""

    path: Path
    name: str
    where: str
    sha256: str

    @classmethod
    def open(cls, path: Path) -> FileSource:
        """A source for the file at `path`."""
        return cls(path, path.name, str(path), file_sha256(path))

    async def blocks(self) -> AsyncIterator[bytes]:
        """The file's bytes; the reads are short and local, so they run on the loop."""
        with self.path.open("rb") as f:
            while block := f.read(READ_BLOCK_BYTES):
                yield block


class DamagedGzip(ValueError):
    """Compressed input that stops making sense: truncated, or not gzip after its magic bytes."""


class _Gunzip:
    """Decompresses concatenated gzip members piece by piece, never more than one block of output at a time."""

    def __init__(self) -> None:
        self._inflate = zlib.decompressobj(wbits=31)
        # Bytes of a member were fed and its end was not seen yet.
        self._member_open = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decompressed pieces of this compressed block."""
        while data:
            if not self._member_open:
                # Writers may pad between or after members with zero bytes; Python's gzip skips them too.
                data = data.lstrip(b"\x00")
                if not data:
                    return
            self._member_open = True
            try:
                piece = self._inflate.decompress(data, READ_BLOCK_BYTES)
            except zlib.error as exc:
                raise DamagedGzip(str(exc)) from None
            if piece:
                yield piece
            if self._inflate.eof:
                # A gzip file may hold several members one after another; the next starts here.
                data = self._inflate.unused_data
                self._inflate = zlib.decompressobj(wbits=31)
                self._member_open = False
            else:
                data = self._inflate.unconsumed_tail

    def finish(self) -> None:
        """DamagedGzip when the data stopped inside a member."""
        if self._member_open:
            raise DamagedGzip("the compressed data ends before its end marker (a truncated file?)")


class LineReader:
    """Splits blocks of bytes into (line number, line) pairs; a line over the limit is `None`, never held whole.

    The first line loses a UTF-8 BOM; every line loses its `\\n` or `\\r\\n`. Blank lines are yielded (the
    parser skips them) so that line numbers stay the file's own.
    """

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        # What may be held of an unfinished line: the limit plus a BOM and a `\r` that are not counted.
        self._hold_limit = max_line_bytes + len(_BOM) + 1
        self.line_no = 0
        self._partial: list[bytes] = []
        self._partial_size = 0
        self._overlong = False

    def _emit(self, line: bytes | None, out: list[tuple[int, bytes | None]]) -> None:
        self.line_no += 1
        if line is not None:
            if self.line_no == 1 and line.startswith(_BOM):
                line = line[len(_BOM) :]
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line_bytes:
                line = None
        out.append((self.line_no, line))

    def feed(self, block: bytes) -> list[tuple[int, bytes | None]]:
        """The lines this block completes."""
        out: list[tuple[int, bytes | None]] = []
        start = 0
        while True:
            end = block.find(b"\n", start)
            if end < 0:
                break
            piece = block[start:end]
            if self._overlong or self._partial_size + len(piece) > self._hold_limit:
                self._emit(None, out)
            elif self._partial:
                self._partial.append(piece)
                self._emit(b"".join(self._partial), out)
            else:
                self._emit(piece, out)
            self._partial, self._partial_size, self._overlong = [], 0, False
            start = end + 1
        rest = block[start:]
        if rest and not self._overlong:
            if self._partial_size + len(rest) > self._hold_limit:
                # Past the limit: drop what is held and the rest of the line as it arrives.
                self._partial, self._partial_size, self._overlong = [], 0, True
            else:
                self._partial.append(rest)
                self._partial_size += len(rest)
        return out

    def finish(self) -> list[tuple[int, bytes | None]]:
        """The last line, when the input does not end with a newline."""
        out: list[tuple[int, bytes | None]] = []
        if self._overlong:
            self._emit(None, out)
        elif self._partial:
            self._emit(b"".join(self._partial), out)
        self._partial, self._partial_size, self._overlong = [], 0, False
        return out


async def read_lines(
    source: Source, max_line_bytes: int, progress: Callable[[int], None] | None = None
) -> AsyncIterator[list[tuple[int, bytes | None]]]:
    """The source's lines, a few at a time; gzip (known by its magic bytes) is read decompressed.

    `progress` is told how many raw bytes (compressed, for gzip) were read so far. DamagedGzip when compressed
    data is truncated or corrupt.
    """
    reader = LineReader(max_line_bytes)
    gunzip: _Gunzip | None = None
    first = True
    consumed = 0
    async for block in source.blocks():
        if not block:
            continue
        consumed += len(block)
        if first:
            first = False
            if block.startswith(_GZIP_MAGIC):
                gunzip = _Gunzip()
        if gunzip is None:
            lines = reader.feed(block)
            if lines:
                yield lines
        else:
            for piece in gunzip.feed(block):
                lines = reader.feed(piece)
                if lines:
                    yield lines
        if progress is not None:
            progress(consumed)
    if gunzip is not None:
        gunzip.finish()
    last = reader.finish()
    if last:
        yield last

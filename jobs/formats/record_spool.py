"""Records from anywhere (a table, a DataFrame, a list) as a batch's source: spooled to a JSONL file, hashed."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from jobs.core.errors import BadInput
from jobs.formats.reader import READ_BLOCK_BYTES

__all__ = ["SpooledRecords", "spool_records"]

# orjson writes numpy arrays and scalars itself, and datetimes as ISO 8601 text.
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class RecordError(BadInput):
    """A record that cannot be sent as JSON; the message names the row and the value's type."""


def _to_json(value: Any) -> Any:
    """What orjson cannot write itself: pandas' missing markers, numpy and Arrow scalars, decimals."""
    if value is None or value.__class__.__name__ in {"NAType", "NaTType"}:
        return None
    item = getattr(value, "item", None)  # numpy scalars and 0-d arrays
    if callable(item):
        return item()
    as_py = getattr(value, "as_py", None)  # Arrow scalars
    if callable(as_py):
        return as_py()
    isoformat = getattr(value, "isoformat", None)  # pandas Timestamps, dates and times
    if callable(isoformat):
        return isoformat()
    if value.__class__.__name__ == "Decimal":
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(type(value).__name__)


@dataclass(slots=True)
class SpooledRecords:
    """A temporary JSONL file of records: a `Source` for the intake, removed by `close()`."""

    path: Path
    name: str
    where: str
    sha256: str
    rows: int

    async def blocks(self) -> AsyncIterator[bytes]:
        """The file's bytes; local reads, short enough to run on the loop."""
        with self.path.open("rb") as f:
            while block := f.read(READ_BLOCK_BYTES):
                yield block

    def close(self) -> None:
        """Remove the spool file."""
        self.path.unlink(missing_ok=True)


def spool_records(
    chunks: Iterable[list[dict[str, Any]]], folder: Path, name: str, where: str
) -> SpooledRecords:
    """Write the records, one JSON line each, to a file in `folder`, hashing them on the way.

    Memory holds one chunk. The hash is of the records' JSON, so the same records give the same batch again.
    RecordError names the first record (1-based) that is not a JSON object or holds a value JSON cannot.
    """
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, spool = tempfile.mkstemp(prefix="records-", suffix=".jsonl", dir=folder)
    path = Path(spool)
    rows = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                lines = []
                for record in chunk:
                    rows += 1
                    lines.append(_line(record, rows, where))
                data = b"".join(lines)
                digest.update(data)
                f.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return SpooledRecords(path, name, where, digest.hexdigest(), rows)


def _line(record: Any, row: int, where: str) -> bytes:
    if not isinstance(record, dict):
        raise RecordError(f"{where}: row {row} is {type(record).__name__}, not a record (a dict of fields)")
    try:
        return orjson.dumps(record, default=_to_json, option=_DUMPS_OPTIONS) + b"\n"
    except TypeError as exc:
        raise RecordError(
            f"{where}: row {row} holds a value JSON cannot carry ({exc}); give it as text, a number, a bool, "
            "a list or a dict"
        ) from None

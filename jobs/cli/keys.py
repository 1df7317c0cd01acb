"""`orbatch keys`: the keys of the HTTP API, made, listed and revoked."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from jobs.cli.context import print_json, services
from jobs.cli.terminal import err, keys_table, out, say

__all__ = ["keys_app", "keys_create", "keys_list", "keys_revoke"]

keys_app = typer.Typer(
    help="Keys of the HTTP API (`orbatch serve`): one per owner, shown once, stored only as a hash.",
    no_args_is_help=True,
)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="The owner the key acts as (letters, digits, . _ @ -).")],
    rate_limit: Annotated[
        int | None,
        typer.Option(
            "--rate-limit",
            min=1,
            help="Requests a minute for this key (default: ORBATCH_API_RATE_PER_MINUTE).",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"name", "key", "callback_secret"} as one JSON object.')
    ] = False,
) -> None:
    """Make a key for NAME and print it, once: only its hash is stored.

    NAME owns every file and batch the key makes. After `keys revoke NAME`, a new key for NAME sees them again.
    The callback secret signs NAME's completion callbacks. Without DATABASE_URL the key goes to the embedded
    Postgres `orbatch serve` uses (make keys while it is stopped).
    """
    from jobs.api.keys import create_key

    with services() as up:
        made = up.run(lambda engine: create_key(engine, name, rate_limit))
    if as_json:
        print_json({"name": made.name, "key": made.key, "callback_secret": made.callback_secret})
        return
    sys.stdout.write(f"{made.key}\n")
    say(
        err,
        f"key for {made.name} (shown only now; keep it secret). Its callbacks are signed with "
        f"{made.callback_secret}",
    )


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Every key: owner, the key's first characters, rate limit, when made and revoked."""
    from jobs.api.keys import list_keys

    with services() as up:
        keys = up.run(list_keys)
    rows = [
        {
            "name": k.name,
            "hint": k.hint + "…",
            "rate_per_minute": k.rate_per_minute,
            "created_at": k.created_at.isoformat(),
            "revoked_at": None if k.revoked_at is None else k.revoked_at.isoformat(),
        }
        for k in keys
    ]
    if as_json:
        print_json(rows)
        return
    out.print(keys_table(rows))


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The owner whose key to revoke.")]) -> None:
    """Revoke NAME's key: its next request is refused (401). NAME's files and batches stay."""
    from jobs.api.keys import revoke_key

    with services() as up:
        up.run(lambda engine: revoke_key(engine, name))
    say(err, f"revoked {name}'s key")

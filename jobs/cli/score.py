"""`orbatch score`: a batch's labels against a gold field of its records, as a table or JSON."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.cli.context import BatchId, print_json, resolve, services
from jobs.cli.terminal import out, say, score_tables
from jobs.operations.scores import Score, score_batch

__all__ = ["score"]


def score(
    batch: BatchId,
    gold: Annotated[
        str, typer.Option("--gold", metavar="FIELD", help="The record field holding the right label.")
    ],
    field: Annotated[
        str | None,
        typer.Option(
            "--field",
            metavar="LABEL",
            help="The answer field to score (default: the schema's only field, else the one named like --gold, "
            "else its only label field).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Score a batch's answers (a --vote batch's majority) against each record's gold label: accuracy,
    precision, recall and F1 per class, the confusion matrix; for a vote, each model's accuracy and the kappa
    between the models."""

    async def go(engine: AsyncEngine) -> Score:
        return await score_batch(engine, await resolve(engine, batch), gold, field)

    with services() as up:
        result = up.run(go)
    if as_json:
        print_json(result.to_json())
        return
    for table in score_tables(result):
        out.print(table)
    for reason, count in result.skipped.items():
        say(out, f"{count} records not scored: {reason}")

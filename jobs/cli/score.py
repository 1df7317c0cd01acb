"""`orbatch score`: a batch's labels against a gold field of its records, as a table or JSON."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.cli.context import BatchId, print_json, resolve, services
from jobs.cli.terminal import out, say
from jobs.operations.scores import Score, score_batch

__all__ = ["score", "score_tables"]


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
            help="The answer field to score (default: the schema's only field, else the one named like --gold).",
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


def score_tables(result: Score) -> list[Table]:
    """The score as tables: per class, the confusion matrix, and a vote's models."""
    head = Table(
        title=Text(
            f"{result.batch_id}: {result.field!r} against {result.gold!r}, {result.scored} records, "
            f"accuracy {result.accuracy:.1%}"
        )
    )
    for column in ("label", "precision", "recall", "F1", "support"):
        head.add_column(column, justify="left" if column == "label" else "right")
    for c in result.classes:
        head.add_row(Text(c.label), f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}", str(c.support))
    labels = result.columns
    matrix = Table(title="confusion matrix (rows: gold, columns: answered)")
    matrix.add_column("gold")
    for label in labels:
        matrix.add_column(Text(label), justify="right")
    for gold, row in result.confusion.items():
        matrix.add_row(Text(gold), *(str(row.get(label, 0)) for label in labels))
    tables = [head, matrix]
    if result.models is not None:
        kappa = "undefined (one label only)" if result.kappa is None else f"{result.kappa:.3f}"
        models = Table(
            title=Text(
                f"models: {result.kappa_kind} kappa {kappa} over {result.kappa_records} records all answered"
            )
        )
        models.add_column("model")
        models.add_column("accuracy", justify="right")
        for model, accuracy in result.models.items():
            models.add_row(Text(model), f"{accuracy:.1%}")
        tables.append(models)
    return tables

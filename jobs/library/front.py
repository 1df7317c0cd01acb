"""`orbatch.run`, `submit`, `batch` and their async twins: a table in, the same kind of table out.

Every call goes through the intake the CLI uses (the same checks, the same batch found again for the same data
and options) and works the batch with the worker `orbatch run` uses, on the session's services.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.errors import BadInput, Interrupted
from jobs.core.settings import get_settings
from jobs.formats.prompt_template import parse_answer
from jobs.formats.reader import FileSource, Source
from jobs.formats.record_spool import SpooledRecords, spool_records
from jobs.formats.tables import read_records, table_format
from jobs.library.answers import AnswerColumns
from jobs.library.choices import Choices
from jobs.library.kinds import Table, table_of
from jobs.library.portal import StopSwitch
from jobs.library.session import Session, session
from jobs.library.tasks import (
    Taken,
    estimate_here,
    read_answers,
    record_rows,
    spool_folder,
    summary_of,
    take,
    work_here,
    write_answers,
)
from jobs.library.views import Progress, ProgressKind, progress_for
from jobs.observation.standing import BatchSummary
from jobs.observation.usage import usage_report
from jobs.operations.control import cancel_batch, resolve_batch
from jobs.operations.results import answer_rows
from jobs.operations.rows import answer_schema
from jobs.operations.scores import score_batch
from jobs.submission.catalog import upstream_is_simulator
from jobs.submission.estimate import Estimate

__all__ = ["Batch", "aestimate", "arun", "asubmit", "batch", "estimate", "run", "submit"]

T = TypeVar("T")

# A chat request row names its messages, an embeddings request row its input; any other row is a record for a
# template.
_REQUEST_FIELDS = ("messages", "input")


@dataclass(slots=True)
class _Prepared:
    """The data ready to go in: its source, the table it came from (or the file), whether rows are records."""

    source: Source
    records: bool
    table: Table | None = None
    path: Path | None = None

    def close(self) -> None:
        if isinstance(self.source, SpooledRecords):
            self.source.close()


def _prepare(data: Any, choices: Choices) -> _Prepared:
    """The data as a source for the intake, spooled as JSONL when it is a table (in the caller's thread, where
    an interrupt stops it and nothing is stored)."""
    folder = spool_folder(get_settings())
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        kind = table_format(path)
        if not path.is_file():
            raise BadInput(f"data: {path} is not a file", param="data")
        if kind == "jsonl":
            return _Prepared(FileSource.open(path), choices.template is not None, path=path)
        if kind in ("csv", "parquet"):
            return _Prepared(spool_records(read_records(path), folder, path.name, str(path)), True, path=path)
        raise BadInput(f"data: {path} is not a .jsonl, .jsonl.gz, .csv or .parquet file", param="data")
    table = table_of(data)
    requests = any(f in table.columns for f in _REQUEST_FIELDS) and choices.template is None
    where = f"the {table.kind} table"
    name = f"{table.kind} table of {table.rows} rows"
    return _Prepared(spool_records(table.chunks(), folder, name, where), not requests, table=table)


def _output_path(path: Path, output: str | os.PathLike[str] | None, records: bool) -> Path:
    if output is not None:
        return Path(output)
    stem = path.name
    for suffix in (".gz", ".jsonl", ".ndjson", ".json", ".csv", ".parquet"):
        stem = stem.removesuffix(suffix)
    kind = table_format(path)
    ext = ".jsonl" if kind == "jsonl" or not records else f".{kind}"
    return path.with_name(f"{stem}.results{ext}")


def _console(progress: ProgressKind | bool) -> Console:
    return Console(stderr=True, quiet=progress is False, highlight=False)


def _interrupted(exc: BaseException) -> KeyboardInterrupt:
    if isinstance(exc, Interrupted):
        return KeyboardInterrupt(str(exc))
    return KeyboardInterrupt("interrupted before the data was stored: nothing of it was kept")


def _call(sess: Session, work: Callable[[StopSwitch], Coroutine[Any, Any, T]], view: Progress) -> T:
    if sess.portal.on_portal():
        raise RuntimeError(
            "orbatch's blocking calls cannot run on orbatch's own thread; await the async ones"
        )
    try:
        return sess.portal.call(work, view.tick)
    except (Interrupted, concurrent.futures.CancelledError) as exc:
        raise _interrupted(exc) from None
    finally:
        view.close()


async def _acall(sess: Session, work: Callable[[StopSwitch], Coroutine[Any, Any, T]], view: Progress) -> T:
    try:
        return await sess.portal.acall(work, view.tick)
    except (Interrupted, concurrent.futures.CancelledError) as exc:
        raise _interrupted(exc) from None
    finally:
        view.close()


def _quietly(work: Callable[[StopSwitch], Coroutine[Any, Any, T]]) -> T:
    """A short call on the portal, with no progress to show."""
    sess = session()
    return _call(sess, work, progress_for(False)[1])


def _on_engine(work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """A short read or change on the session's database, with no progress to show."""

    async def go(_switch: StopSwitch) -> T:
        _, engine = await session().settings(False, _console(False))
        return await work(engine)

    return _quietly(go)


class Batch:
    """A batch, for work that outlives the call that submitted it: its status, its end, its results."""

    def __init__(
        self,
        batch_id: str,
        *,
        simulator: bool = False,
        schema: type[BaseModel] | dict[str, Any] | None = None,
        table: Table | None = None,
    ) -> None:
        self.id = batch_id
        # Its calls go to the session's own simulator (it was made with `simulator=True`).
        self._simulator = simulator
        self._schema = schema
        self._table = table

    def __repr__(self) -> str:
        return f"<orbatch.Batch {self.id}>"

    def status(self) -> BatchSummary:
        """Its status now: counts by state, cost, tokens, why it is paused."""
        return _on_engine(lambda engine: summary_of(engine, self.id))

    def wait(self, *, progress: ProgressKind | bool = True, concurrency: int | None = None) -> Batch:
        """Work the batch in this process (other workers may help) until it ends; returns the batch.

        Interrupted, it stops gracefully (calls in flight are answered and stored) and raises KeyboardInterrupt;
        calling `wait()` again carries on.
        """
        sess = session()
        box, view = progress_for(progress)
        err = _console(progress)

        async def work(switch: StopSwitch) -> BatchSummary:
            _, engine = await sess.settings(False, err)
            first = await summary_of(engine, self.id)
            return await work_here(
                sess,
                first,
                reused=True,
                simulator=self._simulator,
                concurrency=concurrency,
                box=box,
                switch=switch,
                err=err,
            )

        _call(sess, work, view)
        return self

    def results(self, data: Any = None) -> Any:
        """Its rows in input order with their answers: `data` (or the table submitted) with the answer's
        columns and `error` added, in its own kind; without either, a list of the stored records."""
        table = table_of(data) if data is not None else self._table

        async def read(engine: AsyncEngine) -> Any:
            schema = await answer_schema(engine, self.id)
            if table is not None:
                columns = AnswerColumns.plan(schema, table.columns)
                return await read_answers(engine, self.id, columns, table.rows)
            return [row async for chunk in record_rows(engine, self.id, schema) for row in chunk]

        result = _on_engine(read)
        if table is None:
            return result
        return table.with_columns(result.values, result.types)

    def answers(self, model: type[BaseModel] | None = None) -> list[Any]:
        """Each row's answer in input order (None where it has none): an instance of `model` (or of the
        Pydantic model submitted as the schema), else the answer's JSON value or text."""
        cls = model or (self._schema if isinstance(self._schema, type) else None)

        async def read(engine: AsyncEngine) -> list[Any]:
            return [
                _answer(row.content, row.structured, row.error, cls)
                async for chunk in answer_rows(engine, self.id)
                for row in chunk
            ]

        return _on_engine(read)

    def cancel(self) -> str:
        """Cancel it: no new call is made; what was answered stays. Returns its status."""
        return _on_engine(lambda engine: cancel_batch(engine, self.id))

    def usage(self) -> dict[str, Any]:
        """Requests, calls, tokens and cost, by the model that served, as `orbatch usage --json` prints them."""

        async def report(engine: AsyncEngine) -> dict[str, Any]:
            return (await usage_report(engine, self.id)).to_json()

        return _on_engine(report)

    def score(self, gold: str, field: str | None = None) -> dict[str, Any]:
        """Its answers (a vote's majority) scored against each record's `gold` field, as `orbatch score --json`
        prints it: accuracy, per-class precision/recall/F1, the confusion matrix, a vote's models and kappa."""

        async def scored(engine: AsyncEngine) -> dict[str, Any]:
            return (await score_batch(engine, self.id, gold, field)).to_json()

        return _on_engine(scored)


def _answer(content: str | None, structured: bool, error: str | None, cls: type[BaseModel] | None) -> Any:
    if content is None or error is not None:
        return None
    if not structured:
        return content
    try:
        value = parse_answer(content)
    except orjson.JSONDecodeError:
        return content
    if cls is None:
        return value
    try:
        return cls.model_validate(value)
    except ValidationError:
        # A vote's tie leaves a field null, which the model may not allow: the answer as it stands, a dict.
        return value


def _choices(options: dict[str, Any], **given: Any) -> tuple[Choices, dict[str, Any]]:
    """The Choices among the keyword options, and the front's own (progress, concurrency, output)."""
    own: dict[str, Any] = {
        key: options.pop(key) for key in ("progress", "concurrency", "output") if key in options
    }
    try:
        return Choices(**given, **options), own
    except TypeError as exc:
        raise TypeError(f"orbatch: {exc}".replace("Choices.__init__()", "")) from None


@dataclass(slots=True)
class _Plan:
    """One `run` or `submit`: the data ready to go in, the work for the portal, how its progress shows."""

    sess: Session
    prepared: _Prepared
    schema: type[BaseModel] | dict[str, Any] | None
    work: Callable[[StopSwitch], Coroutine[Any, Any, Any]]
    view: Progress

    @classmethod
    def make(cls, data: Any, queue: bool, given: dict[str, Any], options: dict[str, Any]) -> _Plan:
        """The plan of a call: `queue` for a submit (its first window queued for the fleet), else a run.

        Spools a table's records, so it runs in the caller's thread (a `to_thread` for the async twins).
        """
        choices, own = _choices(options, **given)
        progress = own.get("progress", True)
        box, view = progress_for(progress if not queue else False)
        err = _console(progress)
        sess = session()
        prepared = _prepare(data, choices)
        options_ = choices.options(get_settings(), prepared.records)
        schema = choices.json_schema()

        async def submit(switch: StopSwitch) -> Taken:
            return await take(
                sess,
                prepared.source,
                options_,
                simulator=choices.simulator,
                check_models=choices.check_models,
                queue=queue,
                err=err,
                switch=switch,
            )

        async def run(switch: StopSwitch) -> Any:
            taken = await submit(switch)
            await work_here(
                sess,
                taken.summary,
                reused=taken.reused,
                simulator=taken.simulator,
                concurrency=own.get("concurrency"),
                box=box,
                switch=switch,
                err=err,
            )
            _, engine = await sess.settings(False, err)
            if prepared.table is not None:
                columns = AnswerColumns.plan(schema, prepared.table.columns)
                return await read_answers(engine, taken.batch_id, columns, prepared.table.rows)
            assert prepared.path is not None
            output = _output_path(prepared.path, own.get("output"), prepared.records)
            await write_answers(engine, taken.batch_id, output, schema, prepared.records)
            return output

        return cls(sess, prepared, choices.schema, submit if queue else run, view)

    def batch(self, taken: Taken) -> Batch:
        """The handle of what a submit stored."""
        return Batch(taken.batch_id, simulator=taken.simulator, schema=self.schema, table=self.prepared.table)

    def finish(self, result: Any) -> Any:
        """What a run returns: the user's table with the answers' columns added, or the results' path."""
        if self.prepared.table is None:
            return result
        columns: AnswerColumns = result
        return self.prepared.table.with_columns(columns.values, columns.types)


def run(
    data: Any,
    *,
    template: str | None = None,
    system: str | None = None,
    schema: type[BaseModel] | dict[str, Any] | None = None,
    models: list[str] | str | None = None,
    **options: Any,
) -> Any:
    """Run `data` as one batch here and return it with its answers: the same kind of table, rows in order.

    `data`: a list of dicts, a pandas or Polars DataFrame, an Arrow table, a Hugging Face Dataset, or a path to
    a .jsonl, .jsonl.gz, .csv or .parquet file (its results are written beside it, or to `output=`, and the
    path is returned). Rows are records filling `template` (a `{field}` per column used), or chat requests
    when they have `messages`. Each row gets the fields of its answer (`schema`: a Pydantic model or a JSON
    Schema dict), else `answer`, and `error` (empty for answered rows). Options are the CLI's: max_attempts,
    max_cost, free_only, dedupe, feedback (False: a reply failing its schema is retried with the same prompt), heal,
    vote (models that each answer every row: the row gets the majority of each field, `agreement`, `ties` and
    `votes`, each model's answer), gold (the column of right labels the dashboard scores against), long ("split": a
    record too long for every model of the chain is summarised in parts), temperature, max_tokens, params, name,
    metadata, new, priority,
    lane ("live", "batch": OpenRouter's Batch API at about half price, "auto"), skip_invalid, check_models,
    simulator, concurrency, progress (True, False, "notebook", "terminal",
    "plain"). The same call again finds the same batch and carries on; an interrupt stops gracefully.
    """
    given = {"template": template, "system": system, "schema": schema, "models": models}
    plan = _Plan.make(data, False, given, options)
    try:
        result = _call(plan.sess, plan.work, plan.view)
    finally:
        plan.prepared.close()
    return plan.finish(result)


async def arun(
    data: Any,
    *,
    template: str | None = None,
    system: str | None = None,
    schema: type[BaseModel] | dict[str, Any] | None = None,
    models: list[str] | str | None = None,
    **options: Any,
) -> Any:
    """`run` for a caller with a running event loop (a notebook's async cell, an async pipeline)."""
    given = {"template": template, "system": system, "schema": schema, "models": models}
    plan = await asyncio.to_thread(_Plan.make, data, False, given, options)
    try:
        result = await _acall(plan.sess, plan.work, plan.view)
    finally:
        plan.prepared.close()
    return await asyncio.to_thread(plan.finish, result)


def submit(
    data: Any,
    *,
    template: str | None = None,
    system: str | None = None,
    schema: type[BaseModel] | dict[str, Any] | None = None,
    models: list[str] | str | None = None,
    **options: Any,
) -> Batch:
    """Store `data` as a batch for the fleet's workers (or a later `wait()`) and return its handle at once.

    Takes `run`'s options. The same data and options again give the same batch.
    """
    given = {"template": template, "system": system, "schema": schema, "models": models}
    plan = _Plan.make(data, True, given, options)
    try:
        return plan.batch(_call(plan.sess, plan.work, plan.view))
    finally:
        plan.prepared.close()


async def asubmit(
    data: Any,
    *,
    template: str | None = None,
    system: str | None = None,
    schema: type[BaseModel] | dict[str, Any] | None = None,
    models: list[str] | str | None = None,
    **options: Any,
) -> Batch:
    """`submit` for a caller with a running event loop."""
    given = {"template": template, "system": system, "schema": schema, "models": models}
    plan = await asyncio.to_thread(_Plan.make, data, True, given, options)
    try:
        return plan.batch(await _acall(plan.sess, plan.work, plan.view))
    finally:
        plan.prepared.close()


def _estimating(data: Any, given: dict[str, Any], options: dict[str, Any]) -> tuple[_Prepared, Any]:
    """The data ready to go in, and the portal's work estimating it (in the caller's thread, as `_Plan.make`)."""
    choices, own = _choices(options, **given)
    err = _console(own.get("progress", True))
    sess = session()
    prepared = _prepare(data, choices)
    try:
        options_ = choices.options(get_settings(), prepared.records)
    except BaseException:
        prepared.close()
        raise

    async def work(_switch: StopSwitch) -> Estimate:
        return await estimate_here(
            sess,
            prepared.source,
            options_,
            simulator=choices.simulator,
            check_models=choices.check_models,
            err=err,
        )

    return prepared, work


def estimate(
    data: Any,
    *,
    template: str | None = None,
    system: str | None = None,
    schema: type[BaseModel] | dict[str, Any] | None = None,
    models: list[str] | str | None = None,
    **options: Any,
) -> Estimate:
    """What `submit` with the same arguments would store and cost, and nothing stored: requests by model,
    prompt tokens, completion tokens at most, the cost range live and through OpenRouter's Batch API, the free
    tier's days (`Estimate`; `.to_json()` is `orbatch estimate --json`'s object). The same errors as `submit`.
    """
    given = {"template": template, "system": system, "schema": schema, "models": models}
    prepared, work = _estimating(data, given, options)
    try:
        result: Estimate = _quietly(work)
    finally:
        prepared.close()
    return result


async def aestimate(
    data: Any,
    *,
    template: str | None = None,
    system: str | None = None,
    schema: type[BaseModel] | dict[str, Any] | None = None,
    models: list[str] | str | None = None,
    **options: Any,
) -> Estimate:
    """`estimate` for a caller with a running event loop."""
    given = {"template": template, "system": system, "schema": schema, "models": models}
    prepared, work = await asyncio.to_thread(_estimating, data, given, options)
    try:
        result: Estimate = await _acall(session(), work, progress_for(False)[1])
    finally:
        prepared.close()
    return result


def batch(ref: str) -> Batch:
    """The batch with this id, or the latest of this name, to see, wait for or read again."""
    sess = session()

    async def find(_switch: StopSwitch) -> tuple[str, bool]:
        settings, engine = await sess.settings(False, _console(False))
        async with engine.connect() as conn:
            batch_id, _note = await resolve_batch(conn, ref)
        summary = await summary_of(engine, batch_id)
        # A simulated batch is worked by a simulator: OPENROUTER_BASE_URL's, else the session starts one.
        key = settings.openrouter_api_key.get_secret_value() if settings.openrouter_api_key else None
        own = summary.simulated and not await upstream_is_simulator(settings.openrouter_base_url, key)
        return batch_id, own

    batch_id, own = _quietly(find)
    return Batch(batch_id, simulator=own)

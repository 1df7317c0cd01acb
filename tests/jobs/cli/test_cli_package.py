"""The CLI as a package: every command module's commands are on the app, and `submit` and `run` share one
option bundle, which builds the same SubmitOptions the API's create builds for the same choices."""

from __future__ import annotations

import inspect
from decimal import Decimal

import typer

from jobs.cli import app
from jobs.cli.app import COMMAND_MODULES
from jobs.cli.batches import submit
from jobs.cli.options import SubmitChoices
from jobs.cli.run import run
from jobs.core.settings import Settings
from jobs.core.states import BatchPriority
from jobs.submission.choices import batch_options, model_chain


def _commands(typer_app: typer.Typer) -> set[object]:
    found: set[object] = {c.callback for c in typer_app.registered_commands}
    for group in typer_app.registered_groups:
        assert group.typer_instance is not None
        found |= _commands(group.typer_instance)
    return found


def test_every_command_of_every_command_module_is_on_the_app() -> None:
    on_app = _commands(app)
    defined = [
        getattr(module, name)
        for module in COMMAND_MODULES
        for name in module.__all__
        if inspect.isfunction(getattr(module, name))
        and getattr(getattr(module, name), "__module__", "") == module.__name__
        and name != "run_file"
    ]
    assert defined
    missing = [f"{f.__module__}.{f.__name__}" for f in defined if f not in on_app]
    assert not missing, missing
    # Every module of jobs/cli that holds commands is one the app knows.
    modules = {f.__module__ for f in on_app if callable(f)}
    assert modules <= {m.__name__ for m in COMMAND_MODULES} | {"jobs.simulator.main"}


def test_submit_and_run_take_the_same_bundle_of_options() -> None:
    bundle = [f for f in SubmitChoices.__dataclass_fields__]
    for command in (submit, run):
        parameters = list(inspect.signature(command).parameters)
        assert "choices" not in parameters
        # In one run, in the bundle's order, where the command's `choices` was.
        start = parameters.index(bundle[0])
        assert parameters[start : start + len(bundle)] == bundle


def test_the_cli_and_the_api_build_the_same_options_for_the_same_choices() -> None:
    settings = Settings()
    typed = SubmitChoices(
        models="sim/echo, sim/last-resort",
        max_cost="2.50",
        free_only=False,
        dedupe=True,
        priority=BatchPriority.URGENT,
    ).options(settings)
    made = batch_options(
        settings,
        models=model_chain(["sim/echo", "sim/last-resort"], "models"),
        max_attempts=None,
        free_only=False,
        max_cost=Decimal("2.50"),
        dedupe=True,
        priority=BatchPriority.URGENT,
        new=False,
    )
    assert typed == made
    assert typed.max_attempts == settings.max_attempts
    # The API makes a new batch at each create, as OpenAI does; the rest of the identity is the same.
    assert (
        typed.identity()
        == batch_options(
            settings,
            models=["sim/echo", "sim/last-resort"],
            max_attempts=None,
            free_only=False,
            max_cost=Decimal("2.50"),
            dedupe=True,
            priority=BatchPriority.URGENT,
            new=True,
        ).identity()
    )

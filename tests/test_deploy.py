"""docker-compose.yml and the Dockerfile: valid, shaped so `--scale worker=N` works, and the simulator recipe runs."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import yaml
from arq.connections import ArqRedis
from jsonschema import Draft7Validator
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.errors import SettingsError
from jobs.core.settings import Settings, get_settings, is_loopback
from jobs.submission.catalog import upstream_is_simulator
from tests.conftest import Services
from tests.support import Simulator, Workers, chat_line, run_cli, write_jsonl

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


# Compose's interpolation: `${NAME}`, `${NAME:-default}` (unset or empty), `${NAME-default}` (unset).
VARIABLE = re.compile(r"\$\{(\w+)(?:(:?-)([^}]*))?\}")


def interpolate(value: object, variables: Mapping[str, str]) -> str:
    """`value` as compose resolves it with `variables` as its environment (nothing else set)."""

    def one(match: re.Match[str]) -> str:
        name, operator, default = match.groups()
        given = variables.get(name)
        if given is not None and (given or operator != ":-"):
            return given
        return default if operator else ""

    resolved = VARIABLE.sub(one, str(value))
    assert "$" not in resolved, f"a form of interpolation these tests do not resolve: {value!r}"
    return resolved


def service_environment(service: str, variables: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment compose gives `service`'s containers."""
    environment = compose()["services"][service].get("environment", {})
    return {name: interpolate(value, variables or {}) for name, value in environment.items()}


def settings_of(monkeypatch: pytest.MonkeyPatch, environment: Mapping[str, str]) -> Settings:
    """The settings a command reads at its start in exactly `environment` (SettingsError, exit 2, if bad)."""
    for name in list(os.environ):
        if name.startswith(("ORBATCH_", "OPENROUTER_")) or name in ("DATABASE_URL", "REDIS_URL"):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        return get_settings()
    finally:
        get_settings.cache_clear()


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


@dataclass(frozen=True)
class Recipe:
    """The simulator recipe as the docs write it: compose's variables and arguments, then the host's side."""

    compose_variables: dict[str, str]
    compose_args: list[str]
    host_variables: dict[str, str]
    submit: list[str]


def documented_commands(lines: Iterable[str]) -> list[list[str]]:
    """Shell commands, `\\` continuations joined, split as the shell splits them."""
    commands: list[list[str]] = []
    pending = ""
    for line in lines:
        pending += line.strip()
        if not pending:
            continue
        if pending.endswith("\\"):
            pending = pending.removesuffix("\\") + " "
            continue
        commands.append(shlex.split(pending))
        pending = ""
    return commands


def assignments(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """The leading `NAME=value` words and the rest."""
    variables: dict[str, str] = {}
    while words and re.fullmatch(r"\w+=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        variables[name] = value
    return variables, words


def simulator_recipe(commands: list[list[str]]) -> Recipe:
    starts = [i for i, c in enumerate(commands) if "--profile" in c and "simulator" in c and "compose" in c]
    assert len(starts) == 1, commands
    compose_variables, compose_args = assignments(list(commands[starts[0]]))
    host_variables: dict[str, str] = {}
    for command in commands[starts[0] + 1 :]:
        if command[:2] == ["orbatch", "submit"]:
            return Recipe(compose_variables, compose_args, host_variables, command)
        assert command[0] == "export", command
        host_variables.update(assignments(command[1:])[0])
    raise AssertionError("no `orbatch submit` after the simulator's `docker compose up`")


def header_recipe() -> Recipe:
    """From docker-compose.yml's header comment, where commands are indented under `#`."""
    header = []
    for line in (ROOT / "docker-compose.yml").read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    return simulator_recipe(documented_commands(line[4:] for line in header if line.startswith("#   ")))


def readme_recipe() -> Recipe:
    """From the README's section on running a fleet, in its `sh` blocks."""
    section = (ROOT / "README.md").read_text().split("## Running a fleet", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    return simulator_recipe([c for block in blocks for c in documented_commands(block.splitlines())])


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    schema = json.loads(
        files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in Draft7Validator(schema).iter_errors(compose())]
    assert errors == []


def test_compose_has_redis_postgres_a_one_shot_migrate_and_a_scalable_worker() -> None:
    services = compose()["services"]
    assert {"redis", "postgres", "migrate", "worker"} <= set(services)
    migrate, worker = services["migrate"], services["worker"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["restart"] == "no"
    assert worker["command"] == ["worker"]
    # A fixed name or a published port would stop `docker compose up --scale worker=N`.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"]
    assert "healthcheck" in services["redis"]


def test_compose_sets_the_variables_the_settings_read(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_of(monkeypatch, service_environment("worker"))
    assert settings.database_url == "postgresql://orbatch:orbatch@postgres:5432/orbatch"
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.openrouter_base_url == "https://openrouter.ai/api/v1"
    assert settings.concurrency == 16
    # Without the simulator recipe, plain http stays refused.
    assert settings.allow_plain_http is False


def test_compose_has_an_api_on_loopback_that_leaves_the_work_to_the_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = compose()["services"]
    api = services["api"]
    assert api["image"] == services["worker"]["image"]
    # The API serves the fleet's batches; it runs none itself, and never without a key (--no-auth is absent).
    assert api["command"][0] == "serve"
    assert "--no-worker" in api["command"]
    assert "--no-auth" not in api["command"]
    assert api["command"][api["command"].index("--host") + 1] == "0.0.0.0"  # noqa: S104 (inside its container; published on loopback)
    assert api["ports"] == ["127.0.0.1:${ORBATCH_API_PORT:-8000}:8000"]
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in api
    settings = settings_of(monkeypatch, service_environment("api"))
    assert (settings.database_url, settings.redis_url) == (
        "postgresql://orbatch:orbatch@postgres:5432/orbatch",
        "redis://redis:6379/0",
    )
    assert settings.max_upload_bytes == 200_000_000
    assert settings.callback_allow == ""


def test_the_image_copies_every_package_and_runs_orbatch() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for part in (
        "COPY jobs",
        "COPY worker",
        "COPY migrations",
        "uv sync --frozen --no-dev",
        'ENTRYPOINT ["orbatch"]',
    ):
        assert part in dockerfile


def test_workers_get_time_to_finish_their_calls_and_wait_for_a_missing_key() -> None:
    worker = compose()["services"]["worker"]
    grace = float(worker["environment"]["ORBATCH_SHUTDOWN_GRACE"])
    # Docker sends SIGKILL at stop_grace_period: the worker's own grace must end first.
    assert float(worker["stop_grace_period"].removesuffix("s")) > grace
    assert worker["environment"]["ORBATCH_WAIT_FOR_KEY"] == "1"
    assert worker["image"] == compose()["services"]["migrate"]["image"]
    assert "build" in worker


def test_the_image_carries_no_embedded_databases() -> None:
    # The embedded Postgres and Redis are the `local` extra, which the image's `--no-dev` sync leaves out.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--extra local" not in dockerfile
    assert "--all-extras" not in dockerfile


# The simulator recipe: `docker compose --profile simulator up` with the variables the compose file's header
# documents, then a host `orbatch submit` to the simulator's published port. No Docker engine runs here: the
# tests read the file as compose would, and run its services' commands with its services' environments.


def published(service: str, variables: Mapping[str, str]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each port compose publishes for `service`."""
    ports = []
    for entry in compose()["services"][service].get("ports", []):
        address, host_port, container_port = interpolate(entry, variables).split(":")
        ports.append((address, int(host_port), int(container_port)))
    return ports


def enabled_services(profiles: list[str]) -> set[str]:
    """The services `docker compose --profile P ... up` starts: those without profiles, and those of P."""
    return {
        name
        for name, service in compose()["services"].items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }


def moved(url: str, netloc: str) -> str:
    """`url` at another host and port, its path kept."""
    return urlsplit(url)._replace(netloc=netloc).geturl()


def test_the_simulator_recipe_is_the_same_in_the_compose_header_and_the_readme() -> None:
    recipe = header_recipe()
    assert readme_recipe() == recipe
    assert recipe.compose_args[:2] == ["docker", "compose"]
    assert option(recipe.compose_args, "--profile") == "simulator"
    assert "up" in recipe.compose_args
    assert recipe.submit[:2] == ["orbatch", "submit"]
    assert {"DATABASE_URL", "REDIS_URL", "OPENROUTER_BASE_URL"} <= set(recipe.host_variables)
    # Every variable it hands compose is one the file reads: none is set for nothing.
    body = "\n".join(
        line for line in (ROOT / "docker-compose.yml").read_text().splitlines() if line[:1] != "#"
    )
    assert set(recipe.compose_variables) <= {match.group(1) for match in VARIABLE.finditer(body)}


@pytest.mark.parametrize("service", ["worker", "api"])
def test_with_the_recipe_the_workers_and_the_api_start_and_call_the_simulator_by_its_service_name(
    monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    recipe = header_recipe()
    services = compose()["services"]
    # Settings that refused to load would exit 2, and compose would restart the service in a loop.
    settings = settings_of(monkeypatch, service_environment(service, recipe.compose_variables))
    upstream = urlsplit(settings.openrouter_base_url)
    assert (upstream.scheme, upstream.hostname, upstream.path) == ("http", "simulator", "/api/v1")
    assert services[upstream.hostname]["profiles"] == ["simulator"]
    assert upstream.port == int(option(services["simulator"]["command"], "--port"))
    assert settings.allow_plain_http is True
    assert settings.api_key() == recipe.compose_variables["OPENROUTER_API_KEY"]


def test_every_service_that_calls_the_upstream_gets_the_key_and_the_consent_to_plain_http(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recipe = header_recipe()
    callers = {
        name
        for name, service in compose()["services"].items()
        if "OPENROUTER_BASE_URL" in service.get("environment", {})
    }
    assert callers >= {"worker", "api"}
    without_consent = {k: v for k, v in recipe.compose_variables.items() if k != "ORBATCH_ALLOW_PLAIN_HTTP"}
    for name in sorted(callers):
        environment = service_environment(name, recipe.compose_variables)
        # The key too: the API asks the upstream's GET /key with it whether its batches are simulated.
        for variable, value in recipe.compose_variables.items():
            assert environment.get(variable) == value, (name, variable)
        # Not allowed by default: the key is never sent in plain http unless the operator says so.
        with pytest.raises(SettingsError, match="plain http to another machine"):
            settings_of(monkeypatch, service_environment(name, without_consent))


def test_the_host_reaches_the_simulator_on_a_loopback_port_the_file_publishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recipe = header_recipe()
    simulator = compose()["services"]["simulator"]
    port = int(option(simulator["command"], "--port"))
    # It listens on every address of its container, and is published on the host's loopback only: it checks no
    # key, and its /_sim/config changes what it answers.
    assert option(simulator["command"], "--host") == "0.0.0.0"  # noqa: S104 (inside its container)
    assert published("simulator", recipe.compose_variables) == [("127.0.0.1", 8787, port)]
    assert published("simulator", {**recipe.compose_variables, "ORBATCH_SIMULATOR_PORT": "18787"}) == [
        ("127.0.0.1", 18787, port)
    ]
    # The host's side of the recipe: the published ports, so its URL differs from the containers' one.
    host = settings_of(monkeypatch, recipe.host_variables)
    upstream = urlsplit(host.openrouter_base_url)
    inside = urlsplit(recipe.compose_variables["OPENROUTER_BASE_URL"])
    assert upstream.hostname is not None
    assert is_loopback(upstream.hostname)
    assert (upstream.hostname, upstream.port, port) in published("simulator", recipe.compose_variables)
    assert (upstream.scheme, upstream.path) == (inside.scheme, inside.path)
    # On loopback the key stays on this machine: the host needs no consent to plain http.
    assert host.allow_plain_http is False
    for url, service in ((host.database_url, "postgres"), (host.redis_url, "redis")):
        parts = urlsplit(url)
        assert parts.hostname is not None
        assert [(a, p) for a, p, _ in published(service, recipe.compose_variables)] == [
            (parts.hostname, parts.port)
        ]


def test_the_workers_and_the_api_wait_for_the_simulator_only_when_its_profile_is_on() -> None:
    services = compose()["services"]
    assert services["simulator"]["profiles"] == ["simulator"]
    assert "simulator" not in enabled_services([])
    for name in ("worker", "api"):
        assert name in enabled_services([])
        # A worker reads GET /key at start and the API asks whether its upstream is the simulator: both start
        # once it answers (and ask again later). `required: false`: without the profile they start without it.
        assert services[name]["depends_on"]["simulator"] == {
            "condition": "service_healthy",
            "required": False,
        }


@pytest.mark.parametrize("profiles", [[], ["simulator"], ["monitoring"], ["simulator", "monitoring"]])
def test_each_profile_selection_is_a_project_compose_accepts(profiles: list[str]) -> None:
    services = compose()["services"]
    enabled = enabled_services(profiles)
    for name in sorted(enabled):
        depends_on = services[name].get("depends_on", {})
        if isinstance(depends_on, list):
            depends_on = {dependency: {} for dependency in depends_on}
        for dependency, how in depends_on.items():
            assert dependency in services, f"{name} depends on undefined service {dependency}"
            # Compose refuses the whole project when a service depends on one its profiles leave out, unless
            # the dependency says `required: false`.
            assert dependency in enabled or how.get("required", True) is False, (profiles, name, dependency)
            # Waiting for `service_healthy` needs a healthcheck to wait for.
            if how.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], (name, dependency)


def test_the_simulator_is_healthy_once_it_answers_and_not_before(session_simulator: Simulator) -> None:
    simulator = compose()["services"]["simulator"]
    check = simulator["healthcheck"]
    # The image has Python, not curl.
    assert check["test"][:3] == ["CMD", "python", "-c"]
    inside = f"127.0.0.1:{option(simulator['command'], '--port')}"
    assert inside in check["test"][3]

    def healthy(netloc: str) -> bool:
        done = subprocess.run(  # noqa: S603 (the healthcheck's own program)
            [sys.executable, "-c", check["test"][3].replace(inside, netloc)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return done.returncode == 0

    assert healthy(urlsplit(session_simulator.root).netloc)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        nothing = f"127.0.0.1:{free.getsockname()[1]}"
    assert not healthy(nothing)
    # Time enough for a first start on a slow machine before the services waiting for it give up on it.
    seconds = float(check["interval"].removesuffix("s")) * check["retries"]
    assert seconds >= 30
    assert float(check["timeout"].removesuffix("s")) < seconds


async def test_the_host_and_the_api_see_the_simulator_with_the_recipes_key_or_none(
    simulator: Simulator,
) -> None:
    # `submit` marks a batch simulated, and the API the batches it makes, when the upstream says it is the
    # simulator; the workers in front of it take only such batches. Its answers say so, a 401 too.
    recipe = header_recipe()
    api_key = service_environment("api", recipe.compose_variables)["OPENROUTER_API_KEY"]
    assert await upstream_is_simulator(simulator.base_url, api_key)
    assert "OPENROUTER_API_KEY" not in recipe.host_variables
    assert await upstream_is_simulator(simulator.base_url, None)


async def test_a_host_submit_is_worked_to_completion_by_a_worker_run_as_compose_runs_it(
    services: Services,
    database_url: str,
    engine: AsyncEngine,
    redis: ArqRedis,
    simulator: Simulator,
    queue_name: str,
    tmp_path: Path,
) -> None:
    # The stack without Docker: the worker's command and environment from the file, the host's from the recipe;
    # only the addresses of Postgres, Redis and the simulator are this machine's test services.
    recipe = header_recipe()
    worker = compose()["services"]["worker"]
    here = urlsplit(simulator.root).netloc
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ORBATCH_", "OPENROUTER_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    inside = service_environment("worker", recipe.compose_variables)
    assert urlsplit(inside["OPENROUTER_BASE_URL"]).netloc == "simulator:8787"
    worker_env = {
        **clean,
        **inside,
        "DATABASE_URL": database_url,
        "REDIS_URL": services.redis,
        "OPENROUTER_BASE_URL": moved(inside["OPENROUTER_BASE_URL"], here),
        "ORBATCH_METRICS_PORT": "0",  # each container has its own 9464; processes on one machine do not
        "ORBATCH_QUEUE_NAME": queue_name,
    }
    assert urlsplit(recipe.host_variables["OPENROUTER_BASE_URL"]).netloc == "127.0.0.1:8787"
    host_env = {
        **clean,
        **recipe.host_variables,
        "DATABASE_URL": database_url,
        "REDIS_URL": services.redis,
        "OPENROUTER_BASE_URL": moved(recipe.host_variables["OPENROUTER_BASE_URL"], here),
        "ORBATCH_QUEUE_NAME": queue_name,
    }
    workers = Workers(worker_env, tmp_path, 1, *worker["command"][1:])
    path = write_jsonl(tmp_path / "requests.jsonl", [chat_line(f"q{i}", f"hello {i}") for i in range(3)])
    args = [str(path) if word == "requests.jsonl" else word for word in recipe.submit[2:]]
    submitted = run_cli(host_env, "submit", *args)
    assert submitted.returncode == 0, submitted.stderr
    batch = submitted.stdout.strip().splitlines()[-1]
    try:
        watched = run_cli(host_env, "status", batch, "--watch", timeout=90)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the batch was not worked:\n{workers.output()[-4000:]}") from None
    assert watched.returncode == 0, (watched.stderr, workers.output()[-4000:])
    status = orjson.loads(run_cli(host_env, "status", batch, "--json").stdout)
    assert status["status"] == "completed"
    assert status["request_counts"]["completed"] == 3
    async with engine.connect() as conn:
        simulated = (
            await conn.execute(text("SELECT simulated FROM batch WHERE id = :id"), {"id": batch})
        ).scalar()
    assert simulated is True
    assert len(await simulator.calls()) == 3

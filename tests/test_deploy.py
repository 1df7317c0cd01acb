"""docker-compose.yml and the Dockerfile: valid, and shaped so `--scale worker=N` works."""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from jobs.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


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
    worker_env = compose()["services"]["worker"]["environment"]
    for name, value in worker_env.items():
        # `${NAME:-default}` as compose resolves it with NAME unset.
        match = re.fullmatch(r"\$\{\w+:-(.*)\}", str(value))
        monkeypatch.setenv(name, match.group(1) if match else str(value))
    settings = Settings()
    assert settings.database_url == "postgresql://orbatch:orbatch@postgres:5432/orbatch"
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.openrouter_base_url == "https://openrouter.ai/api/v1"
    assert settings.concurrency == 16


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
    for name, value in api["environment"].items():
        match = re.fullmatch(r"\$\{\w+:-(.*)\}", str(value))
        monkeypatch.setenv(name, match.group(1) if match else str(value))
    settings = Settings()
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

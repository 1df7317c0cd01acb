"""The one typed settings object, read from the environment."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_OPENROUTER_BASE_URL",
    "DEFAULT_REDIS_URL",
    "Settings",
    "get_settings",
]

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/orbatch"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"


class Settings(BaseSettings):
    """Everything orbatch reads from its environment; names are the documented variables."""

    model_config = SettingsConfigDict(env_prefix="ORBATCH_", extra="ignore", frozen=True)

    database_url: str = Field(
        DEFAULT_DATABASE_URL, validation_alias=AliasChoices("DATABASE_URL", "ORBATCH_DATABASE_URL")
    )
    redis_url: str = Field(DEFAULT_REDIS_URL, validation_alias=AliasChoices("REDIS_URL", "ORBATCH_REDIS_URL"))
    openrouter_api_key: SecretStr | None = Field(None, validation_alias="OPENROUTER_API_KEY")
    openrouter_base_url: str = Field(DEFAULT_OPENROUTER_BASE_URL, validation_alias="OPENROUTER_BASE_URL")
    # Attribution headers OpenRouter shows on its dashboards.
    app_url: str = "https://github.com/orbatch/orbatch"
    app_title: str = "orbatch"

    queue_name: str = "orbatch:queue"
    concurrency: int = Field(16, ge=1, le=4096)
    # Upstream read timeout; long reasoning completions can take minutes.
    request_timeout: float = Field(300.0, gt=0)
    connect_timeout: float = Field(10.0, gt=0)
    # A request's lease in Postgres; renewed every third of it while its call runs.
    lease_seconds: float = Field(30.0, ge=1)
    # Requests of one batch kept in the arq queue at once: enough to keep every worker busy, small
    # enough that a cancel or a pause leaves little behind in Redis.
    feed_window: int = Field(1000, ge=1)
    feed_interval: float = Field(0.5, gt=0)
    # How long an arq worker sleeps between reads of the queue once it has started every job it read; freed slots
    # stay idle for that long, so at 0.1 s (arq's default) a slot idles about 50 ms per read.
    poll_delay: float = Field(0.01, gt=0)
    # A request marked queued whose job has not started after this long is fed again under a new job id.
    requeue_after: float = Field(60.0, gt=0)
    max_attempts: int = Field(5, ge=1, le=100)
    # OpenRouter's free-tier limits: 20 requests a minute, 50 a day (1000 once $10 of credits were bought).
    free_requests_per_minute: int = Field(20, ge=1)
    # The per-minute limit's window; only a test or a simulator with scaled-down limits changes it.
    free_window_seconds: float = Field(60.0, gt=0)
    # Spacing margin on top of window/limit: a burst of 5 let 24 through a 20-per-window limit, and exact
    # spacing with no margin let 21 through (measured against OpenRouter).
    free_rate_margin: float = Field(0.05, ge=0, le=1)
    # None: read from GET /key (50 on the free tier, 1000 once credits were bought).
    free_requests_per_day: int | None = Field(None, ge=0)
    max_in_flight: int = Field(64, ge=1)
    # The longest a task sleeps for a throttle slot; a longer wait parks the request in Postgres instead.
    max_throttle_wait: float = Field(30.0, gt=0)
    retry_base_seconds: float = Field(1.0, ge=0)
    retry_max_seconds: float = Field(120.0, ge=0)
    # Where `orbatch run` keeps its embedded Postgres (and the embedded Redis's log) between runs.
    data_dir: Path = Field(
        default_factory=lambda: (
            Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "orbatch"
        )
    )
    # Options for the simulator `orbatch run --simulator` serves, as `orbatch simulator` takes them.
    simulator_args: str = ""

    def services_given(self) -> tuple[bool, bool]:
        """Whether DATABASE_URL and REDIS_URL were set, rather than left at their defaults."""
        return "database_url" in self.model_fields_set, "redis_url" in self.model_fields_set

    def api_key(self) -> str:
        """The OpenRouter key; raises a clear error when it is not set."""
        if self.openrouter_api_key is None or not self.openrouter_api_key.get_secret_value():
            raise RuntimeError("OPENROUTER_API_KEY is not set: export your OpenRouter key to call OpenRouter")
        return self.openrouter_api_key.get_secret_value()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once per process."""
    return Settings()

"""The one typed settings object, read from the environment when a command or a worker starts."""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs.core.constants import BATCH_API_MAX_BYTES, BATCH_API_MAX_REQUESTS
from jobs.core.errors import SettingsError

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_OPENROUTER_BASE_URL",
    "DEFAULT_REDIS_URL",
    "Settings",
    "get_settings",
    "is_loopback",
]

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/orbatch"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, no port) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Everything orbatch reads from its environment; names are the documented variables."""

    model_config = SettingsConfigDict(env_prefix="ORBATCH_", extra="ignore", frozen=True)

    database_url: str = Field(
        DEFAULT_DATABASE_URL, validation_alias=AliasChoices("DATABASE_URL", "ORBATCH_DATABASE_URL")
    )
    redis_url: str = Field(DEFAULT_REDIS_URL, validation_alias=AliasChoices("REDIS_URL", "ORBATCH_REDIS_URL"))
    openrouter_api_key: SecretStr | None = Field(None, validation_alias="OPENROUTER_API_KEY")
    # The key in a file instead (a Docker or Kubernetes secret), read when the key itself is not set.
    openrouter_api_key_file: Path | None = Field(None, validation_alias="OPENROUTER_API_KEY_FILE")
    openrouter_base_url: str = Field(DEFAULT_OPENROUTER_BASE_URL, validation_alias="OPENROUTER_BASE_URL")
    # A worker with no key waits (saying why, every minute, and reading OPENROUTER_API_KEY_FILE again) rather
    # than exit: under a supervisor that restarts it, an exit is a restart loop.
    wait_for_key: bool = False
    # The key travels in a header: plain http is refused unless the upstream is on this machine, or an operator
    # says the network in between is private (a simulator in a compose network).
    allow_plain_http: bool = False
    # Attribution headers OpenRouter shows on its dashboards.
    app_url: str = "https://github.com/orbatch/orbatch"
    app_title: str = "orbatch"

    queue_name: str = Field("orbatch:queue", min_length=1)
    concurrency: int = Field(16, ge=1, le=4096)
    # Postgres connections one worker process opens at most, whatever its concurrency: each in-flight request
    # holds one only while it writes, so a few serve many (see the README for max_connections).
    db_pool_max: int = Field(20, ge=2, le=1000)
    # One deadline for a whole upstream call, connect to last byte: keep-alive bytes cannot stretch it.
    request_timeout: float = Field(300.0, gt=0)
    connect_timeout: float = Field(10.0, gt=0)
    # An answer larger than this is refused (`response_too_large`) rather than read into memory.
    max_response_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    # Checking a reply against its JSON schema may take at most this long (a pathological `pattern`).
    reply_check_seconds: float = Field(2.0, gt=0)
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
    # On SIGTERM a worker takes no new job and lets calls in flight finish for this long (below compose's
    # stop_grace_period), then gives back what is left.
    shutdown_grace: float = Field(60.0, ge=0)
    # OpenRouter's free-tier limits: 20 requests a minute, 50 a day (1000 once $10 of credits were bought).
    free_requests_per_minute: int = Field(20, ge=1)
    # The per-minute limit's window; only a test or a simulator with scaled-down limits changes it.
    free_window_seconds: float = Field(60.0, gt=0)
    # The free tier's day: a UTC day. Only a test or a simulator with scaled time changes it.
    free_day_seconds: float = Field(86400.0, gt=0)
    # Spacing margin on top of window/limit: a burst of 5 let 24 through a 20-per-window limit, and exact
    # spacing with no margin let 21 through (measured against OpenRouter).
    free_rate_margin: float = Field(0.05, ge=0, le=1)
    # None: read from GET /key (50 on the free tier, 1000 once credits were bought).
    free_requests_per_day: int | None = Field(None, ge=0)
    # The completion tokens an estimate allows a request that sets no max_tokens: about 750 words, a long answer
    # for a chat model, and a round number a user can scale in their head; `--max-tokens` bounds it for real.
    estimate_completion_tokens: int = Field(1024, ge=1)
    max_in_flight: int = Field(64, ge=1)
    # The longest a task sleeps for a throttle slot; a longer wait parks the request in Postgres instead.
    max_throttle_wait: float = Field(30.0, gt=0)
    retry_base_seconds: float = Field(1.0, ge=0)
    retry_max_seconds: float = Field(120.0, ge=0)
    # The outage breaker: this many upstream 5xx in a row (across requests and models, no success between)
    # open it; then one probe at a time, the first after `probe_base` seconds, doubling up to `probe_max`.
    breaker_5xx_run: int = Field(6, ge=2)
    breaker_probe_base: float = Field(2.0, gt=0)
    breaker_probe_max: float = Field(60.0, gt=0)
    # The batch lane (OpenRouter's Batch API). The `model` a remote batch is created with: the `:batch` variant
    # (`variant`; a live report says only those pass) or the base id (`base`, as OpenRouter's own examples do).
    batch_slug: Literal["variant", "base"] = "variant"
    # A remote batch holds at most this many requests and bytes of them (OpenRouter's limits: 5,000 and 200 MB).
    remote_max_requests: int = Field(BATCH_API_MAX_REQUESTS, ge=1, le=BATCH_API_MAX_REQUESTS)
    remote_max_bytes: int = Field(BATCH_API_MAX_BYTES, ge=1024, le=BATCH_API_MAX_BYTES)
    # How often a running remote batch is polled: most take minutes, some hours.
    remote_poll_seconds: float = Field(20.0, gt=0)
    # A worker drives a remote batch under a lease this long, renewed as it goes; a dead worker's lapses.
    remote_lease_seconds: float = Field(120.0, ge=1)
    # A create whose answer was lost (a crash, a cut connection) is looked for among OpenRouter's batches; found
    # in none this long after it was sent, it never took effect and is sent again. Never less than the create's
    # own deadline (ORBATCH_REQUEST_TIMEOUT) and a minute: a create still in flight is never taken for lost.
    remote_lost_create_seconds: float = Field(900.0, gt=0)
    # Sent as a remote batch's `callback_url` (OpenRouter POSTs it when the batch ends); polling alone suffices.
    remote_callback_url: str | None = None
    # Where `orbatch run` keeps its embedded Postgres (and the embedded Redis's log) between runs.
    data_dir: Path = Field(
        default_factory=lambda: (
            Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "orbatch"
        )
    )
    # Options for the simulator `orbatch run --simulator` serves, as `orbatch simulator` takes them.
    simulator_args: str = ""
    # `orbatch run` stops with an error when Postgres or Redis has not answered for this long (an embedded
    # one whose process exited is said at once): long enough for a restart, short enough not to look hung.
    service_lost_seconds: float = Field(30.0, gt=0)

    # Watching the fleet. A worker serves Prometheus metrics at `/metrics` on this port (0: any free port, logged);
    # None: none, so two workers on one machine never fight over a port nobody asked for.
    metrics_port: int | None = Field(None, ge=0, le=65535)
    # A bearer token a scrape of `/metrics` (a worker's or the server's) must send; None: open, as Prometheus
    # scrapes without credentials by default.
    metrics_token: SecretStr | None = None
    # A worker records its heartbeat in Redis this often; it lapses after HEARTBEAT_MISSED_BEATS missed beats, so
    # a killed worker leaves `orbatch workers` within a few of these.
    heartbeat_seconds: float = Field(5.0, gt=0, le=300)
    # `orbatch serve`. An upload over this many bytes is refused (413); OpenAI's limit for batch files.
    max_upload_bytes: int = Field(200 * 1000 * 1000, ge=1)
    # An upload that sends nothing for this long is dropped (408) and nothing of it kept.
    upload_idle_seconds: float = Field(30.0, gt=0)
    # Requests a minute each key may make (429 beyond); None: no limit. `keys create --rate-limit` sets one
    # key's own.
    api_rate_per_minute: int | None = Field(None, ge=1)
    # Host patterns (`hooks.example.com`, `*.example.com`, `127.0.0.1:9000`) a completion callback may be
    # sent to; empty: callbacks are refused. Anything else could turn the server against internal addresses.
    callback_allow: str = ""
    # The first retry of a failed callback waits this long; each next one twice as long.
    callback_retry_base_seconds: float = Field(2.0, gt=0)
    # How long an API instance trusts a key it looked up; for as long again it still does while it looks it
    # up anew, so a revoked key stops working within twice this, and a client polling costs no key query
    # per poll. 0: every request looks its key up.
    api_key_cache_seconds: float = Field(1.0, ge=0)
    # How long an API instance answers a batch's GET from the object it last read: fifty clients polling one
    # batch then cost one read a second, not fifty. 0: every GET reads.
    api_batch_cache_seconds: float = Field(1.0, ge=0)
    # Postgres connections one API process opens at most.
    api_db_pool: int = Field(10, ge=2, le=1000)

    @model_validator(mode="after")
    def _safe_upstream(self) -> Settings:
        parts = urlsplit(self.openrouter_base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"OPENROUTER_BASE_URL must be an http(s) URL such as {DEFAULT_OPENROUTER_BASE_URL}, "
                f"got {self.openrouter_base_url!r}"
            )
        if parts.scheme == "http" and not is_loopback(parts.hostname) and not self.allow_plain_http:
            raise ValueError(
                f"OPENROUTER_BASE_URL {self.openrouter_base_url!r} is plain http to another machine: the API "
                "key would cross the network in clear. Use https, or set ORBATCH_ALLOW_PLAIN_HTTP=1 if the "
                "network in between is private (a simulator in a compose network)"
            )
        return self

    def services_given(self) -> tuple[bool, bool]:
        """Whether DATABASE_URL and REDIS_URL were set, rather than left at their defaults."""
        return "database_url" in self.model_fields_set, "redis_url" in self.model_fields_set

    def api_key(self) -> str:
        """The OpenRouter key (OPENROUTER_API_KEY, else the file OPENROUTER_API_KEY_FILE names); SettingsError
        when there is none."""
        if self.openrouter_api_key is not None and self.openrouter_api_key.get_secret_value():
            return self.openrouter_api_key.get_secret_value()
        if self.openrouter_api_key_file is not None:
            try:
                key = self.openrouter_api_key_file.read_text().strip()
            except OSError as exc:
                raise SettingsError(
                    f"OPENROUTER_API_KEY_FILE {self.openrouter_api_key_file}: cannot read it ({exc.strerror})"
                ) from None
            if key:
                return key
            raise SettingsError(f"OPENROUTER_API_KEY_FILE {self.openrouter_api_key_file} is empty")
        raise SettingsError("OPENROUTER_API_KEY is not set: export your OpenRouter key to call OpenRouter")


def _variable(field: str) -> str:
    """The environment variable a settings field is read from."""
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"ORBATCH_{field.upper()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once per process, at its start; SettingsError names each variable that is wrong."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = _variable(str(error["loc"][0])) if error["loc"] else "the settings"
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(message if not error["loc"] else f"{where}: {message}")
        raise SettingsError("bad configuration in the environment: " + "; ".join(problems)) from None

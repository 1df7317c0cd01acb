"""What crosses processes (Redis key names, headers, job ids, exit codes) and the numbers the design fixes, each
with its reason; a number that one module alone uses lives beside its code."""

from __future__ import annotations

from decimal import Decimal

__all__ = [
    "API_KEY_PREFIX",
    "API_RATE_KEY",
    "BATCH_API_MAX_BYTES",
    "BATCH_API_MAX_REQUESTS",
    "BATCH_API_WINDOW_SECONDS",
    "BATCH_LIST_DEFAULT",
    "BATCH_LIST_MAX",
    "CALLBACK_ATTEMPTS",
    "CALLBACK_RETRY_MAX_SECONDS",
    "CALLBACK_SECRET_PREFIX",
    "CALLBACK_TIMEOUT_SECONDS",
    "CHART_READ_SECONDS",
    "CHART_SPANS",
    "CHAT_ENDPOINT",
    "CREDITED_DAILY_REQUESTS",
    "EMBEDDINGS_ENDPOINT",
    "EXIT_FAILED_REQUESTS",
    "EXIT_INTERRUPTED",
    "EXIT_SKIPPED_LINES",
    "EXIT_STOPPED",
    "FAIR_KEY",
    "FEEDER_LOCK_KEY",
    "FILE_LIST_MAX",
    "FLEET_READ_SECONDS",
    "FREE_TIER_DAILY_REQUESTS",
    "HEARTBEATS_KEY",
    "HEARTBEAT_KEY",
    "HEARTBEAT_MISSED_BEATS",
    "JOB_ID_PREFIX",
    "LIMITS_KEY",
    "MAX_COST_DECIMAL_PLACES",
    "MAX_COST_USD",
    "MAX_MODELS_PER_CALL",
    "NO_AUTH_OWNER",
    "PAGE_RATE_MINUTES",
    "PERSIST_DEADLINE_SECONDS",
    "REDIS_EPOCH_KEY",
    "REDIS_SPARE_SECONDS",
    "RUN_REQUEST_FUNCTION",
    "SESSION_COOKIE",
    "SESSION_KEY",
    "SESSION_SECONDS",
    "SIMULATOR_HEADER",
    "TASK_TIMEOUT_MARGIN_SECONDS",
    "THROTTLE_KEY",
]

# arq stores its own keys under fixed `arq:` prefixes whatever the queue name; ours are the queue name
# plus a suffix, so two deployments sharing one Redis database never see each other's.
# Held by whichever worker feeds the queue this tick, so N workers do not all run the same query.
FEEDER_LOCK_KEY = "{queue}:feeder-lock"
# The fair queue's tags (jobs/scheduling/fairness.py): the last tag handed to each running batch, and each tier's newest.
FAIR_KEY = "{queue}:fair"
# Written by the feeder and never expired: when it is missing, Redis lost its data (FLUSHALL or a restart
# without persistence) and every request Postgres believes queued must be queued again.
REDIS_EPOCH_KEY = "{queue}:epoch"
# The throttle's keys (`free-tat`, `free-day`, `in-flight`, `cooldown:free`, `cooldown:paid`, `breaker`,
# `breaker-streak…`), under the queue name so every worker of a deployment shares them. Simulated runs use the
# queue name plus `:sim`, so a simulator's counts never mix with a real account's.
THROTTLE_KEY = "{queue}:throttle:{name}"
# A hash the workers write at start: the free-tier limits they apply (the daily one read from GET /key), so
# `status --watch` on another machine computes the same quota-aware ETA as the workers pace by.
LIMITS_KEY = "{queue}:limits"
# Every answer of orbatch's simulator carries this header with the simulator's instance id: a client knows it
# talks to a simulator (and to which one) without a key, as GET /key asks for one.
SIMULATOR_HEADER = "X-Orbatch-Simulator"

# Job ids are `r<request id>.<attempt count>[.<feeds>]`: deterministic, so enqueueing twice is a no-op;
# new after each attempt, so a request whose worker died can be queued again before arq's own in-progress
# key for the dead job expires; and new after a lost job is given up on or a request is given back unsent
# (`request.feeds`), since the job just run may still hold its id.
JOB_ID_PREFIX = "r"
RUN_REQUEST_FUNCTION = "run_request"

# OpenRouter's daily free-model quota: 50 on an account that never bought credits, 1000 once $10 were bought.
FREE_TIER_DAILY_REQUESTS = 50
CREDITED_DAILY_REQUESTS = 1000

# OpenRouter answers HTTP 400 to a `models` array with a 4th entry.
MAX_MODELS_PER_CALL = 3

# --- OpenRouter's Batch API (the batch lane) ------------------------------------------------------------
# One remote batch holds at most 5,000 requests and 200 MB (OpenRouter's guide); the bytes are counted as
# decimal megabytes, the smaller reading of "MB".
BATCH_API_MAX_REQUESTS = 5000
BATCH_API_MAX_BYTES = 200 * 1000 * 1000
# A remote batch's only completion window is 24h (some providers run past it, Vertex up to 96 h).
BATCH_API_WINDOW_SECONDS = 24 * 3600
# The endpoints a remote batch runs, one per batch; the request lines are that endpoint's bodies.
CHAT_ENDPOINT = "/v1/chat/completions"
EMBEDDINGS_ENDPOINT = "/v1/embeddings"

# arq kills a task at its timeout, which must never cut a task that is still within its bounds: the longest
# throttle wait, the call's own deadline, then its write retried through a database restart, plus this margin.
TASK_TIMEOUT_MARGIN_SECONDS = 60.0
# A response in hand is worth waiting for: its write is retried through a database restart this long.
PERSIST_DEADLINE_SECONDS = 120.0
# A Redis step a request's record can do without (a permit's release, a cool-down, a stopping worker's
# heartbeat) is given this long: longer than any Redis answer on a working network, far shorter than the
# retries that ride out a blip, so a lost Redis costs a few seconds and never a paid answer.
REDIS_SPARE_SECONDS = 3.0

# Exit statuses beyond 0 (done), 1 (a runtime failure) and 2 (bad input or usage), for cron and CI:
# the batch finished but some requests failed;
EXIT_FAILED_REQUESTS = 3
# the batch stopped and needs a person: cancelled, or paused on its budget, the account's credits or the key;
EXIT_STOPPED = 4
# the batch was submitted (and, for `run`, finished with every request answered) but `--skip-invalid` left
# bad lines of the file out, which a script may want to know;
EXIT_SKIPPED_LINES = 5
# interrupted (Ctrl-C); the batch is kept, and the same command again carries on with it (128 + SIGINT).
EXIT_INTERRUPTED = 130

# --- watching the fleet: heartbeats and metrics ----------------------------------------------------------
# Each worker's heartbeat: a JSON value that expires unless renewed, so a killed worker disappears by itself,
# under the deployment's queue name (not a run's own queue) so `orbatch workers` sees every worker of it.
HEARTBEAT_KEY = "{queue}:worker:{id}"
# A sorted set of the worker ids that beat (scored by their last beat, ms), so the live ones are found without
# a SCAN over a keyspace that holds a job key per queued request.
HEARTBEATS_KEY = "{queue}:workers"
# A heartbeat lives this many beats: one beat late (a busy machine, a Redis blip) is not death.
HEARTBEAT_MISSED_BEATS = 3
# A scrape reads the fleet's gauges from Redis within this, well inside Prometheus's default 10 s scrape timeout:
# a worker's Redis client retries through a blip for longer, and a late answer is worth less than the process's
# own counters on time.
FLEET_READ_SECONDS = 3.0
# --- the HTTP API (`orbatch serve`) ---------------------------------------------------------------------
# A key is `obk_` and 43 URL-safe characters (32 random bytes): a prefix a secret scanner can match, and
# enough entropy that a plain sha256 of it is a safe stored form (a slow hash guards guessable passwords).
API_KEY_PREFIX = "obk_"
# Callback signing secrets in the Standard Webhooks form OpenAI's own SDK verifies (`whsec_` + base64).
CALLBACK_SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
# The owner a `--no-auth` server (loopback only) acts as; `orbatch keys create local` gives it a key.
NO_AUTH_OWNER = "local"
# One token bucket per owner: `<queue>:api-rate:<owner>`, expiring once full again.
API_RATE_KEY = "{queue}:api-rate:{owner}"
# OpenAI's list limits: files up to 10,000 a page (its default too), batches 20 by default and 100 at most.
FILE_LIST_MAX = 10_000
BATCH_LIST_DEFAULT = 20
BATCH_LIST_MAX = 100
# A callback is tried this many times, backing off from ORBATCH_CALLBACK_RETRY_BASE_SECONDS up to this cap
# (about an hour and a half in all with the defaults), each POST bounded by the timeout.
CALLBACK_ATTEMPTS = 12
CALLBACK_RETRY_MAX_SECONDS = 900.0
CALLBACK_TIMEOUT_SECONDS = 10.0
# --- the dashboard (`orbatch serve`'s pages) --------------------------------------------------------------
# A batch's rate on its page: requests finished over this many whole minutes back, from the minute tally (a
# few rows), long enough to smooth the free tier's bursts, short enough to show a stall within minutes.
PAGE_RATE_MINUTES = 5
# A chart spans a batch's whole life in at most this many bars or points: enough to see a stall or a pause,
# and the minute tally is read in as many groups whatever the batch's age.
CHART_SPANS = 120
# A batch page's charts read the minute tally again at most this often (per API instance): they are drawn at a
# minute's grain, and an old batch's minutes are thousands of rows that every 2 s refresh would read again.
CHART_READ_SECONDS = 15.0
# A signed-in browser's session: `<queue>:session:<sha256 of its cookie>` holds the key's digest and the
# session's form token, for a working day; the key's revoke ends it at the next page.
SESSION_KEY = "{queue}:session:{digest}"
SESSION_SECONDS = 12 * 3600
SESSION_COOKIE = "orbatch_session"

# A batch's budget (`--max-cost`) as Postgres's NUMERIC holds it exactly (`1e999999` is not one), and finer than
# any price OpenRouter quotes.
MAX_COST_USD = Decimal(1_000_000_000)
MAX_COST_DECIMAL_PLACES = 12

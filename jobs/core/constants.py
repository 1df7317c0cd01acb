"""Redis key names and the numbers the design fixes, each with the reason for its value."""

from __future__ import annotations

__all__ = [
    "ACCOUNT_RECHECK_SECONDS",
    "ACCOUNT_RETRY_SECONDS",
    "API_KEY_PREFIX",
    "API_RATE_KEY",
    "BATCH_LIST_DEFAULT",
    "BATCH_LIST_MAX",
    "BURST_CHECK_SECONDS",
    "CALLBACK_ATTEMPTS",
    "CALLBACK_CLAIM_SECONDS",
    "CALLBACK_RETRY_MAX_SECONDS",
    "CALLBACK_SECRET_PREFIX",
    "CALLBACK_TIMEOUT_SECONDS",
    "CALL_SECONDS_BUCKETS",
    "CHART_MEMORY_BATCHES",
    "CHART_READ_SECONDS",
    "CHART_SPANS",
    "CREDITED_DAILY_REQUESTS",
    "EMBEDDED_REDIS_START_SECONDS",
    "ERROR_MESSAGE_MAX_CHARS",
    "EXIT_FAILED_REQUESTS",
    "EXIT_INTERRUPTED",
    "EXIT_SKIPPED_LINES",
    "EXIT_STOPPED",
    "EXPIRY_SWEEP_SECONDS",
    "FAIR_KEY",
    "FEEDER_LOCK_KEY",
    "FILE_CHUNK_BYTES",
    "FILE_LIST_MAX",
    "FLEET_READ_SECONDS",
    "FORM_FIELD_MAX_BYTES",
    "FREE_TIER_DAILY_REQUESTS",
    "HEARTBEATS_KEY",
    "HEARTBEAT_FORGET_SECONDS",
    "HEARTBEAT_KEY",
    "HEARTBEAT_MISSED_BEATS",
    "JOB_ID_PREFIX",
    "KEY_WAIT_SECONDS",
    "LIMITS_KEY",
    "MAINTENANCE_SECONDS",
    "MAX_COMPLETION_WINDOW_SECONDS",
    "MAX_CUSTOM_ID_CHARS",
    "MAX_LINE_BYTES",
    "MAX_MODELS_PER_CALL",
    "MAX_MODEL_LABELS",
    "MAX_REPORTED_LINE_ERRORS",
    "MAX_REQUEST_HEAD_BYTES",
    "METADATA_KEY_MAX_CHARS",
    "METADATA_MAX_PAIRS",
    "METADATA_VALUE_MAX_CHARS",
    "MIN_COMPLETION_WINDOW_SECONDS",
    "MODEL_LABEL_RECHECK_SECONDS",
    "NO_AUTH_OWNER",
    "PAGE_BATCHES",
    "PAGE_MESSAGE_CHARS",
    "PAGE_RATE_MINUTES",
    "PAGE_RATE_MIN_SECONDS",
    "PAGE_REFRESH_SECONDS",
    "PERSIST_DEADLINE_SECONDS",
    "PLAIN_PROGRESS_SECONDS",
    "QUOTA_HOLD_SECONDS",
    "READ_BLOCK_BYTES",
    "REDIS_EPOCH_KEY",
    "REDIS_SPARE_SECONDS",
    "REMAINING_FREE_SECONDS",
    "REQUEUE_AFTER_SECONDS",
    "RUN_REQUEST_FUNCTION",
    "RUN_SIMULATOR_ARGS",
    "SESSION_COOKIE",
    "SESSION_KEY",
    "SESSION_SECONDS",
    "SIMULATOR_HEADER",
    "STAGING_COPY_BYTES",
    "STAGING_COPY_CHUNK",
    "STOPPED_WRITE_SECONDS",
    "SWEEP_SECONDS",
    "TASK_TIMEOUT_MARGIN_SECONDS",
    "THROTTLE_KEY",
    "THROTTLE_WAIT_BUCKETS",
    "TWIN_WAIT_SECONDS",
    "WATCH_POLL_SECONDS",
    "WORKER_SUMMARY_SECONDS",
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

# A hold on free requests longer than this is the daily quota, not the per-minute limit: the batch is parked
# (reason `quota`) so that `worker --burst` can exit and `status` says why.
QUOTA_HOLD_SECONDS = 300.0

# With --dedupe, a request whose identical twin is being called waits this long before looking again.
TWIN_WAIT_SECONDS = 2.0

# OpenRouter answers HTTP 400 to a `models` array with a 4th entry.
MAX_MODELS_PER_CALL = 3

# A request marked queued that has not started after this long is fed again. Feeding is idempotent (a
# no-op while its job still waits in Redis), so this only bounds how long a lost job strands a request:
# a job that failed outside the task's control, an expired job key, a Redis failover to a stale replica.
REQUEUE_AFTER_SECONDS = 60.0
# arq kills a task at its timeout, which must never cut a task that is still within its bounds: the longest
# throttle wait, the call's own deadline, then its write retried through a database restart, plus this margin.
TASK_TIMEOUT_MARGIN_SECONDS = 60.0
# A response in hand is worth waiting for: its write is retried through a database restart this long.
PERSIST_DEADLINE_SECONDS = 120.0
# A Redis step a request's record can do without (a permit's release, a cool-down, a stopping worker's
# heartbeat) is given this long: longer than any Redis answer on a working network, far shorter than the
# retries that ride out a blip, so a lost Redis costs a few seconds and never a paid answer.
REDIS_SPARE_SECONDS = 3.0
# A task cancelled by a second Ctrl-C records its stop within this; past it the lease expires instead.
STOPPED_WRITE_SECONDS = 5.0
# Seconds of each minute at which the arq cron sweeper runs a feeder tick (a backstop for the feeder loop).
SWEEP_SECONDS = frozenset({0, 15, 30, 45})
# A worker says what it did (answered, failed, rate, waits) this often, when anything happened.
WORKER_SUMMARY_SECONDS = 30.0
# A worker reads its upstream's GET /key again this often, and adopts what changed (limits, a new simulator);
# while it cannot be read (the upstream starts after the worker), every few seconds.
ACCOUNT_RECHECK_SECONDS = 60.0
ACCOUNT_RETRY_SECONDS = 5.0
# A worker waiting for its key (ORBATCH_WAIT_FOR_KEY) says so, and looks again, this often.
KEY_WAIT_SECONDS = 60.0
# How often a burst worker asks Postgres whether anything is left to run.
BURST_CHECK_SECONDS = 0.5

# Rows per COPY chunk into the staging table: large enough to amortise the round trip. A chunk is also sent
# once its rows hold this many bytes, so that a file of long lines (up to the 16 MiB line limit) keeps submit
# within its memory bound: rows of the chunk, plus COPY's encoding of them, plus one line being parsed.
STAGING_COPY_CHUNK = 5000
STAGING_COPY_BYTES = 16 * 1024 * 1024
# Input is read (and gzip decompressed) this much at a time.
READ_BLOCK_BYTES = 1024 * 1024
# A line longer than this is a bad line; the reader never holds more than this of one line.
MAX_LINE_BYTES = 16 * 1024 * 1024
# A file with a million bad lines reports the first ones and a count, not a million lines of output.
MAX_REPORTED_LINE_ERRORS = 50
# custom_id is an identifier, not a payload; OpenAI's Batch API uses the same bound.
MAX_CUSTOM_ID_CHARS = 512
# Upstream error messages can be whole HTML pages; the database keeps their start.
ERROR_MESSAGE_MAX_CHARS = 2000

# How often a watcher (`run`, `status --watch`, `submit --wait`) reads a batch's counts: one cheap query.
WATCH_POLL_SECONDS = 1.0
# `orbatch run --simulator` without ORBATCH_SIMULATOR_ARGS: the simulator's clock runs 60 times faster (its
# minute is a second, its day 24 minutes) and it answers as an account that bought credits (1000 free requests a
# day), so a trial shows the free tier's pacing and quota at work and never waits long for a simulated midnight.
RUN_SIMULATOR_ARGS = "--speed 60 --no-free-tier"
# How often a watcher counts again which unfinished requests go to a free model (a scan of the batch's
# unfinished requests, for the quota-aware ETA): the count moves slowly and the scan grows with the batch.
REMAINING_FREE_SECONDS = 30.0
# Off a terminal, progress is a plain line this often (and at every change of state): a log, not a redraw.
PLAIN_PROGRESS_SECONDS = 5.0

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

# The embedded Redis answers PING within milliseconds of starting; this bounds a broken or foreign binary.
EMBEDDED_REDIS_START_SECONDS = 10.0

# --- watching the fleet: heartbeats and metrics ----------------------------------------------------------
# Each worker's heartbeat: a JSON value that expires unless renewed, so a killed worker disappears by itself,
# under the deployment's queue name (not a run's own queue) so `orbatch workers` sees every worker of it.
HEARTBEAT_KEY = "{queue}:worker:{id}"
# A sorted set of the worker ids that beat (scored by their last beat, ms), so the live ones are found without
# a SCAN over a keyspace that holds a job key per queued request.
HEARTBEATS_KEY = "{queue}:workers"
# A heartbeat lives this many beats: one beat late (a busy machine, a Redis blip) is not death.
HEARTBEAT_MISSED_BEATS = 3
# Ids in the sorted set whose heartbeat is this old are dropped by the next beat of any worker: nobody may read
# the list for a long time, and a fleet that restarts often must not grow it for ever.
HEARTBEAT_FORGET_SECONDS = 3600.0
# Call latency buckets (seconds): a chat completion takes from a tenth of a second (a cached or tiny answer) to
# minutes (a long reasoning answer), up to the call's default deadline of 300 s.
CALL_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
# Throttle wait buckets (seconds): no wait at all for paid calls, up to the 3 s GCRA spacing of free calls at
# 20 a minute, and up to ORBATCH_MAX_THROTTLE_WAIT (30 s) behind a queue of reserved slots or a cool-down.
THROTTLE_WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
# A worker labels its metrics with at most this many model ids (others are `other`): model ids come from
# OpenRouter's catalogue, but `submit --no-check-models` lets any string through, and every label value is a
# time series Prometheus keeps.
MAX_MODEL_LABELS = 200
# A model id the catalogue did not list is labelled `other` without asking again for this long: the worker's
# price book reloads the list on a miss at most once a minute, so asking sooner only waits on its lock.
MODEL_LABEL_RECHECK_SECONDS = 60.0
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
# A request's line and headers together: as much as common servers take (nginx 32 KB, Node 16 KB). The HTTP
# parser would otherwise hold a header of any length in memory.
MAX_REQUEST_HEAD_BYTES = 32 * 1024
# Uploads are stored in Postgres in pieces of this size: few enough rows for a 200 MB file, small enough
# that reading one back (to submit it, or to download it) holds little memory.
FILE_CHUNK_BYTES = 1024 * 1024
# A form field other than the file (`purpose`, `expires_after[seconds]`) is a word or a number.
FORM_FIELD_MAX_BYTES = 1024
# OpenAI's list limits: files up to 10,000 a page (its default too), batches 20 by default and 100 at most.
FILE_LIST_MAX = 10_000
BATCH_LIST_DEFAULT = 20
BATCH_LIST_MAX = 100
# OpenAI's metadata bounds: 16 pairs, keys up to 64 characters, values up to 512.
METADATA_MAX_PAIRS = 16
METADATA_KEY_MAX_CHARS = 64
METADATA_VALUE_MAX_CHARS = 512
# OpenAI's only window is 24h; free-tier batches can need days (50 free requests a day), so longer windows
# are taken, up to 30 days (OpenAI's longest file expiry).
MIN_COMPLETION_WINDOW_SECONDS = 24 * 3600
MAX_COMPLETION_WINDOW_SECONDS = 30 * 24 * 3600
# How often each API instance finalizes finished batches, sends due callbacks and drops expired files.
MAINTENANCE_SECONDS = 1.0
# An expired batch's calls in flight end within a lease and a request timeout; for this long after expiry
# any request such a call put back to pending is cancelled too.
EXPIRY_SWEEP_SECONDS = 3600.0
# A callback is tried this many times, backing off from ORBATCH_CALLBACK_RETRY_BASE_SECONDS up to this cap
# (about an hour and a half in all with the defaults), each POST bounded by the timeout.
CALLBACK_ATTEMPTS = 12
CALLBACK_RETRY_MAX_SECONDS = 900.0
CALLBACK_TIMEOUT_SECONDS = 10.0
# An instance sending a callback holds it this long; one that died mid-send loses it to another after that.
CALLBACK_CLAIM_SECONDS = 60.0
# --- the dashboard (`orbatch serve`'s pages) --------------------------------------------------------------
# A batch's rate on its page: requests finished over this many whole minutes back, from the minute tally (a
# few rows), long enough to smooth the free tier's bursts, short enough to show a stall within minutes.
PAGE_RATE_MINUTES = 5
# Batches per page of the list: a screen's worth, and each one a handful of tally rows to sum.
PAGE_BATCHES = 20
# Pages ask for their fresh part this often while open and visible; each ask is a few indexed reads.
PAGE_REFRESH_SECONDS = 2
# A chart spans a batch's whole life in at most this many bars or points: enough to see a stall or a pause,
# and the minute tally is read in as many groups whatever the batch's age.
CHART_SPANS = 120
# A batch page's charts read the minute tally again at most this often (per API instance): they are drawn at a
# minute's grain, and an old batch's minutes are thousands of rows that every 2 s refresh would read again.
CHART_READ_SECONDS = 15.0
# Batches whose chart rows an instance keeps at once; past this the memory is emptied and refills.
CHART_MEMORY_BATCHES = 256
# A batch's rate is shown once it has run this long: its first requests come in a burst, before any throttle.
PAGE_RATE_MIN_SECONDS = 5.0
# An error's latest message as a page shows it: enough for any provider's sentence, not a whole echoed body.
PAGE_MESSAGE_CHARS = 500
# A signed-in browser's session: `<queue>:session:<sha256 of its cookie>` holds the key's digest and the
# session's form token, for a working day; the key's revoke ends it at the next page.
SESSION_KEY = "{queue}:session:{digest}"
SESSION_SECONDS = 12 * 3600
SESSION_COOKIE = "orbatch_session"

#!/usr/bin/env bash
# orbatch's main job end to end: submit a JSONL file, run a worker until it is done, export the results.
# Needs Python 3.11+, PostgreSQL and Redis (defaults: 127.0.0.1:5432 as user postgres, 127.0.0.1:6379;
# override with DATABASE_URL and REDIS_URL, or start them with `docker compose up -d redis postgres`).
# Without OPENROUTER_API_KEY it runs against the local OpenRouter simulator: no real model is called.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v uv >/dev/null 2>&1; then python3 -m pip install --quiet uv; hash -r; fi
uv sync --quiet
# shellcheck disable=SC1091
source .venv/bin/activate

export DATABASE_URL="${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/orbatch}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
out=out/quickstart
mkdir -p "$out"

if [ -z "${OPENROUTER_API_KEY:-}" ]; then
  echo "OPENROUTER_API_KEY is not set: using the local OpenRouter simulator."
  echo "No real model is called and no quota is used; the answers are echoes of the prompts."
  echo "Its free tier is scaled down to 20 requests per 6 s (OpenRouter's: 20 a minute) so this takes seconds."
  export ORBATCH_FREE_WINDOW_SECONDS=6 ORBATCH_FREE_REQUESTS_PER_DAY=100000
  orbatch simulator --port 0 --free-window-seconds 6 --free-per-day 100000 >"$out/simulator.log" 2>&1 &
  simulator=$!
  trap 'kill $simulator 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do grep -q "listening on" "$out/simulator.log" 2>/dev/null && break; sleep 0.1; done
  OPENROUTER_BASE_URL="$(grep -o 'http://[^ ]*' "$out/simulator.log" | head -n 1)"
  export OPENROUTER_BASE_URL OPENROUTER_API_KEY="sk-or-v1-simulator"
  models="${MODELS:-sim/echo:free,sim/backup}"
else
  models="${MODELS:-meta-llama/llama-3.3-70b-instruct:free,mistralai/mistral-small-3.2-24b-instruct:free}"
fi

orbatch db upgrade
batch=$(orbatch submit examples/quickstart.jsonl --models "$models" --name quickstart)
orbatch worker --burst --concurrency 8
orbatch status "$batch"
orbatch results "$batch" -o "$out/results.jsonl" --errors "$out/errors.jsonl"
echo "First result:"
head -n 1 "$out/results.jsonl"

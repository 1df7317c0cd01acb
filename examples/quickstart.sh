#!/usr/bin/env bash
# orbatch's main job end to end on a fresh machine: install, then `orbatch run`: submit a JSONL file, work it
# with an in-process worker while showing progress, and write the results.
# Needs only Python 3.11+: without DATABASE_URL / REDIS_URL it starts an embedded Postgres and Redis (the
# `local` extra; kept in ORBATCH_DATA_DIR, default ~/.local/share/orbatch) and stops them at the end; with
# them set, it uses yours.
# Without OPENROUTER_API_KEY it runs against the local OpenRouter simulator: no real model is called.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v uv >/dev/null 2>&1; then python3 -m pip install --quiet uv; hash -r; fi
# orbatch and its embedded services, without the development tools (plain `uv sync` adds them, for the tests);
# --inexact leaves alone whatever the environment already has.
uv sync --frozen --no-dev --extra local --inexact --quiet
# shellcheck disable=SC1091
source "${UV_PROJECT_ENVIRONMENT:-.venv}/bin/activate"

out=out/quickstart
mkdir -p "$out"
extra=()
if [ -z "${OPENROUTER_API_KEY:-}" ]; then
  echo "OPENROUTER_API_KEY is not set: using the local OpenRouter simulator."
  echo "No real model is called and no quota is used; the answers are echoes of the prompts."
  echo "Its clock runs 60 times faster (OpenRouter's 20 free requests a minute become 20 a second), so this takes seconds."
  extra=(--simulator)
  models="${MODELS:-google/gemma-4-31b-it:free,openai/gpt-oss-20b:free}"
else
  models="${MODELS:-google/gemma-4-31b-it:free,openai/gpt-oss-20b:free}"
fi

orbatch run examples/quickstart.jsonl -o "$out/results.jsonl" --errors "$out/errors.jsonl" \
  --models "$models" --name quickstart "${extra[@]}"
# The first answer as a person reads it: the file holds one OpenAI Batch output line (JSON) per request.
python - "$out/results.jsonl" <<'PY'
import json, sys

with open(sys.argv[1], encoding="utf-8") as f:
    results = [json.loads(line) for line in f if line.strip()]
if results:
    body = results[0]["response"]["body"]
    text = " ".join(str(body["choices"][0]["message"].get("content") or "").split())
    print(f"First answer, {results[0]['custom_id']} ({body.get('model', 'model not said')}): {text[:300]}")
print(f"All {len(results)} results: {sys.argv[1]} (OpenAI Batch output lines); "
      "`orbatch results quickstart --format records` prints each custom_id with its answer")
PY

#!/usr/bin/env bash
# Label 300 e-mails of the SpamAssassin public corpus as spam or ham with structured output, then score them.
# With OPENROUTER_API_KEY: OpenRouter's free models (300 requests: six days of a free account's 50 a day;
# `orbatch run` says so in its ETA). Without: the local simulator, scaled to finish in seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
extra=()
if [ -z "${OPENROUTER_API_KEY:-}" ]; then
  echo "OPENROUTER_API_KEY is not set: using the local OpenRouter simulator (labels are arbitrary, not a model's)."
  extra=(--simulator)
fi
orbatch run examples/data/spam.jsonl -o out/spam-labels.jsonl --errors out/spam-errors.jsonl --format records \
  --name spam-labels --template examples/labelling/prompt.txt --system "$(cat examples/labelling/system.txt)" \
  --json-schema examples/labelling/label.schema.json \
  --models "${MODELS:-google/gemma-4-31b-it:free,openai/gpt-oss-20b:free}" \
  "${extra[@]}"
python3 examples/labelling/score.py out/spam-labels.jsonl

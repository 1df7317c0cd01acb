#!/usr/bin/env bash
# Label 300 e-mails of the SpamAssassin public corpus as spam or ham by a vote of two models with structured
# output, then score the majority (and each model, and their agreement) against the corpus's own labels.
# With OPENROUTER_API_KEY: OpenRouter's free models (600 requests, each e-mail asked of both: twelve days of a
# free account's 50 a day; `orbatch run` says so in its ETA). Without: the local simulator, scaled to finish in
# seconds, its second model set to give the other label on a tenth of the e-mails.
set -euo pipefail
cd "$(dirname "$0")/../.."
models="${MODELS:-google/gemma-4-31b-it:free,openai/gpt-oss-20b:free}"
extra=()
if [ -z "${OPENROUTER_API_KEY:-}" ]; then
  echo "OPENROUTER_API_KEY is not set: using the local OpenRouter simulator (labels are arbitrary, not a model's)."
  extra=(--simulator)
  export ORBATCH_SIMULATOR_ARGS="${ORBATCH_SIMULATOR_ARGS:---speed 60 --no-free-tier --label-noise ${models##*,}=0.1}"
fi
orbatch run examples/data/spam.jsonl -o out/spam-labels.jsonl --errors out/spam-errors.jsonl --format records \
  --name spam-labels --template examples/labelling/prompt.txt --system "$(cat examples/labelling/system.txt)" \
  --json-schema examples/labelling/label.schema.json --vote "$models" --gold truth "${extra[@]}"
# The e-mails the two models label differently, for a person to look at.
orbatch results spam-labels --disagreements -o out/spam-disagreements.jsonl
orbatch score spam-labels --gold truth --field label

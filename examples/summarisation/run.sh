#!/usr/bin/env bash
# Summarise every State of the Union address from 1790 to 2021 (233 documents, 10 MB of text).
# With OPENROUTER_API_KEY: OpenRouter's free models (233 requests: five days of a free account's 50 a day;
# `orbatch run` says so in its ETA). Without: the local simulator, scaled to finish in seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
extra=()
if [ -z "${OPENROUTER_API_KEY:-}" ]; then
  echo "OPENROUTER_API_KEY is not set: using the local OpenRouter simulator (the 'summaries' echo the prompts)."
  extra=(--simulator)
fi
orbatch run examples/data/sotu.jsonl.gz -o out/sotu-summaries.jsonl --errors out/sotu-errors.jsonl \
  --format records --name sotu-summaries --template examples/summarisation/prompt.txt \
  --models "${MODELS:-google/gemma-4-31b-it:free,z-ai/glm-5.2:free}" "${extra[@]}"
python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).readline()); print(r["president"], r["year"]); print(r["answer"][:600])' out/sotu-summaries.jsonl

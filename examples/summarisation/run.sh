#!/usr/bin/env bash
# Summarise every State of the Union address from 1790 to 2021 (233 documents, 10 MB of text).
# With OPENROUTER_API_KEY: OpenRouter's free models (233 requests: five days of a free account's 50 a day;
# `orbatch run` says so in its ETA). Without: the local simulator, scaled to finish in seconds.
# Then the longest addresses again with a small-context model (`--long split`): each is cut into chunks the
# model holds, each chunk summarised, the summaries combined. Against the simulator that model is `sim/small`
# (512 tokens); with a key, set LONG_MODELS to a chain of small models to do the same, else the step is skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
extra=()
long_models="${LONG_MODELS:-}"
if [ -z "${OPENROUTER_API_KEY:-}" ]; then
  echo "OPENROUTER_API_KEY is not set: using the local OpenRouter simulator (the 'summaries' echo the prompts)."
  extra=(--simulator)
  long_models="${LONG_MODELS:-sim/small}"
fi
orbatch run examples/data/sotu.jsonl.gz -o out/sotu-summaries.jsonl --errors out/sotu-errors.jsonl \
  --format records --name sotu-summaries --template examples/summarisation/prompt.txt \
  --models "${MODELS:-google/gemma-4-31b-it:free,z-ai/glm-5.2:free}" "${extra[@]}"
python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).readline()); print(r["president"], r["year"]); print(r["answer"][:600])' out/sotu-summaries.jsonl

if [ -z "$long_models" ]; then
  echo "LONG_MODELS is not set: the longest addresses are not summarised again in parts."
  exit 0
fi
# The LONGEST (3) longest addresses, 150 to 217 kB each.
python3 - "${LONGEST:-3}" <<'EOF'
import gzip, json, sys
rows = [json.loads(line) for line in gzip.open("examples/data/sotu.jsonl.gz")]
rows.sort(key=lambda r: len(r["text"]), reverse=True)
with open("out/sotu-longest.jsonl", "w") as f:
    for row in rows[: int(sys.argv[1])]:
        f.write(json.dumps(row) + "\n")
EOF
orbatch run out/sotu-longest.jsonl -o out/sotu-longest-summaries.jsonl --errors out/sotu-longest-errors.jsonl \
  --format records --name sotu-longest --template examples/summarisation/prompt.txt \
  --models "$long_models" --long split --max-tokens 100 "${extra[@]}"
python3 - out/sotu-longest-summaries.jsonl <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"{r['president']} {r['year']}: {len(r['text']) // 1000} kB summarised in {r['calls']} calls")
EOF

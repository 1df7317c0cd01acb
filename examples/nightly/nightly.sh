#!/usr/bin/env bash
# Nightly summarisation: every JSONL file in INBOX without results yet is submitted, waited for, and its
# results written beside it (NAME.results.jsonl, failures in NAME.errors.jsonl). Workers run elsewhere
# (`orbatch worker` on any machine, or `docker compose up`); this only needs DATABASE_URL and REDIS_URL.
#
#   crontab:  0 2 * * *  cd /srv/orbatch && examples/nightly/nightly.sh /data/inbox >>/var/log/orbatch-nightly.log 2>&1
#
# Safe to re-run at any time: submitting a file again returns its batch, so a crash, a reboot or an overlapping
# run picks the same batch up instead of paying twice. Exit status, the highest of the files': 0 all done;
# 3 some requests failed (their errors are beside the file); 4 a batch stopped and needs a person (budget,
# credits, key) and is tried again on the next run; 1 or 2 orbatch could not run (a service, a bad file).
set -uo pipefail
inbox="${1:?usage: nightly.sh INBOX}"
template="${TEMPLATE:-$(dirname "$0")/../summarisation/prompt.txt}"
models="${MODELS:-google/gemma-4-31b-it:free,z-ai/glm-5.2:free}"
worst=0
shopt -s nullglob
for file in "$inbox"/*.jsonl "$inbox"/*.jsonl.gz; do
  case "$file" in *.results.jsonl | *.errors.jsonl) continue ;; esac
  base="${file%.gz}"
  base="${base%.jsonl}"
  [ -e "$base.results.jsonl" ] && continue
  echo "$(date -u +%FT%TZ) $file"
  orbatch submit "$file" --template "$template" --models "$models" --name "nightly:$(basename "$file")" \
    --wait >"$base.batch"
  status=$?
  batch=$(head -n 1 "$base.batch")
  rm -f "$base.batch"
  if [ "$status" -eq 0 ] || [ "$status" -eq 3 ]; then
    # Written under a temporary name and moved, so a results file is always whole.
    orbatch results "$batch" --format records -o "$base.results.jsonl.part" --errors "$base.errors.jsonl" &&
      mv "$base.results.jsonl.part" "$base.results.jsonl"
  fi
  echo "$(date -u +%FT%TZ) $file: $batch exit $status"
  [ "$status" -gt "$worst" ] && worst=$status
done
exit "$worst"

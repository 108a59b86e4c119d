#!/usr/bin/env bash
# Benchmark: trigger → first step started, on a real `kiln serve` (SQLite, 2 local workers).
# 1,000 runs of a one-job workflow are triggered over the API at a steady 20 per second (the
# pool keeps up, so the figure is the server's own latency, not a queue's); for each run, the
# time from the run's creation (the API call) to its job's `job.started` event, both as the
# store recorded them (milliseconds). Appends p50/p99 to bench/results.md.
#
# usage: bench/latency.sh [RUNS]      (builds kiln in release mode first)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kiln-target}"
for tool in curl sqlite3; do
  command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$tool"; }
done
cargo build --release -q -p kiln-cli
kiln="$CARGO_TARGET_DIR/release/kiln"

work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/project/.kiln/workflows"
cat > "$work/project/.kiln/workflows/one.yml" <<'EOF'
name: one
on: [push, workflow_dispatch]
defaults:
  run:
    shell: sh
jobs:
  only:
    runs-on: local
    steps:
      - run: "true"
EOF
# One local run registers the project (named after its folder) in the data dir.
"$kiln" run "$work/project" --data-dir "$work/data" >/dev/null 2>&1

"$kiln" serve --listen 127.0.0.1:0 --data-dir "$work/data" --workers 2 >"$work/serve.out" 2>"$work/serve.err" &
server_pid=$!
for _ in $(seq 100); do grep -q '^listening on ' "$work/serve.out" && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$work/serve.out")
token=$(sed -n 's/^admin token: //p' "$work/serve.out")
[ -n "$url" ] && [ -n "$token" ] || { cat "$work/serve.err"; exit 1; }

for _ in $(seq "$runs"); do
  curl -sf -o /dev/null -X POST -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -d '{"workflow":"one"}' \
    "$url/api/v1/projects/project/runs" &
  sleep 0.05
done
wait $(jobs -p | grep -v "^$server_pid$") 2>/dev/null || true
# Wait for the last runs to end.
for _ in $(seq 600); do
  left=$(sqlite3 "$work/data/kiln.db" "SELECT count(*) FROM runs WHERE status NOT IN ('success','failure','cancelled')")
  [ "$left" = 0 ] && break
  sleep 0.1
done

read -r n p50 p99 max < <(sqlite3 -separator ' ' "$work/data/kiln.db" "
  WITH lat AS (
    SELECT (SELECT min(e.at) FROM events e WHERE e.run_id = r.id AND e.kind = 'job.started')
           - r.created_at AS ms
    FROM runs r WHERE r.event = 'workflow_dispatch'
  ), ranked AS (
    SELECT ms, row_number() OVER (ORDER BY ms) AS k, count(*) OVER () AS n FROM lat WHERE ms IS NOT NULL
  )
  SELECT max(n),
         max(CASE WHEN k = CAST(0.50 * n + 0.5 AS INT) THEN ms END),
         max(CASE WHEN k = CAST(0.99 * n + 0.5 AS INT) THEN ms END),
         max(ms)
  FROM ranked;")

{
  echo
  echo "## Trigger → first step started (\`kiln serve\`, SQLite, 2 workers)"
  echo
  echo "Written by \`bench/latency.sh\` on $(date -u +%Y-%m-%d) — $(nproc) cores."
  echo "$n one-job runs triggered with \`POST /api/v1/projects/{id}/runs\` at 20 per second; for each, the"
  echo "run's creation to its job's \`job.started\` event, as the store recorded them:"
  echo
  echo "| p50 | p99 | max |"
  echo "| --- | --- | --- |"
  echo "| ${p50} ms | ${p99} ms | ${max} ms |"
} >> bench/results.md
tail -n 12 bench/results.md

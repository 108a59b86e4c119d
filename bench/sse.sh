#!/usr/bin/env bash
# Benchmark: many live clients while a big run streams its logs, on a real `kiln serve`
# (SQLite). CLIENTS (default 1,000) clients hold `GET /api/v1/events` open on the project
# (run, job and log.line events) while one run of JOBS (default 500) jobs, each printing five
# time-stamped lines over a second, runs on 16 local workers. For every line that reaches
# every client: when the client read it minus when the job printed it. Reports the lag's
# p50/p99/max, how many clients ever fell more than a second behind or were dropped, and the
# server's peak RSS. Appends to bench/results.md.
#
# usage: bench/sse.sh [CLIENTS] [JOBS]      (builds kiln and the load generator in release mode)
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-1000}
jobs=${2:-500}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kiln-target}"
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
cargo build --release -q -p kiln-cli -p kiln-testkit --bins
kiln="$CARGO_TARGET_DIR/release/kiln"
load="$CARGO_TARGET_DIR/release/sse-load"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/big/.kiln/workflows"
{
  echo "name: big"
  echo "on: workflow_dispatch"
  echo "defaults:"
  echo "  run:"
  echo "    shell: sh"
  echo "jobs:"
  for i in $(seq "$jobs"); do
    echo "  j$i:"
    echo "    runs-on: local"
    echo "    steps:"
    echo "      - run: for i in 1 2 3 4 5; do echo \"tick \$(date +%s%N)\"; sleep 0.2; done"
  done
} > "$work/big/.kiln/workflows/big.yml"

"$kiln" serve --listen 127.0.0.1:0 --data-dir "$work/data" --workers 16 \
  --egress-allow-local-paths >"$work/serve.out" 2>"$work/serve.err" &
server_pid=$!
for _ in $(seq 100); do grep -q '^listening on ' "$work/serve.out" && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$work/serve.out")
token=$(sed -n 's/^admin token: //p' "$work/serve.out")
[ -n "$url" ] && [ -n "$token" ] || { cat "$work/serve.err"; exit 1; }
curl -sf -o /dev/null -X POST -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d "{\"source\":\"$work/big\",\"name\":\"big\"}" "$url/api/v1/projects"

rss_before=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")
start=$(date +%s.%N)
report=$("$load" "$url" "$token" "$clients" \
  "/api/v1/events?project=big&types=run.*,job.*,log.line" "/api/v1/projects/big/runs")
took=$(echo "$(date +%s.%N) - $start" | bc)
peak=$(awk '/VmHWM/ {print $2}' "/proc/$server_pid/status")
echo "$report"

field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2]))" "$report" "$1"; }
{
  echo
  echo "## Live clients while a big run streams logs (\`kiln serve\`, SQLite, 16 workers)"
  echo
  echo "Written by \`bench/sse.sh\` on $(date -u +%Y-%m-%d) — $(nproc) cores, the load generator on the same machine."
  echo "$clients clients on \`GET /api/v1/events\` (run, job and log events of the project) while one run"
  echo "of $jobs jobs prints five time-stamped lines per job; lag = when a client read a line − when the"
  echo "job printed it, over all $(field "d['lines']") deliveries. The run took $(printf %.1f "$took") s."
  echo
  echo "| clients | finished | dropped | behind > 1 s | lag p50 | lag p99 | lag max | server RSS before → peak |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
  echo "| $clients | $(field "d['finished']") | $(field "d['dropped']") | $(field "d['clients_over_1s']") | $(field "d['lag_ms']['p50']") ms | $(field "d['lag_ms']['p99']") ms | $(field "d['lag_ms']['max']") ms | $((rss_before / 1024)) MiB → $((peak / 1024)) MiB |"
} >> bench/results.md
tail -n 10 bench/results.md

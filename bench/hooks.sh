#!/usr/bin/env bash
# Benchmark: signed GitHub `push` deliveries into runs, kiln against adnanh/webhook (Debian
# `webhook`), as BENCH.md sets it up: the same 8 KB push payload (from the webhook corpus),
# HMAC-SHA256 signed, 2 client connections (`wrk -t2 -c2`) for SECONDS each.
# - webhook: a `payload-hmac-sha256` trigger rule and `/bin/true` as its command; throughput
#   is its answered requests per second.
# - kiln: a folder project whose workflow runs one `true` job on push; throughput is
#   deliveries per second from the first request until the last delivery's run is queued
#   (recorded durably), and the acknowledgement latency is wrk's. Twice: with no local
#   workers (`--workers 0`: the runs wait for remote workers, so this is the intake alone),
#   and with 2 local workers running the runs' jobs on the same 2 cores meanwhile.
# The two run one after the other in this script; results are appended to bench/results.md.
#
# usage: bench/hooks.sh [SECONDS]     (builds kiln in release mode; installs webhook, wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kiln-target}"
for pkg in webhook wrk curl sqlite3; do
  command -v "$pkg" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$pkg"; }
done
cargo build --release -q -p kiln-cli
kiln="$CARGO_TARGET_DIR/release/kiln"
payload="../shared/corpus/webhooks/github/push.go-playground.payload.json"
[ -f "$payload" ] || { echo "the webhook corpus is not at $payload" >&2; exit 1; }
secret="bench-secret-0123456789abcdef"
signature="sha256=$(openssl dgst -sha256 -hmac "$secret" -r "$payload" | cut -d' ' -f1)"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}" $(cat "$work/kiln.pids" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The wrk script: POST the payload with a fresh delivery id each time.
cat > "$work/post.lua" <<LUA
local counter = 0
local id = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "push"
wrk.headers["X-Hub-Signature-256"] = "$signature"
local f = io.open("$PWD/$payload", "rb")
wrk.body = f:read("*a")
f:close()
function setup(thread)
  id = id + 1
  thread:set("tid", id)
end
function request()
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] = string.format("bench-%d-%d", tid, counter)
  return wrk.format()
end
LUA

requests() { # "12345 requests in 10.00s" → 12345
  awk '/requests in/ { print $1 }' "$1"
}

percentile() { # wrk --latency line "99%" → milliseconds
  awk -v p="$1" '$1 == p { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); v = v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v = v * 1000 }
    printf "%.2f", v }' "$2"
}

# --- webhook ---
cat > "$work/hooks.json" <<JSON
[{"id": "push", "execute-command": "/bin/true",
  "trigger-rule": {"match": {"type": "payload-hmac-sha256", "secret": "$secret",
    "parameter": {"source": "header", "name": "X-Hub-Signature-256"}}}}]
JSON
webhook -hooks "$work/hooks.json" -ip 127.0.0.1 -port 9876 >"$work/webhook.log" 2>&1 &
pids+=($!)
sleep 1
start=$(date +%s.%N)
wrk -t2 -c2 -d"${seconds}s" --latency -s "$work/post.lua" http://127.0.0.1:9876/hooks/push >"$work/wrk-webhook.txt"
end=$(date +%s.%N)
wh_total=$(requests "$work/wrk-webhook.txt")
wh_rate=$(echo "$wh_total / ($end - $start)" | bc -l)
wh_p50=$(percentile 50% "$work/wrk-webhook.txt")
wh_p99=$(percentile 99% "$work/wrk-webhook.txt")
kill "${pids[0]}"

# --- kiln ---
mkdir -p "$work/app/.kiln/workflows"
cat > "$work/app/.kiln/workflows/push.yml" <<'YAML'
on: push
defaults:
  run:
    shell: sh
jobs:
  ok:
    runs-on: local
    steps:
      - run: "true"
YAML
# kiln_round WORKERS: one round against a fresh server; prints
# "deliveries ack_rate run_rate runs p50 p99 peak_rss_mb non2xx".
kiln_round() {
  local data="$work/data-$1" start acked end total runs spid hook url token rss
  "$kiln" serve --listen 127.0.0.1:0 --data-dir "$data" --workers "$1" \
    --egress-allow-local-paths >"$work/serve-$1.out" 2>"$work/serve-$1.err" &
  spid=$!
  echo "$spid" >>"$work/kiln.pids" # the round runs in a subshell: cleanup finds it here
  for _ in $(seq 100); do grep -q '^listening on ' "$work/serve-$1.out" && break; sleep 0.1; done
  url=$(sed -n 's/^listening on //p' "$work/serve-$1.out")
  token=$(sed -n 's/^admin token: //p' "$work/serve-$1.out")
  hook=$(curl -sf -X POST -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d "{\"source\":\"$work/app\",\"name\":\"app\",\"provider\":\"github\",\"secret\":\"$secret\"}" \
    "$url/api/v1/projects" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["hook_url"])')
  start=$(date +%s.%N)
  wrk -t2 -c2 -d"${seconds}s" --latency -s "$work/post.lua" "$hook" >"$work/wrk-kiln-$1.txt"
  acked=$(date +%s.%N)
  total=$(requests "$work/wrk-kiln-$1.txt")
  # Until every delivery's run is queued (created durably).
  for _ in $(seq 6000); do
    runs=$(sqlite3 "$data/kiln.db" "SELECT count(*) FROM runs")
    [ "$runs" -ge "$total" ] && break
    sleep 0.05
  done
  end=$(date +%s.%N)
  runs=$(sqlite3 "$data/kiln.db" "SELECT count(*) FROM runs")
  rss=$(awk '/^VmHWM/ { print int($2 / 1024) }' "/proc/$spid/status")
  kill "$spid"
  wait "$spid" 2>/dev/null || true
  echo "$total $(echo "$total / ($acked - $start)" | bc -l) $(echo "$runs / ($end - $start)" | bc -l)" \
    "$runs $(percentile 50% "$work/wrk-kiln-$1.txt") $(percentile 99% "$work/wrk-kiln-$1.txt") $rss" \
    "$(grep -o 'Non-2xx or 3xx responses: [0-9]*' "$work/wrk-kiln-$1.txt" | grep -o '[0-9]*$' || echo 0)"
}
read -r i_total i_ack i_rate i_runs i_p50 i_p99 i_rss i_bad < <(kiln_round 0)
read -r w_total w_ack w_rate w_runs w_p50 w_p99 w_rss w_bad < <(kiln_round 2)

ratio=$(echo "$i_rate / $wh_rate" | bc -l)
wratio=$(echo "$w_rate / $wh_rate" | bc -l)
{
  echo
  echo "## Webhook deliveries into runs (\`kiln serve\`, SQLite) vs adnanh/webhook"
  echo
  echo "Written by \`bench/hooks.sh\` on $(date -u +%Y-%m-%d) — $(nproc) cores. Signed GitHub \`push\` deliveries (8 KB),"
  echo "\`wrk -t2 -c2 -d${seconds}s\` each, one tool at a time: $wh_total to webhook; $i_total to kiln with no local workers (the runs"
  echo "wait, queued, for remote workers: kiln's intake alone), $w_total to kiln with 2 local workers running each run's job meanwhile."
  echo "kiln's throughput counts until the last delivery's run is queued; webhook's until its last answer (its command runs after)."
  echo
  echo "| | deliveries/s | ack p50 | ack p99 | server peak RSS |"
  echo "| --- | --- | --- | --- | --- |"
  printf '| adnanh/webhook 2.8 (`/bin/true`) | %.0f | %s ms | %s ms | |\n' "$wh_rate" "$wh_p50" "$wh_p99"
  printf '| kiln `--workers 0`: acknowledged (202, delivery recorded) | %.0f | %s ms | %s ms | %s MiB |\n' "$i_ack" "$i_p50" "$i_p99" "$i_rss"
  printf '| kiln `--workers 0`: into queued runs (%s runs) | %.0f | | | |\n' "$i_runs" "$i_rate"
  printf '| kiln `--workers 2`: acknowledged | %.0f | %s ms | %s ms | %s MiB |\n' "$w_ack" "$w_p50" "$w_p99" "$w_rss"
  printf '| kiln `--workers 2`: into queued runs (%s runs), jobs running meanwhile | %.0f | | | |\n' "$w_runs" "$w_rate"
  echo
  printf 'Ratio (kiln into queued runs ÷ webhook): **%.2f×** with no local workers, %.2f× with 2 running the jobs (target ≥3×).' "$ratio" "$wratio"
  [ "$i_bad$w_bad" = "00" ] || printf ' Non-2xx answers from kiln: %s and %s.' "$i_bad" "$w_bad"
  echo
} >> bench/results.md
tail -n 14 bench/results.md

#!/usr/bin/env bash
# Benchmark: a run of JOBS independent no-op jobs end to end through a server (SQLite), once on
# its local pool (`kiln serve --workers SLOTS`) and once on two remote workers over HTTP
# (`kiln serve --workers 0` + two `kiln worker --slots SLOTS/2`), one after the other; and
# through two replicas on PostgreSQL (127.0.0.1:5432, database `test`, a schema per round)
# with two workers that each list both replicas. The figure is jobs per second from the
# trigger until the run ends, as the store recorded it (run created_at → finished_at); best of
# three each. Results go to bench/results.md.
#
# usage: bench/workers.sh [JOBS] [SLOTS]      (builds kiln in release mode)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-500}
slots=${2:-2}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kiln-target}"
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
cargo build --release -q -p kiln-cli
kiln="$CARGO_TARGET_DIR/release/kiln"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The project: JOBS jobs that need nothing and do nothing.
mkdir -p "$work/project/.kiln/workflows"
{
  echo "name: wide"
  echo "on: workflow_dispatch"
  echo "defaults: {run: {shell: sh}}"
  echo "jobs:"
  for i in $(seq 1 "$jobs"); do
    printf '  j%s:\n    runs-on: linux\n    steps: [{run: "true"}]\n' "$i"
  done
} > "$work/project/.kiln/workflows/wide.yml"

# One measured run: start a server (and workers), trigger, wait, read the run's times.
# $1: local slots for the server; $2: workers to start (each with $3 slots).
measure() {
  local data="$work/data-$RANDOM"
  "$kiln" serve --listen 127.0.0.1:0 --data-dir "$data" --workers "$1" \
    --egress-allow-local-paths >"$data.out" 2>"$data.err" &
  local server=$!
  pids+=("$server")
  for _ in $(seq 200); do grep -q '^listening on ' "$data.out" 2>/dev/null && break; sleep 0.05; done
  local url token wtoken
  url=$(sed -n 's/^listening on //p' "$data.out")
  token=$(sed -n 's/^admin token: //p' "$data.out")
  export KILN_SERVER="$url" KILN_TOKEN="$token"
  "$kiln" project add "$work/project" --name wide >/dev/null
  local workers=()
  if [ "$2" -gt 0 ]; then
    wtoken=$("$kiln" token create --name bench --role worker)
    for w in $(seq 1 "$2"); do
      KILN_TOKEN="$wtoken" "$kiln" worker --labels linux --slots "$3" --name "w$w" \
        --work-dir "$data/worker-$w" >/dev/null 2>"$data.w$w.err" &
      workers+=($!)
      pids+=($!)
    done
    sleep 1
  fi
  local run
  run=$("$kiln" trigger wide --workflow wide --format json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["id"])')
  local status=""
  for _ in $(seq 6000); do
    status=$(curl -s -H "Authorization: Bearer $token" "$url/api/v1/runs/$run" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["status"])')
    case "$status" in success|failure|cancelled) break ;; esac
    sleep 0.1
  done
  curl -s -H "Authorization: Bearer $token" "$url/api/v1/runs/$run" >"$data.run.json"
  for p in "${workers[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  kill -TERM "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  for p in "${workers[@]}"; do wait "$p" 2>/dev/null || true; done
  [ "$status" = success ] || { echo "run ended $status" >&2; cat "$data.err" >&2; exit 1; }
  python3 - "$data.run.json" "$jobs" <<'PY'
import json, sys
from datetime import datetime
run = json.load(open(sys.argv[1]))["data"]
ts = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
seconds = ts(run["finished_at"]) - ts(run["created_at"])
print(f"{int(sys.argv[2]) / seconds:.1f} {seconds:.2f}")
PY
}

# Two replicas on one PostgreSQL schema, two workers listing both; the run triggered on the
# first. $1: slots per worker.
measure_replicas() {
  local schema="bench_$RANDOM$RANDOM"
  psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE SCHEMA $schema" >/dev/null
  local db="postgres://postgres@127.0.0.1:5432/test?schema=$schema"
  local token="kiln_bench_replicas_admin_token_0123456789"
  export KILN__SECRETS__KEY=0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0
  local urls=() servers=()
  for r in a b; do
    local data="$work/replica-$schema-$r"
    KILN_ADMIN_TOKEN="$token" "$kiln" serve --listen 127.0.0.1:0 --data-dir "$data" \
      --database "$db" --workers 0 --egress-allow-local-paths >"$data.out" 2>"$data.err" &
    servers+=($!)
    pids+=($!)
    for _ in $(seq 200); do grep -q '^listening on ' "$data.out" 2>/dev/null && break; sleep 0.05; done
    urls+=("$(sed -n 's/^listening on //p' "$data.out")")
  done
  export KILN_SERVER="${urls[0]}" KILN_TOKEN="$token"
  "$kiln" project add "$work/project" --name wide >/dev/null
  local wtoken workers=()
  wtoken=$("$kiln" token create --name bench --role worker)
  for w in 1 2; do
    KILN_TOKEN="$wtoken" "$kiln" worker --server "${urls[0]},${urls[1]}" --labels linux \
      --slots "$1" --name "w$w" --work-dir "$work/rw-$schema-$w" >/dev/null 2>"$work/rw-$schema-$w.err" &
    workers+=($!)
    pids+=($!)
  done
  sleep 1
  local run status=""
  run=$("$kiln" trigger wide --workflow wide --format json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["id"])')
  for _ in $(seq 6000); do
    status=$(curl -s -H "Authorization: Bearer $token" "${urls[1]}/api/v1/runs/$run" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["status"])')
    case "$status" in success|failure|cancelled) break ;; esac
    sleep 0.1
  done
  curl -s -H "Authorization: Bearer $token" "${urls[1]}/api/v1/runs/$run" >"$work/$schema.run.json"
  for p in "${workers[@]}" "${servers[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${workers[@]}" "${servers[@]}"; do wait "$p" 2>/dev/null || true; done
  psql -q -h 127.0.0.1 -U postgres -d test -c "DROP SCHEMA $schema CASCADE" >/dev/null
  [ "$status" = success ] || { echo "run ended $status" >&2; exit 1; }
  python3 - "$work/$schema.run.json" "$jobs" <<'PY'
import json, sys
from datetime import datetime
run = json.load(open(sys.argv[1]))["data"]
ts = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
seconds = ts(run["finished_at"]) - ts(run["created_at"])
print(f"{int(sys.argv[2]) / seconds:.1f} {seconds:.2f}")
PY
}

best() { sort -n -r | head -1; }
local_runs=()
remote_runs=()
replica_runs=()
for round in 1 2 3; do
  local_runs+=("$(measure "$slots" 0 0)")
  remote_runs+=("$(measure 0 2 $(( (slots + 1) / 2 )))")
  replica_runs+=("$(measure_replicas $(( (slots + 1) / 2 )))")
  echo "round $round: local ${local_runs[-1]}, workers ${remote_runs[-1]}, replicas ${replica_runs[-1]}" >&2
done
local_best=$(printf '%s\n' "${local_runs[@]}" | best)
remote_best=$(printf '%s\n' "${remote_runs[@]}" | best)
replica_best=$(printf '%s\n' "${replica_runs[@]}" | best)

python3 - "$jobs" "$slots" "$local_best" "$remote_best" "$replica_best" <<'PY'
import re, subprocess, sys, datetime, pathlib
jobs, slots, local, remote = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
replicas = sys.argv[5].split()
cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
ratio = float(remote[0]) / float(local[0])
section = f"""## Jobs through remote workers vs the local pool (`kiln serve`, SQLite)

Written by `bench/workers.sh` on {datetime.date.today()} — {cores} cores, server and workers on
the same machine. One run of {jobs} independent no-op jobs (`sh -c true`), from the trigger
until the run ended as the store recorded it; best of three, alternately. Local: `kiln serve
--workers {slots}`. Workers: `kiln serve --workers 0` and two `kiln worker` processes sharing
{slots} slots, each job claimed over HTTP, its project fetched as a tar, its log and result
reported under its lease.

| | jobs/s | run took |
| --- | --- | --- |
| local pool, {slots} slots | {local[0]} | {local[1]} s |
| 2 remote workers over HTTP, {slots} slots in all | {remote[0]} | {remote[1]} s |
| 2 replicas on PostgreSQL, 2 workers listing both, {slots} slots in all | {replicas[0]} | {replicas[1]} s |

Ratio (workers ÷ local pool): **{ratio:.2f}×**; through two replicas on PostgreSQL ÷ local
pool: **{float(replicas[0]) / float(local[0]):.2f}×**. (The run is driven by the replica it
was triggered on; a worker's claim through either replica takes a job from the shared
PostgreSQL queue, and one through the other replica is a hand-off: the worker asks the
driving replica for the job's details and reports to it.)
"""
path = pathlib.Path("bench/results.md")
text = path.read_text()
pattern = re.compile(r"## Jobs through remote workers.*?(?=\n## |\Z)", re.S)
text = pattern.sub(section.rstrip("\n") + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
path.write_text(text)
PY
echo "local ${local_best}; workers ${remote_best}; replicas ${replica_best}"

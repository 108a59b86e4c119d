#!/usr/bin/env bash
# Benchmark: jobs claimed and completed per second through kiln's PostgreSQL queue, at the
# store level, against pgbench doing the bare claim and update on the same server
# (BENCH.md). Both use 4 concurrent clients for SECONDS, alternately, best of three:
# - pgbench: a table `q (id bigserial, status int, payload text)` with a partial index on
#   the unclaimed rows; per job `UPDATE q SET status = 1 WHERE id = (SELECT … ORDER BY id
#   LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id` then `UPDATE q SET status = 2`.
# - kiln: `crates/kiln-store/examples/queue_bench.rs`: per job `Store::claim_jobs` (labels
#   matched, lease with fencing token, `job.leased` in the outbox) then `Op::CompleteJob`
#   with the token (`job.completed` in the outbox).
# Each round gets a fresh database `kiln_queue_bench`, filled and analysed before the clock
# starts. Results are appended to bench/results.md.
#
# usage: bench/queue.sh [SECONDS] [DATABASE_BASE_URL]
#   (PostgreSQL on 127.0.0.1:5432 as `postgres` by default; builds the example in release)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
base=${2:-postgres://postgres@127.0.0.1:5432}
db=kiln_queue_bench
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kiln-target}"
command -v pgbench >/dev/null || { apt-get update -qq && apt-get install -y -qq postgresql-client; }
cargo build --release -q -p kiln-store --example queue_bench
kiln="$CARGO_TARGET_DIR/release/examples/queue_bench"
work=$(mktemp -d)
trap 'rm -rf "$work"; psql -q "$base/postgres" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true' EXIT

fresh() {
  psql -q "$base/postgres" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
}

cat > "$work/claim.sql" <<'SQL'
UPDATE q SET status = 1 WHERE id = (SELECT id FROM q WHERE status = 0 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id \gset
UPDATE q SET status = 2 WHERE id = :id;
SQL

peer_best=0
kiln_best=0
for round in 1 2 3; do
  fresh
  psql -q "$base/$db" -c "CREATE TABLE q (id bigserial PRIMARY KEY, status int NOT NULL, payload text)" \
    -c "INSERT INTO q (status, payload) SELECT 0, 'x' FROM generate_series(1, 200000)" \
    -c "CREATE INDEX ON q (id) WHERE status = 0" -c "ANALYZE q" >/dev/null
  peer=$(pgbench -n -c 4 -j 2 -T "$seconds" -f "$work/claim.sql" "$base/$db" 2>/dev/null |
    awk '/^tps/ { printf "%d", $3 }')
  fresh
  kiln_rate=$("$kiln" --database "$base/$db" --jobs 60000 --claimers 4 --seconds "$seconds" |
    sed -E 's/.*"per_second":([0-9.]+).*/\1/' | cut -d. -f1)
  echo "round $round: pgbench $peer jobs/s, kiln $kiln_rate jobs/s" >&2
  [ "$peer" -gt "$peer_best" ] && peer_best=$peer
  [ "$kiln_rate" -gt "$kiln_best" ] && kiln_best=$kiln_rate
done
ratio=$(awk -v k="$kiln_best" -v p="$peer_best" 'BEGIN { printf "%.2f", k / p }')
pg_version=$(psql -At "$base/postgres" -c "SHOW server_version" | cut -d' ' -f1)

python3 - "$seconds" "$peer_best" "$kiln_best" "$ratio" "$pg_version" <<'PY'
import re, subprocess, sys, datetime, pathlib
seconds, peer, kiln, ratio, pg = sys.argv[1:]
cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
section = f"""## Job queue on PostgreSQL: claim + complete (store level) vs pgbench

Written by `bench/queue.sh` on {datetime.date.today()} — {cores} cores, PostgreSQL {pg} on the same
machine. 4 concurrent clients for {seconds} s each, best of three rounds, kiln and pgbench
alternately, each on a fresh database filled and analysed first. pgbench runs the bare claim
(`UPDATE … WHERE id = (SELECT … LIMIT 1 FOR UPDATE SKIP LOCKED)`) and update per job; kiln
runs `Store::claim_jobs` (labels, lease and fencing token, `job.leased` in the outbox) and
`Op::CompleteJob` with the token (`job.completed` in the outbox), two commits per job.

| | jobs/s |
| --- | --- |
| pgbench, bare `FOR UPDATE SKIP LOCKED` claim + update | {peer} |
| kiln-store `claim_jobs` + `CompleteJob` (leases, outbox) | {kiln} |

Ratio (kiln ÷ pgbench): **{ratio}×** (target ≥0.5×).
"""
path = pathlib.Path("bench/results.md")
text = path.read_text() if path.exists() else "# Benchmark results\n"
pattern = re.compile(r"## Job queue on PostgreSQL.*?(?=\n## |\Z)", re.S)
text = pattern.sub(section.rstrip("\n") + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
path.write_text(text)
PY
echo "kiln $kiln_best jobs/s, pgbench $peer_best jobs/s: ratio ${ratio}×"

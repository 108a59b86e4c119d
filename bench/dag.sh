#!/usr/bin/env bash
# Benchmark: a layered 2,000-job no-op workflow (40 layers x 50 jobs, each needing 1-3 jobs of
# the layer before) run by `kiln run --jobs 2` against the same graph as build.ninja run by
# `ninja -j2`. Best of three each, alternating, in one script; every kiln transition is
# recorded in SQLite. Writes bench/results.md.
#
# usage: bench/dag.sh            (builds kiln in release mode first)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
command -v ninja >/dev/null || { apt-get update -qq && apt-get install -y -qq ninja-build; }
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kiln-target}"
cargo build --release -q -p kiln-cli
kiln="$CARGO_TARGET_DIR/release/kiln"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 bench/gen_dag.py "$work/sh" 40 50 sh "$work/ninja"
python3 bench/gen_dag.py "$work/bash" 40 50 default "$work/ninja-unused"
python3 bench/gen_dag.py "$work/big" 400 50 sh "$work/ninja-unused"

now() { date +%s.%N; }
best() { sort -n | head -n1; }

runs=0
time_kiln() { # dir
  # A fresh data folder per run, removed only at the end: deleting thousands of files just
  # before a timed run makes ext4 slow at creating new ones (for kiln and ninja alike).
  runs=$((runs + 1))
  local t0 t1
  t0=$(now)
  "$kiln" run "$1" --jobs 2 --data-dir "$work/data-$runs" >/dev/null 2>&1
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}
time_ninja() {
  rm -f "$work/ninja/.ninja_log" "$work/ninja/.ninja_deps"
  local t0 t1
  t0=$(now)
  ninja -C "$work/ninja" -j2 >/dev/null
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}

command -v bc >/dev/null || { apt-get update -qq && apt-get install -y -qq bc; }
k=(); n=(); b=()
for _ in 1 2 3; do
  k+=("$(time_kiln "$work/sh")")
  n+=("$(time_ninja)")
  b+=("$(time_kiln "$work/bash")")
done
kb=$(printf '%s\n' "${k[@]}" | best)
nb=$(printf '%s\n' "${n[@]}" | best)
bb=$(printf '%s\n' "${b[@]}" | best)
ratio=$(echo "$kb / $nb" | bc -l)
bratio=$(echo "$bb / $nb" | bc -l)

/usr/bin/time -v -o "$work/time-big.txt" "$kiln" run "$work/big" --jobs 2 --data-dir "$work/data-big" >/dev/null 2>&1
rss=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$work/time-big.txt")
big_secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/time-big.txt")
big_jobs=$(grep -c 'runs-on' "$work/big/.kiln/workflows/dag.yml")

{
  echo "# Benchmark results"
  echo
  echo "Written by \`bench/dag.sh\` on $(date -u +%Y-%m-%d) — $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB."
  echo
  echo "## 2,000-job layered no-op DAG (40 layers × 50, 1–3 needs each)"
  echo
  echo "| runner | best of 3 | ratio to ninja |"
  echo "| --- | --- | --- |"
  printf '| `ninja -j2` (`/bin/sh -c true`) | %.3f s | 1.00× |\n' "$nb"
  printf '| `kiln run --jobs 2`, `defaults.run.shell: sh` | %.3f s | **%.2f×** |\n' "$kb" "$ratio"
  printf '| `kiln run --jobs 2`, default shell (`bash -e`) | %.3f s | %.2f× |\n' "$bb" "$bratio"
  echo
  echo "All runs: kiln sh: ${k[*]}; ninja: ${n[*]}; kiln bash: ${b[*]} (seconds)."
  echo "ninja runs \`/bin/sh -c true\` per edge; kiln runs one \`run: \"true\"\` step per job in a fresh copy of the project, under a lease."
  echo "Every kiln transition (queued, leased, running, step results, logs, completion, events) is committed to SQLite."
  echo
  echo "## Memory"
  echo
  echo "Peak RSS of \`kiln run --jobs 2\` on a ${big_jobs}-job workflow (400 layers × 50): $((rss / 1024)) MiB (wall clock ${big_secs})."
  echo
  echo "Target: ≤1.3× ninja (DESIGN/BENCH.md)."
} > bench/results.md
cat bench/results.md

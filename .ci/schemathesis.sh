#!/usr/bin/env bash
# schemathesis against a real `kiln serve` (SQLite, a throwaway data dir): every operation of
# /api/v1/openapi.json with bounded, deterministic examples, as the admin. The checks are the
# issue's: no 5xx, and every answer (status, content type, body) matches the document. The
# server's egress is limited to loopback: a generated git URL never leaves the machine. The
# live streams (events, WebSocket, log stream) are left out: an answer that never ends is
# their point, and their own tests (crates/kiln-server/tests/it/live.rs) cover them.
#
# usage: .ci/schemathesis.sh KILN_BINARY
set -euo pipefail
kiln=$1
# `st` from Python's own scripts folder: a fresh pyenv has no shim for it until a rehash.
python3 -c 'import schemathesis' 2>/dev/null || python3 -m pip install -q schemathesis
st="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/st"
work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
"$kiln" serve --listen 127.0.0.1:0 --data-dir "$work/data" --workers 1 \
  --egress-allow 127.0.0.1/32 >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 100); do grep -q '^listening on ' "$work/out" && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$work/out")
token=$(sed -n 's/^admin token: //p' "$work/out")
if [ -z "$url" ] || [ -z "$token" ]; then
  cat "$work/err"
  exit 1
fi
# st writes its reports into the working folder: keep them out of the checkout.
cd "$work"
"$st" run "$url/api/v1/openapi.json" \
  -H "Authorization: Bearer $token" \
  --max-examples 30 --generation-deterministic --continue-on-failure \
  --exclude-path-regex '^/api/v1/(events|ws|logs/\{job\}/stream)$' \
  -c not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance

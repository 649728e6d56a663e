#!/usr/bin/env bash
# make test-api: schemathesis against a running `gancho api` on a nats-server of its own,
# authenticated with the admin token. Fails on any 5xx, or any answer (status, content type,
# body) outside /openapi.json. Everything binds 127.0.0.1 and is stopped on exit.
set -euo pipefail

GANCHO=${GANCHO:-target/debug/gancho}
NATS_SERVER=${GANCHO_NATS_SERVER:-.tools/bin/nats-server}
SCHEMATHESIS=${SCHEMATHESIS:-.tools/venv/bin/schemathesis}
TOKEN=test-api-admin-token-0123456789
MAX_EXAMPLES=${MAX_EXAMPLES:-40}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

nats_port=$(free_port)
"$NATS_SERVER" -a 127.0.0.1 -p "$nats_port" -js -sd "$dir/js" >"$dir/nats.log" 2>&1 &
pids+=($!)
api_port=$(free_port)
GANCHO_ENCRYPTION_KEY=$("$GANCHO" keygen) GANCHO_NATS_URL="nats://127.0.0.1:$nats_port" GANCHO_ADMIN_TOKEN=$TOKEN \
    GANCHO_API_LISTEN="127.0.0.1:$api_port" GANCHO_METRICS_LISTEN=127.0.0.1:0 \
    RUST_LOG=warn "$GANCHO" api >"$dir/api.log" 2>&1 &
pids+=($!)
base="http://127.0.0.1:$api_port"

# Wait for the API, then seed something to find: tenants with an endpoint each, so lookups by
# id reach the handlers.
BASE=$base TOKEN=$TOKEN python3 - <<'PY' || { echo "--- gancho api log"; cat "$dir/api.log"; exit 1; }
import json, os, time, urllib.request
base, token = os.environ["BASE"], os.environ["TOKEN"]
deadline = time.time() + 20
while True:
    try:
        urllib.request.urlopen(base + "/readyz", timeout=1)
        break
    except OSError:
        if time.time() > deadline:
            raise SystemExit("gancho api did not become ready in 20 s")
        time.sleep(0.2)
def post(path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": "Bearer " + token, "content-type": "application/json"})
    urllib.request.urlopen(req, timeout=5)
for t in ("acme", "doomed"):
    post("/v1/tenants", {"id": t})
    post(f"/v1/tenants/{t}/endpoints", {"id": "ep1", "url": "https://hooks.example.com/x"})
PY

status=0
"$SCHEMATHESIS" --config-file tests/api/schemathesis.toml run "$base/openapi.json" \
    --header "Authorization: Bearer $TOKEN" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
    --phases examples,coverage,fuzzing \
    --max-examples "$MAX_EXAMPLES" \
    --workers 1 \
    --seed 1 \
    --no-color || status=$?
if [ "$status" -ne 0 ]; then
    echo "--- gancho api log"; tail -n 50 "$dir/api.log"
fi
exit "$status"

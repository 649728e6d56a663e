#!/usr/bin/env bash
# make test-deploy: the dashboard and the alert rules against a real Prometheus scraping the
# roles as separate processes under load. Every PromQL expression of the dashboard and of the
# rules must evaluate without error; the throughput, latency, lag and per-role panels must
# return data; and with an endpoint made to fail, Prometheus must show the dead-letter alert
# firing (the test's copy of the rules has short `for:` durations). Everything binds
# 127.0.0.1 and is stopped on exit; bounded to a few minutes.
set -euo pipefail

GANCHO=${GANCHO:-target/debug/gancho}
NATS_SERVER=${GANCHO_NATS_SERVER:-.tools/bin/nats-server}
PROMETHEUS=${PROMETHEUS:-prometheus}
TOKEN=test-deploy-admin-token-0123456789

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
fail() {
    echo "test-deploy: $*" >&2
    for f in "$dir"/*.log; do echo "--- $f" >&2; tail -20 "$f" >&2; done
    exit 1
}

nats_port=$(free_port)
"$NATS_SERVER" -a 127.0.0.1 -p "$nats_port" -js -sd "$dir/js" >"$dir/nats.log" 2>&1 &
pids+=($!)
export GANCHO_NATS_URL="nats://127.0.0.1:$nats_port"
GANCHO_ENCRYPTION_KEY=$("$GANCHO" keygen)
export GANCHO_ENCRYPTION_KEY GANCHO_ADMIN_TOKEN=$TOKEN RUST_LOG=warn
export GANCHO_ALLOW_HTTP_ENDPOINTS=true GANCHO_ALLOW_PRIVATE_ENDPOINTS=true
# acme gets series of its own; every other tenant counts as `other`.
export GANCHO_METRICS_TENANTS=acme

api_port=$(free_port); sink_port=$(free_port)
m_api=$(free_port); m_router=$(free_port); m_worker=$(free_port); prom_port=$(free_port)
sleep 0.5
GANCHO_API_LISTEN=127.0.0.1:$api_port GANCHO_METRICS_LISTEN=127.0.0.1:$m_api \
    "$GANCHO" api >"$dir/api.log" 2>&1 &
pids+=($!)
GANCHO_METRICS_LISTEN=127.0.0.1:$m_router "$GANCHO" router >"$dir/router.log" 2>&1 &
pids+=($!)
GANCHO_METRICS_LISTEN=127.0.0.1:$m_worker "$GANCHO" worker >"$dir/worker.log" 2>&1 &
pids+=($!)
"$GANCHO" sink --listen "127.0.0.1:$sink_port" >"$dir/sink.log" 2>&1 &
pids+=($!)

# The test's copy of the rules: every `for:` is 5 s, so an alert fires within the run.
sed -E 's/^( *)for: .*/\1for: 5s/' deploy/prometheus/alerts.yml >"$dir/alerts.yml"
cat >"$dir/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["$dir/alerts.yml"]
scrape_configs:
  - job_name: gancho-api
    static_configs: [{targets: ["127.0.0.1:$m_api"]}]
  - job_name: gancho-router
    static_configs: [{targets: ["127.0.0.1:$m_router"]}]
  - job_name: gancho-worker
    static_configs: [{targets: ["127.0.0.1:$m_worker"]}]
EOF
"$PROMETHEUS" --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/tsdb" \
    --web.listen-address="127.0.0.1:$prom_port" >"$dir/prometheus.log" 2>&1 &
pids+=($!)

SCRAPES="127.0.0.1:$m_api 127.0.0.1:$m_router 127.0.0.1:$m_worker" \
BASE="http://127.0.0.1:$api_port" PROM="http://127.0.0.1:$prom_port" SINK="http://127.0.0.1:$sink_port" \
    TOKEN=$TOKEN GANCHO="$GANCHO" python3 - <<'PY' || fail "checks failed"
import json, os, subprocess, time, urllib.parse, urllib.request

base, prom, sink, token = os.environ["BASE"], os.environ["PROM"], os.environ["SINK"], os.environ["TOKEN"]

def wait(what, check, patience):
    deadline = time.time() + patience
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if time.time() > deadline:
            raise SystemExit(f"timed out after {patience} s waiting for {what}")
        time.sleep(0.5)

def api(method, path, body=None):
    req = urllib.request.Request(base + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=10))

def query(expr):
    url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        return json.load(urllib.request.urlopen(url, timeout=10))
    except urllib.error.HTTPError as e:
        return json.load(e)

wait("the API", lambda: urllib.request.urlopen(base + "/readyz", timeout=1).status == 200, 30)
wait("Prometheus", lambda: urllib.request.urlopen(prom + "/-/ready", timeout=1).status == 200, 30)
api("POST", "/v1/tenants", {"id": "acme"})
api("POST", "/v1/tenants/acme/endpoints", {"id": "good", "url": sink + "/hook", "filter_types": ["charge.*"]})
# Nothing listens on port 9 of 127.0.0.1: every attempt is a connection error, and after the
# single attempt the delivery is dead-lettered (before the circuit opens and defers the rest).
api("POST", "/v1/tenants/acme/endpoints",
    {"id": "dead", "url": "http://127.0.0.1:9/hook", "filter_types": ["refund.*"], "retry_schedule": "0s"})
pub = api("POST", "/v1/tenants/acme/api-keys", {"name": "load", "scopes": ["publish"]})["key"]

# Load for 20 s: charges for the good endpoint, a few refunds for the dead one.
start = time.time()
n = 0
while time.time() - start < 20:
    events = [{"type": "charge.paid", "data": {"amount": i}} for i in range(50)]
    if n % 10 == 0:
        events.append({"type": "refund.created", "data": {"amount": 1}})
    req = urllib.request.Request(base + "/v1/tenants/acme/events/batch", method="POST",
        data=json.dumps({"events": events}).encode(),
        headers={"Authorization": "Bearer " + pub, "content-type": "application/json"})
    urllib.request.urlopen(req, timeout=10)
    n += 1
    time.sleep(0.1)
time.sleep(3)

# Every expression of the dashboard and of the rules evaluates.
dash = json.load(open("deploy/grafana/gancho.json"))
panels = {p["title"]: [t["expr"] for t in p["targets"]] for p in dash["panels"]}
problems = []
for title, exprs in panels.items():
    for e in exprs:
        r = query(e)
        if r.get("status") != "success":
            problems.append(f"panel {title!r}: {e}: {r.get('error')}")
rules = json.load(urllib.request.urlopen(prom + "/api/v1/rules", timeout=10))
count = 0
for g in rules["data"]["groups"]:
    for rule in g["rules"]:
        count += 1
        if rule.get("health") != "ok":
            problems.append(f"rule {rule['name']}: {rule.get('health')} {rule.get('lastError')}")
        r = query(rule["query"])
        if r.get("status") != "success":
            problems.append(f"rule {rule['name']}: {r.get('error')}")
if count < 10:
    problems.append(f"only {count} rules loaded")
# The panels an SRE looks at first have data.
for title in ["Events in (per second)", "Deliveries out (2xx per second)",
              "End-to-end latency (event time to 2xx)", "Consumer lag (pending + ack pending)",
              "CPU by role (cores)", "Memory by role (RSS)", "Attempts by outcome",
              "JetStream publish latency p99 by role",
              "Who is waiting behind whom: each tenant's backlog and its wait at the router (p99)"]:
    if not any(query(e)["data"]["result"] for e in panels[title]):
        problems.append(f"panel {title!r} is empty")
tenants = {r["metric"]["tenant"] for r in query(panels["Deliveries by tenant (GANCHO_METRICS_TENANTS; the rest are other)"][0])["data"]["result"]}
if "acme" not in tenants:
    problems.append(f"deliveries by tenant show {sorted(tenants)}, not the listed tenant acme")
behind = query("max(gancho_config_revision - gancho_config_snapshot_revision)")["data"]["result"]
if not behind or float(behind[0]["value"][1]) > 0:
    problems.append(f"config revisions: {behind} (every role should have caught up)")
roles = {r["metric"]["job"] for r in query("gancho_process_resident_memory_bytes")["data"]["result"]}
if roles != {"gancho-api", "gancho-router", "gancho-worker"}:
    problems.append(f"memory is reported by {sorted(roles)}, not by every role")
if problems:
    raise SystemExit("\n".join(problems))

# The dead endpoint's deliveries are dead-lettered: Prometheus fires the alert.
def firing():
    alerts = json.load(urllib.request.urlopen(prom + "/api/v1/alerts", timeout=10))["data"]["alerts"]
    return any(a["labels"]["alertname"] == "GanchoDeadLettersGrowing" and a["state"] == "firing" for a in alerts)
wait("GanchoDeadLettersGrowing to fire", firing, 90)
# GANCHO_SCRAPE_OUT=<dir> keeps each role's scrape: the series in alerts_test.yml are copied
# from these.
if os.environ.get("GANCHO_SCRAPE_OUT"):
    os.makedirs(os.environ["GANCHO_SCRAPE_OUT"], exist_ok=True)
    for role, target in zip(["api", "router", "worker"], os.environ["SCRAPES"].split()):
        with open(os.path.join(os.environ["GANCHO_SCRAPE_OUT"], role + ".prom"), "wb") as f:
            f.write(urllib.request.urlopen(f"http://{target}/metrics", timeout=10).read())
alerts = json.load(urllib.request.urlopen(prom + "/api/v1/alerts", timeout=10))["data"]["alerts"]
stale = [a["labels"] for a in alerts if a["labels"]["alertname"] == "GanchoConfigStale"]
if stale:
    raise SystemExit(f"GanchoConfigStale is {stale} for healthy roles")
print(f"test-deploy: {sum(len(v) for v in panels.values())} dashboard expressions and {count} rules evaluate; "
      "the key panels have data; GanchoDeadLettersGrowing fired")
PY

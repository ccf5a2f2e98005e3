#!/usr/bin/env bash
# The dashboard in a real browser against a real rack: 4 fabriclab-agent processes (libvirt's test
# driver, simulated guests) and one fabriclab-orchestrator on loopback, 2 services, then a
# host-os drill (host-v1 -> host-v2) started once the page is connected. dashboard_test.mjs
# (Debian chromium via playwright-core) must see a host row go Updating and back to Ready, drops
# the page's websocket mid-walk and checks the resume (?since=, no gap, no duplicate), and at the
# end checks that the page agrees with the REST API and says "batch n of n".
#
#   tests/browser/run_dashboard_test.sh --agent BIN --orchestrator BIN --images DIR \
#       --screenshot OUT.png [--timeout-ms 120000] [--keep]
#
# Exit 0 on success; 1 on any failure (missing chromium or node_modules included: this test is
# never skipped into a pass); 2 on bad usage. Everything it starts is killed on exit.
# FABRICLAB_KEEP_TMP=1 (or --keep) keeps the temp dir with every process's log.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
agent_bin="" orch_bin="" images="" screenshot="" timeout_ms=120000 keep="${FABRICLAB_KEEP_TMP:-}"
chromium="${FABRICLAB_CHROMIUM:-/usr/bin/chromium}"

usage() {
  echo "usage: $0 --agent BIN --orchestrator BIN --images DIR --screenshot OUT.png [--timeout-ms N] [--keep]" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --agent) agent_bin="${2:-}"; shift 2 ;;
    --orchestrator) orch_bin="${2:-}"; shift 2 ;;
    --images) images="${2:-}"; shift 2 ;;
    --screenshot) screenshot="${2:-}"; shift 2 ;;
    --timeout-ms) timeout_ms="${2:-}"; shift 2 ;;
    --keep) keep=1; shift ;;
    *) usage ;;
  esac
done
[ -n "$agent_bin" ] && [ -n "$orch_bin" ] && [ -n "$images" ] && [ -n "$screenshot" ] || usage

say() { printf '[dashboard] %s\n' "$*"; }
die() { printf '[dashboard] FAIL: %s\n' "$*" >&2; exit 1; }

# ---- prerequisites: a missing one is a failure, never a skip
[ -x "$agent_bin" ] || die "fabriclab-agent not found at '$agent_bin'"
[ -x "$orch_bin" ] || die "fabriclab-orchestrator not found at '$orch_bin'"
[ -f "$images/manifest.json" ] || die "no guest images at '$images' (manifest.json missing; build them or set FABRICLAB_IMAGES_DIR)"
[ -x "$chromium" ] || die "no chromium at $chromium: run testbed/setup.sh (installs Debian's chromium)"
command -v node >/dev/null 2>&1 || die "node not found: the dashboard test needs Node.js (>= 20)"
[ -d "$here/node_modules/playwright-core" ] || die "$here/node_modules/playwright-core missing: run testbed/setup.sh (npm ci in tests/browser)"
command -v curl >/dev/null 2>&1 || die "curl not found"
mkdir -p "$(dirname "$screenshot")"
rm -f "$screenshot"

dir="$(mktemp -d /tmp/fldash-XXXXXX)"
token="dash-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s\n' "$token" > "$dir/token"
echo '<node><cpu><mhz>2000</mhz></cpu><memory>8388608</memory></node>' > "$dir/node.xml"

pids=()
node_pid=""
failed=1
cleanup() {
  local rc=$?
  set +e
  if [ -n "$node_pid" ]; then kill "$node_pid" 2>/dev/null; fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.3
  if [ -n "$node_pid" ]; then kill -9 "$node_pid" 2>/dev/null; fi
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  if [ "$failed" != 0 ]; then
    for f in "$dir"/orchestrator.err "$dir"/h*.err; do
      [ -s "$f" ] || continue
      echo "---- $(basename "$f") (tail) ----" >&2
      tail -n "$([ "${f##*/}" = orchestrator.err ] && echo 30 || echo 8)" "$f" >&2
    done
  fi
  if [ -n "$keep" ]; then echo "[dashboard] kept $dir" >&2; else rm -rf "$dir"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# Waits (up to $2 s) for "listening ADDR:PORT" in file $1 and prints ADDR:PORT.
wait_listening() {
  local out="$1" secs="$2" pid="$3" i
  for ((i = 0; i < secs * 10; i++)); do
    if grep -qm1 '^listening ' "$out" 2>/dev/null; then
      sed -n 's/^listening //p' "$out" | head -n1
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# ---- the rack: 4 agents (hN on 127.0.1.N+1, fault domain N%2) and the orchestrator
declare -A agent_addr
for n in 1 2 3 4; do
  h="h$n"
  "$agent_bin" --host-id "$h" --fault-domain $((n % 2)) --state-dir "$dir/$h" --guest-images "$images" \
    --listen "127.0.1.$((n + 1))" --port 0 --control-token-file "$dir/token" --capacity 4 \
    --hypervisor "test://$dir/node.xml" --lab-host-images host-v1,host-v2 --heartbeat-ms 200 \
    --healthy-periods 10 --boot-delay-ms 1500 >"$dir/$h.out" 2>"$dir/$h.err" &
  pids+=($!)
  addr="$(wait_listening "$dir/$h.out" 20 $!)" || die "agent $h did not start (see $h.err below)"
  agent_addr[$h]="$addr"
done
"$orch_bin" --journal "$dir/j.db" --port 0 --control-token-file "$dir/token" --agent-token-file "$dir/token" \
  --poll-ms 100 >"$dir/orchestrator.out" 2>"$dir/orchestrator.err" &
pids+=($!)
orch="$(wait_listening "$dir/orchestrator.out" 20 $!)" || die "the orchestrator did not start (see orchestrator.err below)"
base="http://$orch"
say "rack up: orchestrator $orch, agents ${agent_addr[*]} (temp dir $dir)"

# api METHOD PATH [JSON] -> prints the body; fails unless the status is $want (default 200/201).
api() {
  local method="$1" path="$2" body="${3:-}" out code
  out="$(curl -sS -m 30 -o "$dir/resp" -w '%{http_code}' -X "$method" -H "Authorization: Bearer $token" \
         ${body:+-H 'Content-Type: application/json' --data "$body"} "$base$path")" || die "$method $path: curl failed"
  code="$out"
  case "$code" in 200|201|202) cat "$dir/resp" ;; *) die "$method $path -> HTTP $code: $(head -c 500 "$dir/resp")" ;; esac
}

for n in 1 2 3 4; do
  h="h$n"
  api POST /v1/hosts "{\"id\":\"$h\",\"fault_domain\":$((n % 2)),\"endpoint\":\"http://${agent_addr[$h]}\",\"capacity\":4}" >/dev/null
done
api POST /v1/services '{"name":"web","instance_count":2,"ud_count":5,"image":"v1","memory_mib":128}' >/dev/null
api POST /v1/services '{"name":"worker","instance_count":3,"ud_count":5,"image":"v1","memory_mib":128}' >/dev/null

# All 5 instances healthy (node does the JSON: it is needed anyway).
healthy=""
for ((i = 0; i < 600; i++)); do
  if api GET /v1/instances | node -e '
      let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
        const v = JSON.parse(s); const a = Array.isArray(v) ? v : (v.instances || []);
        process.exit(a.length === 5 && a.every((x) => x.healthy === true) ? 0 : 1); });'; then
    healthy=1; break
  fi
  sleep 0.1
done
[ -n "$healthy" ] || die "the 5 instances did not all become healthy within 60 s: $(api GET /v1/instances | head -c 800)"
say "5 instances healthy; opening the dashboard"

# ---- the browser: start it, wait for "page ready", then start the drill
node "$here/dashboard_test.mjs" --url "$base/" --token "$token" --screenshot "$screenshot" \
  --timeout-ms "$timeout_ms" --disconnect --until-complete --require-traffic --chromium "$chromium" >"$dir/node.out" 2>"$dir/node.err" &
node_pid=$!
ready=""
for ((i = 0; i < 600; i++)); do
  if grep -q '^dashboard_test: page ready' "$dir/node.out"; then ready=1; break; fi
  kill -0 "$node_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$ready" ]; then
  cat "$dir/node.out" "$dir/node.err" >&2
  die "the dashboard did not report 'page ready' within 60 s"
fi
drill="$(api POST /v1/drills '{"kind":"host-os","target":"host-v2","time_scale":0.001}')"
say "drill started: $(printf '%s' "$drill" | head -c 200)"

set +e
wait "$node_pid"
rc=$?
set -e
node_pid=""
cat "$dir/node.out"
cat "$dir/node.err" >&2
if [ "$rc" -ne 0 ]; then
  say "drill now: $(api GET /v1/drills | head -c 600)"
  die "dashboard_test.mjs exited $rc"
fi
failed=0
say "PASS (screenshot $screenshot)"

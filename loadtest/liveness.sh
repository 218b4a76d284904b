#!/usr/bin/env bash
# The cost of liveness checks (issue 18), same run: RATE calls/s of HOLD
# calls for SECS seconds through creditgate (durable ledger, the Go load
# tool at both ends), once with the default intervals (keepalive every 30 s:
# no probe fires during a short call) and once with an OPTIONS keepalive in
# each leg every second (HOLD 3s: about three per leg per call), alternated
# ROUNDS times. Prints creditgate's CPU per answered call for each and the
# ratio. (Session refreshes cannot fire in a short call: RFC 4028's 90 s
# minimum; the keepalive is the per-call cost that grows with call length.)
#
# usage: loadtest/liveness.sh [RATE=1000] [SECS=10] [HOLD=3s] [ROUNDS=2]
set -euo pipefail
rate=${1:-1000}
secs=${2:-10}
hold=${3:-3s}
rounds=${4:-2}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=loadtest/creditgate.sh
source "$here/creditgate.sh"
setup_work liveness
(cd "$here/.." && go build -o "$work/creditgate" ./cmd/creditgate && go build -o "$work/loadtest" ./cmd/loadtest)
export CREDITGATE_BIN=$work/creditgate

# one MODE SIP_EXTRA: a fresh gateway, one load step, its CPU per answered call.
one() {
  local mode=$1
  rm -rf "$work/data"
  SIP_EXTRA=$2 start_creditgate "$carrier_port" $((rate * 10))
  local t0 t1 answered probes
  t0=$(awk '{print $14 + $15}' "/proc/$cg/stat")
  "$work/loadtest" -target "127.0.0.1:$sip_port" -carrier "127.0.0.1:$carrier_port" -rate "$rate" \
    -calls $((rate * secs)) -hold "$hold" -setup-timeout 10s -quiet -json >"$work/rep.json" 2>/dev/null || true
  sleep 1
  t1=$(awk '{print $14 + $15}' "/proc/$cg/stat")
  answered=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["answered"])' "$work/rep.json")
  probes=$(curl -sf "http://127.0.0.1:$http_port/metrics" | awk '$1 ~ /^creditgate_liveness_probes_total/ {s += $2} END {print s+0}')
  kill "$cg"; wait "$cg" 2>/dev/null || true
  local hz; hz=$(getconf CLK_TCK)
  python3 -c 'import sys; m,a,p,t0,t1,hz=sys.argv[1],int(sys.argv[2]),int(float(sys.argv[3])),int(sys.argv[4]),int(sys.argv[5]),int(sys.argv[6]); print(f"{m} {a} {p} {(t1-t0)/hz/max(a,1)*1e6:.0f}")' \
    "$mode" "$answered" "$probes" "$t0" "$t1" "$hz" | tee -a "$work/results"
}

for _ in $(seq "$rounds"); do
  one off ""
  one on "  keepalive_interval: 1s
  keepalive_timeout: 500ms"
done
python3 - "$work/results" "$rate" "$secs" "$hold" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
by = {"off": [], "on": []}
for m, answered, probes, us in rows:
    by[m].append((int(answered), int(probes), int(us)))
print(f"{sys.argv[2]} calls/s for {sys.argv[3]} s, {sys.argv[4]} calls")
for m in ("off", "on"):
    print(f"probes {'none' if m == 'off' else 'every 1 s':9}: " + ", ".join(f"{a} answered, {p} probes, {u} µs CPU/call" for a, p, u in by[m]))
off = statistics.mean(u for _, _, u in by["off"]); on = statistics.mean(u for _, _, u in by["on"])
print(f"mean CPU per answered call: without probes {off:.0f} µs, with {on:.0f} µs: ratio {on/off:.2f} (+{on-off:.0f} µs per call)")
PY

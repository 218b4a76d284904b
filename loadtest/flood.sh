#!/usr/bin/env bash
# A bounded INVITE flood on loopback, through creditgate with a durable
# ledger: the load tool offers RATE calls/s for SECS seconds (1 s calls,
# caller and carrier in one process). Prints what was offered, answered and
# shed (503 + Retry-After), creditgate's peak RSS and CPU, what it dropped,
# and checks the money of the calls that went through: the CDRs' charges
# add up to what left the balance, to the cent, and nothing stays held.
#
# usage: loadtest/flood.sh RATE [SECS=5]
#   CREDITGATE_BIN  a built binary (default: go build into a temp dir)
#   MAX_CALLS       sip.max_calls (default 3000)
set -euo pipefail
rate=${1:?usage: flood.sh RATE [SECS]}
secs=${2:-5}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=loadtest/creditgate.sh
source "$here/creditgate.sh"
setup_work flood
start_creditgate "$carrier_port" "${MAX_CALLS:-3000}"

(cd "$here/.." && go build -o "$work/loadtest" ./cmd/loadtest)
t0=$(awk '{print $14 + $15}' "/proc/$cg/stat"); w0=$(date +%s.%N)
"$work/loadtest" -target "127.0.0.1:$sip_port" -carrier "127.0.0.1:$carrier_port" -rate "$rate" \
  -calls $((rate * secs)) -hold 1s -setup-timeout 10s -quiet -json >"$work/report.json" 2>"$work/loadtest.log" || true # non-zero when calls failed, which a flood is for
t1=$(awk '{print $14 + $15}' "/proc/$cg/stat"); w1=$(date +%s.%N)
sleep 3 # the last calls settle
rss=$(awk '/VmHWM/ {print $2}' "/proc/$cg/status")
curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$http_port/v1/orgs/load/usage?format=csv" >"$work/cdrs.csv"
curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$http_port/v1/orgs/load" >"$work/org.json"
curl -sf "http://127.0.0.1:$http_port/metrics" >"$work/metrics.txt"
python3 - "$work" "$rate" "$secs" "$rss" "$t0" "$t1" "$w0" "$w1" <<'PY'
import csv, json, sys
from decimal import Decimal
work, rate, secs, rss, t0, t1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
wall = float(sys.argv[8]) - float(sys.argv[7])
rep = json.load(open(f"{work}/report.json"))
org = json.load(open(f"{work}/org.json"))
with open(f"{work}/cdrs.csv", encoding="utf-8-sig") as f:
    rows = list(csv.DictReader(f))
charged = sum(Decimal(r["charge"]) for r in rows)
spent = Decimal("1000000.00") - Decimal(org["balance"])
by = rep.get("by_status") or rep.get("ByStatus") or {}
shed = sum(v for k, v in by.items() if str(k) == "503")
print(f"offered {rate}/s for {secs} s: {rep.get('attempted')} calls; by final status {json.dumps(by, sort_keys=True)}")
print(f"answered {rep.get('answered')}, shed with 503 {shed}, setup p50 {rep.get('setup_ms', {}).get('p50')} ms p99 {rep.get('setup_ms', {}).get('p99')} ms")
ticks = 100
print(f"creditgate peak RSS {rss // 1024} MiB, CPU {(t1 - t0) / ticks / wall:.2f} cores over the load tool's {wall:.1f} s")
for line in open(f"{work}/metrics.txt"):
    if line.startswith(("creditgate_authorizations_total{reason=\"overloaded\"", "creditgate_authorizations_total{reason=\"rate_limited\"", "creditgate_sip_dropped_total")):
        print("  " + line.strip())
ok = charged == spent and org["held"] == "0.00"
print(f"money: {len(rows)} CDRs charged {charged}; balance moved {spent}; held {org['held']} -> {'adds up' if ok else 'MISMATCH'}")
sys.exit(0 if ok else 1)
PY

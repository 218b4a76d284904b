#!/usr/bin/env bash
# Slow readers against a live gateway (bounded, loopback): calls flow at
# RATE calls/s through creditgate with a durable ledger, first alone for
# 20 s, then for SECS s with READERS clients each reading the usage JSON
# export at BPS bytes a second through a 4 KiB receive buffer (and coming
# back a second after each refusal or cut). Prints, for both phases: calls
# answered and failed, setup p99, creditgate's peak RSS and goroutines;
# and what the server did with the slow readers (refused with 503 busy
# past http.max_exports, cut after http.write_timeout without progress:
# creditgate_http_exports_total{result}).
#
# usage: loadtest/slowread.sh [READERS=200] [RATE=500] [SECS=45] [BPS=4]
#   CREDITGATE_BIN  a built binary (default: go build into a temp dir)
set -euo pipefail
readers=${1:-200}
rate=${2:-500}
secs=${3:-45}
bps=${4:-4}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=loadtest/creditgate.sh
source "$here/creditgate.sh"
setup_work slowread
start_creditgate "$carrier_port" 20000
(cd "$here/.." && go build -o "$work/loadtest" ./cmd/loadtest)
lt() { "$work/loadtest" -target "127.0.0.1:$sip_port" -carrier "127.0.0.1:$carrier_port" -setup-timeout 10s -quiet "$@"; }

# sample PHASE: creditgate's RSS (KiB) and goroutines every half second.
sample() {
  while kill -0 "$cg" 2>/dev/null; do
    echo "$(awk '/VmRSS/ {print $2}' "/proc/$cg/status") $(curl -sf "http://127.0.0.1:$http_port/metrics" | awk '$1 == "go_goroutines" {print $2}')" >>"$work/sample.$1"
    sleep 0.5
  done
}

# 10,000 CDRs first: the JSON export is then ~4.7 MB, more than a slow
# reader's socket buffers and the kernel's send buffer together hold, so
# the gateway is still writing while the reader dawdles.
export_url="http://127.0.0.1:$http_port/v1/orgs/load/usage?format=json"
lt -rate 1000 -calls 10000 -hold 10ms >/dev/null
echo "preloaded 10,000 calls: the export is $(curl -sf -H "Authorization: Bearer $token" "$export_url" | wc -c) bytes"

sample calls & s1=$!; pids+=("$s1")
lt -rate "$rate" -calls $((rate * 20)) -hold 1s -json >"$work/calls.json" 2>/dev/null || true
kill "$s1"

sample slow & s2=$!; pids+=("$s2")
lt -rate "$rate" -calls $((rate * secs)) -hold 1s -json -slow-readers "$readers" -slow-bps "$bps" \
  -slow-url "$export_url" -slow-token "$token" \
  >"$work/slow.json" 2>"$work/slow.err" || true
kill "$s2"
curl -sf "http://127.0.0.1:$http_port/metrics" >"$work/metrics.txt"

python3 - "$work" "$readers" "$rate" "$secs" "$bps" <<'PY'
import json, sys
work, readers, rate, secs, bps = sys.argv[1], *sys.argv[2:]
def phase(name, label):
    rep = json.load(open(f"{work}/{name}.json"))
    rows = [l.split() for l in open(f"{work}/sample.{name}") if len(l.split()) == 2]
    rss = max(int(r[0]) for r in rows) / 1024
    gor = max(float(r[1]) for r in rows)
    print(f"{label}: {rep['attempted']} calls, {rep['answered']} answered, {rep['failed']} failed, "
          f"setup p99 {rep['setup_ms']['p99']} ms; creditgate peak RSS {rss:.0f} MiB, peak goroutines {gor:.0f}")
    return rep
print(f"{rate} calls/s of 1 s calls")
phase("calls", "calls alone, 20 s")
rep = phase("slow", f"with {readers} slow readers at {bps} B/s, {secs} s")
slow = [l for l in open(f"{work}/slow.err") if l.startswith('{"requests"')]
print("slow readers:", slow[-1].strip() if slow else "no report")
shown = ("creditgate_http_exports", "creditgate_panics_total", "creditgate_sip_dropped_total")
print("".join(l for l in open(f"{work}/metrics.txt") if l.startswith(shown)), end="")
sys.exit(1 if rep["failed"] else 0)
PY

#!/usr/bin/env bash
# Memory per call up: puts CALLS calls up at once through creditgate (the Go
# load tool as caller and carrier, RATE calls/s, each held long enough that
# all are up together) and prints creditgate's Go heap in use and RSS before
# the calls and with all of them up, and the difference per call. Loopback
# only; bounded; stops what it starts, by PID.
#
# usage: loadtest/callmem.sh [CALLS=10000] [RATE=500]
#   CREDITGATE_BIN  a built binary (default: go build into a temp dir)
#   PROFILE=1       save creditgate's heap with all calls up to ./callmem-heap.pprof
set -euo pipefail
calls=${1:-10000}
rate=${2:-500}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=loadtest/creditgate.sh
source "$here/creditgate.sh"
setup_work mem
start_creditgate "$carrier_port" $((calls * 2))
(cd "$here/.." && go build -o "$work/loadtest" ./cmd/loadtest)

ramp=$((calls / rate))
# Held long enough to sample twice: right after the last call is up, and
# again 36 s later, once even with sip.transaction_linger at RFC 3261's
# 32 s every call's setup transactions are gone, which leaves what a call up
# costs for as long as it lasts.
# The second figure also holds the ledger's memtable, which fills with
# every call's per-second debits until Pebble flushes it (64 MiB each).
hold=$((ramp + 50))
# gc: a full collection first (the heap profile's gc=1), so heap in use is
# what is live, not garbage waiting for the next cycle.
gc() { curl -sf -o /dev/null -H "Authorization: Bearer $token" "http://127.0.0.1:$http_port/debug/pprof/heap?gc=1"; }
sleep 2
gc
heap0=$(metric go_memstats_heap_inuse_bytes); rss0=$(metric process_resident_memory_bytes)
"$work/loadtest" -quiet -json -target "127.0.0.1:$sip_port" -carrier "127.0.0.1:$carrier_port" \
  -rate "$rate" -calls "$calls" -hold "${hold}s" -setup-timeout 30s >"$work/report.json" &
lt=$!
pids+=("$lt")
up=0
for _ in $(seq $((ramp * 10 + 300))); do
  up=$(metric creditgate_calls_active); up=${up%.*}
  [ "${up:-0}" -ge "$calls" ] && break
  sleep 0.1
done
sleep 2
gc
heap1=$(metric go_memstats_heap_inuse_bytes); rss1=$(metric process_resident_memory_bytes)
up1=$(metric creditgate_calls_active)
sleep 36
gc
if [ "${PROFILE:-}" = 1 ]; then
  curl -sf -H "Authorization: Bearer $token" -o callmem-heap.pprof "http://127.0.0.1:$http_port/debug/pprof/heap"
fi
heap2=$(metric go_memstats_heap_inuse_bytes); rss2=$(metric process_resident_memory_bytes)
up2=$(metric creditgate_calls_active)
wait "$lt" || true
python3 - "$calls" "$heap0" "$rss0" "$heap1" "$rss1" "$up1" "$heap2" "$rss2" "$up2" "$work/report.json" <<'PY'
import json, sys
calls, h0, r0, h1, r1, up1, h2, r2, up2 = (float(x) for x in sys.argv[1:10])
rep = json.load(open(sys.argv[10]))
print(f"answered {rep['answered']} of {calls:.0f}, failed {rep['failed']}; idle: heap in use {h0/2**20:.1f} MiB, RSS {r0/2**20:.1f} MiB")
for what, h, r, up in (("all up, right after the last answer", h1, r1, up1), ("all up, 36 s later", h2, r2, up2)):
    print(f"{what:<40} calls {up:.0f}  heap in use {h/2**20:.1f} MiB ({(h-h0)/up:.0f} B/call)  RSS {r/2**20:.1f} MiB ({(r-r0)/up:.0f} B/call)")
PY

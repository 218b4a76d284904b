#!/usr/bin/env bash
# One bounded load step, side by side in one run: the same SIPp load (RATE
# calls/s for SECS seconds, calls of HOLD_MS, 1 s billing increments) first
# SIPp-to-SIPp direct, then through creditgate with a durable ledger. Prints
# per target: calls created, answered, failed, retransmissions, setup
# latency (INVITE → 200 at the caller; SIPp measures it in whole ms)
# p50/p99/max, and for creditgate its CPU (cores) and peak RSS. Loopback only; every process it starts it also
# stops, by PID.
#
# usage: loadtest/step.sh RATE [SECS=10] [HOLD_MS=1000]
#   CREDITGATE_BIN  a built binary (default: go build into a temp dir)
#   KAMAILIO_CFG    also run the step through Kamailio + cnxcc with this
#                   config (the peer benchmark's kamailio.cfg)
#   PROFILE=1       save a CPU profile of creditgate over the middle of the
#                   step to ./step-cpu.pprof, its goroutines to ./step-goroutines.txt
#                   and what it allocated to ./step-allocs.pprof
#   TRACE=1         save a 2 s execution trace from the middle of the step to
#                   ./step.trace (go tool trace step.trace)
set -euo pipefail
rate=${1:?usage: step.sh RATE [SECS] [HOLD_MS]}
secs=${2:-10}
hold=${3:-1000}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/cg-step.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
uac_port=$(free_port); uas_port=$(free_port); sip_port=$(free_port); http_port=$(free_port)
calls=$((rate * secs))
limit=$((rate * (hold / 1000 + 3)))

# cpu_jiffies prints the machine's busy and total CPU time so far.
cpu_jiffies() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat; }

# step TARGET_PORT NAME: run the SIPp pair once and print its line.
step() {
  local target=$1 name=$2 dir=$work/$2
  mkdir -p "$dir"
  (cd "$dir" && exec timeout $((secs + 40)) sipp -sf "$here/sipp/uas_answer.xml" -i 127.0.0.1 -p "$uas_port" -m "$calls" \
    -nostdin -timeout $((secs + 35))s -trace_err -error_file "$dir/uas_err.log" >/dev/null 2>&1) &
  local uas=$!
  pids+=("$uas")
  sleep 0.5
  local busy0; busy0=$(cpu_jiffies)
  (cd "$dir" && exec timeout $((secs + 40)) sipp -sf "$here/sipp/uac_call.xml" -i 127.0.0.1 -p "$uac_port" -r "$rate" -m "$calls" \
    -d "$hold" -l "$limit" -nostdin -default_behaviors all,-abortunexp -timeout $((secs + 35))s -trace_err -error_file "$dir/uac_err.log" \
    -s +33142278186 -key caller 14255550100 -trace_stat -stf "$dir/uac.csv" -trace_rtt -rtt_freq 1 \
    "127.0.0.1:$target" >/dev/null 2>&1) || true
  local busy1; busy1=$(cpu_jiffies)
  sleep 1
  kill "$uas" 2>/dev/null || true
  wait "$uas" 2>/dev/null || true
  python3 - "$name" "$dir" "$rate" "$busy0" "$busy1" <<'PY'
import csv, glob, sys
name, d, rate = sys.argv[1:4]
b0, b1 = [tuple(map(int, a.split())) for a in sys.argv[4:6]]
machine_busy = (b1[0] - b0[0]) / max(1, b1[1] - b0[1])
rows = list(csv.reader(open(d + "/uac.csv"), delimiter=";"))
s = dict(zip(rows[0], rows[-1]))
lat = []
for f in glob.glob(d + "/*_rtt.csv"):
    for r in csv.reader(open(f), delimiter=";"):
        try:
            lat.append(float(r[1]))
        except (ValueError, IndexError):
            pass
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
print(f"{name:<11} rate={rate} created={s['TotalCallCreated']} ok={s['SuccessfulCall(C)']} failed={s['FailedCall(C)']} "
      f"retrans={s['Retransmissions(C)']} setup_ms p50={q(.5):.2f} p99={q(.99):.2f} max={lat[-1] if lat else float('nan'):.2f} "
      f"machine_cpu_busy={machine_busy:.0%}")
PY
}

step "$uas_port" direct

# The peer, when asked for: Kamailio + cnxcc from the benchmark's config
# (KAMAILIO_CFG, e.g. ../shared/bench/kamailio/kamailio.cfg), moved onto
# this run's ports, with the same load between the same SIPp scenarios.
if [ -n "${KAMAILIO_CFG:-}" ]; then
  kam_port=$(free_port)
  sed -e "s/@CREDIT@/1000000/; s/@CPS@/0.01/" -e "s/127.0.0.1:5070/127.0.0.1:$kam_port/" \
    -e "s/127.0.0.1:5080/127.0.0.1:$uas_port/" "$KAMAILIO_CFG" >"$work/kamailio.cfg"
  # cnxcc can crash while Kamailio shuts down; no core file for that.
  (ulimit -c 0; exec kamailio -f "$work/kamailio.cfg" -DD -E -m 512 -M 64 -P "$work/kamailio.pid" >"$work/kamailio.log" 2>&1) &
  kam=$!
  pids+=("$kam")
  sleep 1
  step "$kam_port" kamailio
  kill "$kam" 2>/dev/null || true
  wait "$kam" 2>/dev/null || true
fi

# shellcheck source=loadtest/creditgate.sh
. "$here/creditgate.sh"
start_creditgate "$uas_port" $((limit * 2 + 1000))

ticks() { awk '{print $14 + $15}' "/proc/$cg/stat"; }
t0=$(ticks)
s0=$(date +%s.%N)
if [ "${PROFILE:-}" = 1 ]; then
  (sleep $((secs / 3)); curl -sf -H "Authorization: Bearer $token" -o step-cpu.pprof \
    "http://127.0.0.1:$http_port/debug/pprof/profile?seconds=$((secs / 2 > 1 ? secs / 2 : 1))") &
  pids+=("$!")
  (sleep $((secs / 2)); curl -sf -H "Authorization: Bearer $token" -o step-goroutines.txt \
    "http://127.0.0.1:$http_port/debug/pprof/goroutine?debug=1") &
  pids+=("$!")
fi
if [ "${TRACE:-}" = 1 ]; then
  (sleep $((secs / 2)); curl -sf -H "Authorization: Bearer $token" -o step.trace \
    "http://127.0.0.1:$http_port/debug/pprof/trace?seconds=2") &
  pids+=("$!")
fi
step "$sip_port" creditgate
if [ "${PROFILE:-}" = 1 ]; then
  curl -sf -H "Authorization: Bearer $token" -o step-allocs.pprof "http://127.0.0.1:$http_port/debug/pprof/allocs"
fi
t1=$(ticks)
s1=$(date +%s.%N)
hz=$(getconf CLK_TCK)
rss=$(awk '/VmHWM/ {print $2}' "/proc/$cg/status")
# CPU per answered call does not depend on how long SIPp waited for the
# stragglers of an overloaded step, which stretches the cores figure's
# window.
answered=$(python3 -c 'import csv,sys; r=list(csv.reader(open(sys.argv[1]), delimiter=";")); print(dict(zip(r[0], r[-1]))["SuccessfulCall(C)"])' "$work/creditgate/uac.csv")
python3 -c "print(f'creditgate  cpu={($t1-$t0)/$hz/($s1-$s0):.2f} cores ({($t1-$t0)/$hz*1e6/max(1,$answered):.0f} us per answered call)  peak_rss={$rss/1024:.0f} MiB')"
curl -sf "http://127.0.0.1:$http_port/metrics" | python3 -c '
import sys
m, buckets = {}, {}
for line in sys.stdin:
    if line.startswith("#"):
        continue
    k, _, v = line.rpartition(" ")
    m[k] = float(v)
    if "_bucket{" in k:
        name, _, le = k.partition("_bucket{")
        le = le.split("le=\"")[1].split("\"")[0]
        buckets.setdefault(name, []).append((float(le), float(v)))
def mean(name):
    c = m.get(name + "_count", 0)
    return m.get(name + "_sum", 0) / c * 1000 if c else float("nan")
def q(name, p):
    # The upper bound of the bucket the p-quantile falls in: an upper
    # estimate, as coarse as the buckets.
    bs = sorted(buckets.get(name, []))
    if not bs or bs[-1][1] == 0:
        return float("nan")
    for le, n in bs:
        if n >= p * bs[-1][1]:
            return le * 1000
    return float("inf")
lc, su = "creditgate_ledger_commit_seconds", "creditgate_call_setup_seconds"
n = m.get(lc + "_count", 0)
print(f"creditgate  ledger commit mean={mean(lc):.2f} ms p99<={q(lc, .99):.1f} ms ({n:.0f} commits)  "
      f"INVITE in-to-out mean={mean(su):.2f} ms p99<={q(su, .99):.1f} ms")
'
errors=$(grep -c 'level=ERROR' "$work/cg.log" || true)
if [ "$errors" != 0 ]; then
  echo "creditgate logged $errors errors; the first:"
  grep -m 3 'level=ERROR' "$work/cg.log"
fi

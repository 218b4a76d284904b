#!/usr/bin/env bash
# What cluster mode adds to a call's setup, side by side in one run: the
# same load tool step (RATE calls/s for SECS seconds, calls of HOLD_MS,
# 1 s increments) through one single-node creditgate, then through three
# single nodes (each its own store: what three processes cost on this box),
# then through three cluster nodes on one etcd member, the rate split
# evenly over the three (each node's share from its own load tool, to its
# own carrier). Cluster mode's own cost is the third line against the
# second. The box
# is shared by every process, so compare the two lines' latencies (the
# ratio), not throughput. Prints per run: calls answered/failed, the
# caller's setup (INVITE → 200 OK, the load tool's p50/p99) and the
# gateways' INVITE in → INVITE out (creditgate_call_setup_seconds mean,
# over every node), and in cluster mode etcd's writes per answered call.
# Loopback only; every process it starts it stops, by PID.
#
# usage: loadtest/cluster.sh RATE [SECS=10] [HOLD_MS=1000]
#   CREDITGATE_BIN, LOADTEST_BIN  built binaries (default: go build them)
#   ETCD_BIN                      the etcd server (default /usr/bin/etcd)
set -euo pipefail
rate=${1:?usage: cluster.sh RATE [SECS] [HOLD_MS]}
secs=${2:-10}
hold=${3:-1000}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/cg-cluster.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

bin=${CREDITGATE_BIN:-}
lt=${LOADTEST_BIN:-}
if [ -z "$bin" ]; then bin=$work/creditgate; (cd "$here/.." && go build -o "$bin" ./cmd/creditgate); fi
if [ -z "$lt" ]; then lt=$work/loadtest; (cd "$here/.." && go build -o "$lt" ./cmd/loadtest); fi
token=load-token-0123456789abcdef
deck=$'prefix,country,destination,type,rate_per_minute,first_increment,next_increment\n33,FR,France,geographic,0.60,1,1\n'

# api PORT METHOD PATH [curl args]
api() { curl -sf -o /dev/null -H "Authorization: Bearer $token" -X "$2" "http://127.0.0.1:$1$3" "${@:4}"; }
wait_ready() { for _ in $(seq 150); do curl -sf -o /dev/null "http://127.0.0.1:$1/readyz" && return 0; sleep 0.1; done; echo "node on $1 not ready"; exit 1; }

# start_node NAME EXTRA_FLAGS...: a creditgate on fresh ports; sets
# $sip and $http.
start_node() {
  local name=$1; shift
  sip=$(free_port); http=$(free_port)
  printf 'sip:\n  max_calls: %d\nlog:\n  level: warn\nfunding:\n  minimum: "1.00"\n' $((rate * (hold / 1000 + 5) + 1000)) >"$work/$name.yaml"
  "$bin" serve --config "$work/$name.yaml" --data-dir "$work/$name" --admin-token "$token" \
    --sip-listen "127.0.0.1:$sip" --http-listen "127.0.0.1:$http" "$@" 2>"$work/$name.log" &
  pids+=("$!")
  wait_ready "$http"
}

# provision HTTP_PORT CARRIER_PORTS...: org "load" with plenty of credit,
# its caller, and carrier trunk i for prefix 3314227818<i>.
provision() {
  local http=$1; shift
  api "$http" POST /v1/orgs -d '{"id":"load","name":"Load","country":"US","region":"us"}'
  api "$http" POST /v1/orgs/load/credits -d '{"amount":"1000000.00","idempotency_key":"step"}'
  api "$http" PUT /v1/orgs/load/users/caller -d '{"numbers":["+14255550100"],"licenses":["communications_credits"]}'
  api "$http" PUT /v1/trunks/pbx -d '{"kind":"customer","org":"load","addresses":["127.0.0.1"]}'
  local i=1
  for c in "$@"; do
    api "$http" PUT "/v1/trunks/carrier$i" -d "{\"kind\":\"carrier\",\"uri\":\"sip:127.0.0.1:$c\",\"prefixes\":[\"3314227818$i\"]}"
    i=$((i + 1))
  done
  api "$http" PUT /v1/rates -H 'Content-Type: text/csv' --data-binary "$deck"
}

# setup_mean HTTP_PORTS...: the mean of creditgate_call_setup_seconds over
# the nodes, in ms.
setup_mean() {
  for h in "$@"; do curl -sf "http://127.0.0.1:$h/metrics"; done | awk '
    $1 == "creditgate_call_setup_seconds_sum" {s += $2}
    $1 == "creditgate_call_setup_seconds_count" {n += $2}
    END {printf "%.2f", n ? s / n * 1000 : 0}'
}

# load NAME N TARGET_SIP... : N load tools at rate/N, each to its node and
# its own carrier; prints one summary line.
load() {
  local name=$1 n=$2; shift 2
  local i=1 ltpids=()
  for target in "$@"; do
    local carrier=${carriers[$((i - 1))]}
    "$lt" -target "127.0.0.1:$target" -carrier "127.0.0.1:$carrier" -rate "$(python3 -c "print($rate / $n)")" \
      -calls $((rate * secs / n)) -hold "${hold}ms" -to "+3314227818$i" -from +14255550100 -setup-timeout 10s \
      -json -quiet >"$work/$name-$i.json" 2>"$work/$name-$i.err" &
    ltpids+=("$!"); pids+=("$!")
    i=$((i + 1))
  done
  for p in "${ltpids[@]}"; do wait "$p" || true; done
  python3 - "$name" "$work" "$n" <<'PY'
import json, sys
name, work, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
reps = [json.load(open(f"{work}/{name}-{i}.json")) for i in range(1, n + 1)]
ans = sum(r["answered"] for r in reps); failed = sum(r["failed"] for r in reps)
# p50/p99 of the union is not the mean of the parts; with equal shares the
# parts' worst is an upper bound, their mean a fair middle.
p50 = sum(r["setup_ms"]["p50"] for r in reps) / n
p99 = max(r["setup_ms"]["p99"] for r in reps)
print(f"{name:<12} answered={ans} failed={failed} caller setup (INVITE→200) p50={p50:.2f} ms p99<={p99:.2f} ms", end="")
PY
}

carriers=($(free_port) $(free_port) $(free_port))

# Single node, the whole rate from one load tool.
start_node single
single_http=$http; single_sip=$sip
provision "$single_http" "${carriers[0]}"
line=$(load single 1 "$single_sip")
echo "$line  INVITE in→out mean=$(setup_mean "$single_http") ms"
kill "${pids[-1]}" 2>/dev/null || true

# Three single nodes, each on its own store, the rate split as below: the
# baseline for what three processes on this box cost, without etcd.
sips=(); https=(); npids=()
for i in 1 2 3; do
  start_node "s$i"
  sips+=("$sip"); https+=("$http"); npids+=("${pids[-1]}")
  provision "$http" "${carriers[@]}"
done
line=$(load singles-3 3 "${sips[@]}")
echo "$line  INVITE in→out mean=$(setup_mean "${https[@]}") ms"
for p in "${npids[@]}"; do kill "$p" 2>/dev/null || true; done

# etcd, one member.
etcd_client=$(free_port); etcd_peer=$(free_port)
"${ETCD_BIN:-/usr/bin/etcd}" --name e1 --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$etcd_client" \
  --advertise-client-urls "http://127.0.0.1:$etcd_client" --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" --initial-cluster "e1=http://127.0.0.1:$etcd_peer" \
  --log-level error >"$work/etcd.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$etcd_client/health" && break; sleep 0.1; done
etcd_rev() { curl -sf -X POST "http://127.0.0.1:$etcd_client/v3/kv/range" -d '{"key":"AA=="}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])'; }

sips=(); https=()
for i in 1 2 3; do
  start_node "n$i" --cluster-etcd "http://127.0.0.1:$etcd_client" --node-id "n$i"
  sips+=("$sip"); https+=("$http")
done
provision "${https[0]}" "${carriers[@]}"
sleep 1 # the shared configuration reaches nodes 2 and 3 in milliseconds
rev0=$(etcd_rev)
line=$(load cluster-3 3 "${sips[@]}")
rev1=$(etcd_rev)
answered=$(python3 -c "import json; print(sum(json.load(open('$work/cluster-3-%d.json' % i))['answered'] for i in (1,2,3)))")
echo "$line  INVITE in→out mean=$(setup_mean "${https[@]}") ms  etcd writes=$((rev1 - rev0)) ($(python3 -c "print(f'{($rev1 - $rev0) / max(1, $answered):.3f}')") per answered call)"
for i in 1 2 3; do
  errors=$(grep -c 'level=ERROR' "$work/n$i.log" || true)
  [ "$errors" = 0 ] || { echo "node n$i logged $errors errors; the first:"; grep -m 3 'level=ERROR' "$work/n$i.log"; }
done

# Sourced by the load scripts: their common start (a work directory, the
# PIDs to stop at exit, free ports) and starting creditgate for a load run,
# provisioned. Expects $here (this directory).

# setup_work NAME: $work (a temp dir, removed at exit), the array pids
# (every PID started; stopped at exit, by PID only), and $sip_port,
# $http_port and $carrier_port, each free on 127.0.0.1.
setup_work() {
  work=$(mktemp -d "/tmp/cg-$1.XXXXXX")
  pids=()
  trap cleanup EXIT
  sip_port=$(free_port); http_port=$(free_port); carrier_port=$(free_port)
}

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# start_creditgate (below) expects setup_work's $work, ports and pids.
#
# start_creditgate CARRIER_PORT MAX_CALLS: run CREDITGATE_BIN (default: go
# build it) with a durable ledger in $work/data; org "load" funded
# 1,000,000.00, caller +14255550100 on a customer trunk for 127.0.0.1, a
# carrier trunk to 127.0.0.1:CARRIER_PORT for every number, and France
# (+33) at 0.60/min in 1 s increments. Sets $cg to its PID. SIP_EXTRA: more
# lines for the sip: section of its config (two-space indented).
start_creditgate() {
  local carrier_port=$1 max_calls=$2
  local bin=${CREDITGATE_BIN:-}
  if [ -z "$bin" ]; then
    bin=$work/bin/creditgate
    (cd "$here/.." && go build -o "$bin" ./cmd/creditgate)
  fi
  token=load-token-0123456789abcdef
  cat >"$work/cg.yaml" <<EOF
sip:
  max_calls: $max_calls
${SIP_EXTRA:-}
log:
  level: ${LOG_LEVEL:-warn}
EOF
  "$bin" serve --config "$work/cg.yaml" --data-dir "$work/data" --admin-token "$token" \
    --sip-listen "127.0.0.1:$sip_port" --http-listen "127.0.0.1:$http_port" 2>"$work/cg.log" &
  cg=$!
  pids+=("$cg")
  for _ in $(seq 100); do api GET /readyz && break; sleep 0.1; done
  api POST /v1/orgs -d '{"id":"load","name":"Load","country":"US","region":"us"}'
  api POST /v1/orgs/load/credits -d '{"amount":"1000000.00","idempotency_key":"step"}'
  api PUT /v1/orgs/load/users/caller -d '{"numbers":["+14255550100"],"licenses":["communications_credits"]}'
  api PUT /v1/trunks/pbx -d '{"kind":"customer","org":"load","addresses":["127.0.0.1"]}'
  api PUT /v1/trunks/carrier -d "{\"kind\":\"carrier\",\"uri\":\"sip:127.0.0.1:$carrier_port\",\"prefixes\":[\"\"]}"
  api PUT /v1/rates -H 'Content-Type: text/csv' --data-binary $'prefix,country,destination,type,rate_per_minute,first_increment,next_increment\n33,FR,France,geographic,0.60,1,1\n'
}

# api METHOD PATH [curl args]: one admin API call, failing on an error status.
api() { curl -sf -o /dev/null -H "Authorization: Bearer $token" -X "$1" "http://127.0.0.1:$http_port$2" "${@:3}"; }

# metric NAME: the value of one unlabelled metric from /metrics.
metric() { curl -sf "http://127.0.0.1:$http_port/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

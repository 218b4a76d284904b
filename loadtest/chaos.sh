#!/usr/bin/env bash
# A longer chaos run for operators (issue 17): e2e's TestClusterChaos for
# SECONDS seconds — a steady call rate through Kamailio's dispatcher to
# three creditgate nodes on a three-member etcd, with a node killed
# (SIGKILL) or frozen (SIGSTOP/SIGCONT), or an etcd member killed, every
# few seconds; at the end the money of record must hold to the cent, every
# answered call have exactly one CDR and no call have run past what it
# paid beyond a reaped call's overrun. Everything runs on loopback, as
# children of the test, stopped by PID when it ends. Prints the test's log:
# the actions taken, the counts (calls, kills, pauses, etcd kills, reaped
# calls, failed attempts) and the money at the end.
#
# Needs kamailio (apt-get install kamailio) and etcd (apt-get install
# etcd-server; the etcd service it starts may stay stopped).
#
# usage: loadtest/chaos.sh [SECONDS=600] [SEED]   (SEED replays a run's choices)
set -euo pipefail
secs=${1:-600}
case $secs in '' | *[!0-9]*) echo "chaos.sh: SECONDS must be whole seconds, got '$secs'" >&2; exit 2 ;; esac
here=$(cd "$(dirname "$0")" && pwd)
export CHAOS_SECONDS=$secs
if [ -n "${2:-}" ]; then export CHAOS_SEED=$2; fi
cd "$here/.."
# The run, the setup and the final checks: SECONDS plus a few minutes.
exec go test -count=1 -race -timeout "$((secs + 600))s" -run '^TestClusterChaos$' -v ./e2e/

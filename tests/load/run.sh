#!/usr/bin/env bash
# The load benchmark (README "Load tests"): installs what it needs on a fresh machine, then runs bench.py.
#   bash tests/load/run.sh [--quick] [--servers resolver,dnsmasq] [--workloads W1] [--sizes 100k] ...
#   bash tests/load/run.sh --soak 10 [--rate 5000] [--write-results]   (soak.py: memory and answers over time)
#   bash tests/load/run.sh --encrypted [--transports dot,doh]   (encrypted.py: DoT and DoH against unbound, dnsdist)
# Loopback only; every process it starts is stopped on exit, on error and on Ctrl-C (bench.py does it, and the
# trap below stops whatever a killed driver left behind, by the process-group ids it recorded).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
OUT=${LOAD_OUT:-tests/load/out}   # LOAD_OUT: a separate directory per concurrent run
mkdir -p "$OUT"
DRIVER=tests/load/bench.py
ENCRYPTED=""
for arg in "$@"; do
    [[ $arg == --soak* ]] && DRIVER=tests/load/soak.py
    [[ $arg == --encrypted ]] && DRIVER=tests/load/encrypted.py && ENCRYPTED=1
done

need=()
command -v dnsperf >/dev/null 2>&1 || need+=(dnsperf)
command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq-base)   # the binary only: no service on port 53
command -v unbound >/dev/null 2>&1 || need+=(unbound)
command -v nsd >/dev/null 2>&1 || need+=(nsd)
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
if [ -n "$ENCRYPTED" ]; then
    command -v dnsdist >/dev/null 2>&1 || need+=(dnsdist)
    command -v openssl >/dev/null 2>&1 || need+=(openssl)
fi
if ((${#need[@]})); then
    echo "run.sh: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Packages must not start their daemons (unbound and nsd would take port 53): policy-rc.d says no while
    # installing, and goes away again if we put it there.
    added_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        added_policy=1
    fi
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    [ -n "$added_policy" ] && rm -f /usr/sbin/policy-rc.d
fi
"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]' pytest-benchmark

# One pid file per run, so that two runs on one box never stop each other's processes.
export LOAD_PIDFILE="$OUT/pids.$$"
cleanup() {
    # bench.py stops its own processes; this is for the case where it was killed before it could.
    if [ -s "$LOAD_PIDFILE" ]; then
        while read -r pgid; do
            [ -n "$pgid" ] && kill -TERM -- "-$pgid" 2>/dev/null || true
        done <"$LOAD_PIDFILE"
        sleep 1
        while read -r pgid; do
            [ -n "$pgid" ] && kill -KILL -- "-$pgid" 2>/dev/null || true
        done <"$LOAD_PIDFILE"
    fi
    rm -f "$LOAD_PIDFILE"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

"$PYTHON" "$DRIVER" "$@"

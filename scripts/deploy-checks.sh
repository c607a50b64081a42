#!/usr/bin/env bash
# Deployment checks: the SAM template validates and lints, and every Lambda builds with
# cargo-lambda. Installs AWS SAM CLI, cfn-lint and cargo-lambda (PyPI) into .venv-deploy
# once. x86_64 only: arm64 cross builds need a toolchain download these machines lack.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/tools.sh
install_deploy_tools
export PATH="$PWD/.venv-deploy/bin:$PATH"

echo "== sam validate, and --lint"
SAM_CLI_TELEMETRY=0 sam validate -t template.yaml --region us-east-1
SAM_CLI_TELEMETRY=0 sam validate --lint -t template.yaml
echo "== the SAM transform, as a deploy runs it, for both HttpAuth values"
.venv-deploy/bin/python scripts/sam_transform.py template.yaml HttpAuth=IAM
.venv-deploy/bin/python scripts/sam_transform.py template.yaml HttpAuth=JWT \
  JwtIssuer=https://issuer.example JwtAudience=statefun
echo "== cfn-lint"
cfn-lint template.yaml infra/monitoring.yaml
echo "== cargo lambda build --release (x86_64), as sam build runs it for every function"
# One binary for every role; [package.metadata.lambda.build] turns on its aws feature.
cargo lambda build --release --x86-64 --bin statefun-lambda
ls -l target/lambda/statefun-lambda/bootstrap
# The package budget (issue 11): a regression in size is a deploy-time cost, caught here.
size=$(stat -c %s target/lambda/statefun-lambda/bootstrap)
if [ "$size" -gt 10000000 ]; then
  echo "the Lambda binary is $size bytes, over the 10 MB budget" >&2; exit 1
fi

echo "== statefun-lambda new: the scaffold validates and builds as a user's project"
scaffold=$(mktemp -d)
target/lambda/statefun-lambda/bootstrap new "$scaffold/hello-fns"   # the binary built above is the CLI too
(
  cd "$scaffold/hello-fns"
  SAM_CLI_TELEMETRY=0 sam validate --lint -t template.yaml
  # Its dependencies are ours: share the target dir (and what the build above compiled).
  CARGO_TARGET_DIR="$OLDPWD/target" cargo lambda build --release --x86-64
)
ls -l target/lambda/hello-fns/bootstrap
rm -rf "$scaffold"

#!/usr/bin/env bash
# After `sam deploy` of template.yaml to MiniStack 1.5.33 (AWS_ENDPOINT_URL set), makes
# the stack behave as on AWS; on AWS itself there is nothing to fix. Three emulator gaps:
# - a `Number` parameter reaches an SQS event source's ScalingConfig.MaximumConcurrency
#   as a string, which stops MiniStack's poller for standard queues (the timer forwarder
#   and the SQS ingress never run): each mapping is updated with the stack's
#   MaxConcurrency as a number;
# - MiniStack ignores the OpenAPI body SAM generates for an HttpApi (every path is a
#   404): the integration and the routes of the IAM-authorised API are created;
# - with AUTH=true it authorises SendMessageBatch as `sqs:SendMessageBatch`, which is not
#   an IAM action on AWS (a batch is authorised by `sqs:SendMessage`): each role gets
#   that name on the queues its policies already allow `sqs:SendMessage` on, nothing more.
# Idempotent. Prints the HTTP API's base URL.
#
#   infra/ministack-fixups.sh STACK_NAME
set -euo pipefail
stack=${1:?usage: infra/ministack-fixups.sh STACK_NAME}
endpoint=${AWS_ENDPOINT_URL:?set AWS_ENDPOINT_URL to MiniStack, e.g. http://127.0.0.1:4566}
aws() { command aws --endpoint-url "$endpoint" --output text "$@"; }

physical() {
  aws cloudformation describe-stack-resources --stack-name "$stack" \
    --query "StackResources[?LogicalResourceId=='$1'].PhysicalResourceId | [0]"
}

limit=$(aws cloudformation describe-stacks --stack-name "$stack" \
  --query "Stacks[0].Parameters[?ParameterKey=='MaxConcurrency'].ParameterValue | [0]")
[[ "$limit" =~ ^[0-9]+$ ]] || limit=10
for function in DispatcherFunction TimerForwarderFunction SqsIngressFunction; do
  name=$(physical "$function")
  [ -n "$name" ] && [ "$name" != None ] || continue
  for uuid in $(aws lambda list-event-source-mappings --function-name "$name" \
      --query 'EventSourceMappings[].UUID'); do
    aws lambda update-event-source-mapping --uuid "$uuid" \
      --scaling-config "MaximumConcurrency=$limit" >/dev/null
  done
done

for role in DispatcherRole TimerForwarderRole SqsIngressRole HttpIngressRole; do
  name=$(physical "$role")
  [ -n "$name" ] && [ "$name" != None ] || continue
  for policy in $(aws iam list-role-policies --role-name "$name" --query 'PolicyNames'); do
    [ "$policy" != ministack-batch-send ] || continue
    queues=$(aws iam get-role-policy --role-name "$name" --policy-name "$policy" \
      --query "PolicyDocument.Statement[?Action=='sqs:SendMessage'].Resource[]")
    [ -n "$queues" ] && [ "$queues" != None ] || continue
    resources=$(printf '"%s",' $queues)
    aws iam put-role-policy --role-name "$name" --policy-name ministack-batch-send \
      --policy-document "{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"sqs:SendMessageBatch\",\"Resource\":[${resources%,}]}]}"
  done
done

api=$(physical HttpApiIam)
if [ -z "$api" ] || [ "$api" = None ]; then
  echo "no HttpApiIam in $stack (HttpAuth=JWT): create its routes with" >&2
  echo "  aws apigatewayv2 create-route --authorization-type JWT --authorizer-id …" >&2
  exit 1
fi
if [ "$(aws apigatewayv2 get-routes --api-id "$api" --query 'length(Items)')" = 0 ]; then
  function_arn=$(aws lambda get-function --function-name "$(physical HttpIngressFunction)" \
    --query Configuration.FunctionArn)
  integration=$(aws apigatewayv2 create-integration --api-id "$api" \
    --integration-type AWS_PROXY --integration-uri "$function_arn" \
    --payload-format-version 2.0 --query IntegrationId)
  for method in POST PUT; do
    aws apigatewayv2 create-route --api-id "$api" \
      --route-key "$method /{namespace}/{type}/{id}" \
      --target "integrations/$integration" --authorization-type AWS_IAM >/dev/null
  done
fi
echo "$endpoint/_aws/execute-api/$api/\$default"

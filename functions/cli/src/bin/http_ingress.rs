#![recursion_limit = "256"]
//! The HTTP ingress Lambda: API Gateway HTTP API (payload format 2.0) request in, 202
//! with the message id (or a 4xx saying what is wrong) out.

use aws_lambda_events::event::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use statefun_lambda::lambda;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let handlers = lambda::cold_start().await?;
    run(service_fn(
        move |event: LambdaEvent<ApiGatewayV2httpRequest>| {
            let handlers = handlers.clone();
            async move {
                Ok::<ApiGatewayV2httpResponse, Error>(
                    handlers.http_ingress.handle(event.payload).await,
                )
            }
        },
    ))
    .await
}

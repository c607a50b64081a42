//! The dispatcher Lambda: SQS event in, partial batch response out.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

use statefun_lambda::lambda;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let handlers = lambda::cold_start().await?;
    run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let handlers = handlers.clone();
        async move {
            let deadline = lambda::answer_by(&event.context);
            Ok::<SqsBatchResponse, Error>(
                handlers
                    .dispatcher
                    .handle_until(event.payload, Some(deadline))
                    .await,
            )
        }
    }))
    .await
}

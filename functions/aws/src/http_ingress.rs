//! The HTTP ingress Lambda behind an API Gateway HTTP API (payload format 2.0), with the
//! embedded runtime's contract ([`statefun_core::ingress`]): `POST /{namespace}/{type}/{id}`,
//! `Content-Type: application/vnd.{typename}`, 202 with the message id once the message
//! is in the inbox. Only function types the module exposes are reachable. With an
//! `Idempotency-Key` the message id is `http:<key>`: SQS drops a repeat within its
//! 5-minute dedup window, and the receiver applies a later one never again.

use std::sync::Arc;

use aws_lambda_events::encodings::Body;
use aws_lambda_events::event::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use base64::Engine;
use serde_json::json;
use statefun_core::ingress::{self as contract, Exposure, Rejected};
use statefun_core::module::Module;
use statefun_core::ports::Clock;
use statefun_core::remote::RemoteFunctions;
use statefun_core::{Envelope, MessageId, Registry, TypeName};
use tracing::debug;

use crate::metrics::Metrics;
use crate::transport::SqsTransport;

pub struct HttpIngress {
    registry: Arc<Registry>,
    module: Module,
    remote: Option<Arc<statefun_remote::HttpFunctions>>,
    transport: SqsTransport,
    max_body_bytes: usize,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for HttpIngress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpIngress").finish_non_exhaustive()
    }
}

impl Exposure for HttpIngress {
    fn knows(&self, t: &TypeName) -> bool {
        self.remote.serves(t) || self.registry.contains(t)
    }
    fn exposed(&self, t: &TypeName) -> bool {
        self.module.http_exposes(t)
    }
}

fn respond(status: u16, body: serde_json::Value) -> ApiGatewayV2httpResponse {
    let mut response = ApiGatewayV2httpResponse::default();
    response.status_code = i64::from(status);
    response.headers.insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    response.body = Some(Body::Text(body.to_string()));
    response
}

fn rejection(r: Rejected) -> ApiGatewayV2httpResponse {
    respond(r.status, json!({ "error": r.message }))
}

impl HttpIngress {
    pub fn new(
        registry: Arc<Registry>,
        module: Module,
        remote: Option<Arc<statefun_remote::HttpFunctions>>,
        transport: SqsTransport,
        max_body_bytes: usize,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        HttpIngress {
            registry,
            module,
            remote,
            transport,
            max_body_bytes,
            clock,
            metrics,
        }
    }

    pub async fn handle(&self, event: ApiGatewayV2httpRequest) -> ApiGatewayV2httpResponse {
        let response = self.accept(&event).await.unwrap_or_else(rejection);
        println!(
            "{}",
            self.metrics
                .take()
                .emf("http-ingress", 1, self.clock.now_ms())
        );
        response
    }

    async fn accept(
        &self,
        event: &ApiGatewayV2httpRequest,
    ) -> Result<ApiGatewayV2httpResponse, Rejected> {
        let method = &event.request_context.http.method;
        if method != http::Method::POST && method != http::Method::PUT {
            return Err(Rejected {
                status: 405,
                message: "use POST (or PUT) to send a message".into(),
            });
        }
        let param = |name: &str| {
            event
                .path_parameters
                .get(name)
                .map(String::as_str)
                .unwrap_or_default()
        };
        let header = |name: &str| event.headers.get(name).and_then(|v| v.to_str().ok());
        let body = body_of(event)?;
        if body.len() > self.max_body_bytes {
            return Err(contract::too_large(self.max_body_bytes));
        }
        let request = contract::Request {
            namespace: param("namespace"),
            function_type: param("type"),
            id: param("id"),
            content_type: header("content-type"),
            idempotency_key: header("idempotency-key"),
            body: &body,
        };
        let accepted = contract::accept(&request, self)?;
        let key = accepted
            .idempotency_key
            .or_else(|| event.request_context.request_id.clone())
            .unwrap_or_else(|| format!("{}-{}", self.clock.now_ms(), std::process::id()));
        let envelope = Envelope {
            id: MessageId::Keyed(format!("http:{key}")),
            target: accepted.target,
            caller: None,
            value: accepted.value,
        };
        if let Some(e) = self
            .transport
            .send_to_inbox(std::slice::from_ref(&envelope))
            .await
            .remove(0)
        {
            return Err(Rejected {
                status: 503,
                message: format!("the message could not be enqueued: {e}"),
            });
        }
        debug!(address = %envelope.target, message_id = %envelope.id, "accepted");
        Ok(respond(
            202,
            json!({ "message_id": envelope.id.to_string() }),
        ))
    }
}

/// The request's body, decoded from base64 when API Gateway encoded it.
fn body_of(event: &ApiGatewayV2httpRequest) -> Result<Vec<u8>, Rejected> {
    let raw = event.body.as_deref().unwrap_or_default();
    if !event.is_base64_encoded {
        return Ok(raw.as_bytes().to_vec());
    }
    base64::engine::general_purpose::STANDARD
        .decode(raw)
        .map_err(|e| Rejected {
            status: 400,
            message: format!("the body is not valid base64: {e}"),
        })
}

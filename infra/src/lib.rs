//! What deploys and emulates a statefun-lambda deployment, outside the Lambda library:
//! - [`local`]: create the resources a deployment uses (as `template.yaml` declares
//!   them), play Lambda's SQS event source against them, enqueue a message, read an
//!   instance's state — the `provision`, `poll`, `send` and `state` commands;
//! - [`ops`]: the dead-letter queue (list, replay) and egress queues (tail) — the
//!   `dlq` and `egress` commands;
//! - [`verify`]: read every record and queued body with this build's readers — the
//!   `verify` command;
//! - [`emulators`]: start and stop moto server and DynamoDB Local for tests and local
//!   runs.
//!
//! `infra/samconfig.toml` holds the SAM CLI defaults for `template.yaml` (which stays at
//! the repository's root, where SAM looks for it).

pub mod emulators;
pub mod local;
pub mod ops;
pub mod verify;

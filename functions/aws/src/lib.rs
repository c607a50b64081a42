//! The AWS path of statefun-lambda: the DynamoDB state store, the SQS/SNS transport, the
//! dispatcher, timer forwarder and SQS ingress handlers, and the local emulation
//! (provision, poll, send, state) that drives the same handlers against an emulator.

pub mod app;
pub mod config;
pub mod dead_letter;
pub mod dispatcher;
pub mod dynamo;
pub mod forwarder;
pub mod ingress;
pub mod keys;
pub mod local;
pub mod metrics;
pub mod transport;

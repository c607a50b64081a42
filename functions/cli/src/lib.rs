//! Shared pieces of the `statefun-lambda` binaries.

pub mod lambda;

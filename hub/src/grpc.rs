//! The gRPC surface of the hub (tonic). Only this module names `keyfleet_proto` types.
//!
//! - `convert`: every proto ⇄ domain conversion, including encoding a rendered revision once.
//! - `sync`: the `SecretSync` stream service over `crate::fleet`.
//! - `server`: TLS material and the tonic listener.
pub mod convert;
pub mod server;
pub mod sync;

//! The gRPC surface of the hub (tonic). Only this module names `keyfleet_proto` types.
//!
//! - `convert`: every proto ⇄ domain conversion, including encoding a rendered revision once.
pub mod convert;
pub mod sync;

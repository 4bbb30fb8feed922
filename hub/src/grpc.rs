//! The gRPC surface of the hub (tonic). Only this module names `keyfleet_proto` types.
//!
//! - `admin`: the `Admin` service behind the CLI, with its own authentication (admin token or
//!   client certificate).
//! - `admission`: the rate limit of new streams and enrollments, whose refusals say when to retry.
//! - `client_ca`: the admin client CA: verifies client certificates and names their holder.
//! - `convert`: every proto ⇄ domain conversion, including encoding a rendered revision once.
//! - `sync`: the `SecretSync` stream service over `crate::fleet`.
//! - `server`: TLS material and the tonic listener.
//! - `enroll`: the Enrollment service (token → credential).
pub mod admin;
pub mod admission;
pub mod client_ca;
pub mod convert;
pub mod enroll;
pub mod server;
pub mod sync;

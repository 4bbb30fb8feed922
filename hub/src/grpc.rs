//! The gRPC surface of the hub (tonic): the transport over the sync engine. Only this module
//! (and the CLI, an Admin API client) names tonic or `keyfleet_proto::v1` types; it checks wire
//! input, calls the engine's use cases and converts their domain views.
//!
//! - `admin`: the `Admin` service behind the CLI (`admin/auth.rs`: admin token or client
//!   certificate), over [`crate::sync::admin`].
//! - `admission`: the rate limit of new streams and enrollments, whose refusals say when to retry.
//! - `client_ca`: the admin client CA: verifies client certificates and names their holder.
//! - `convert`: proto ⇄ domain conversions, including the engine's revision encoder
//!   ([`convert::ProtoEncoder`]).
//! - `status`: every engine, fleet and store error → gRPC `Status` mapping.
//! - `sync`: the `SecretSync` stream service over `crate::fleet`.
//! - `server`: TLS material and the tonic listener.
//! - `enroll`: the Enrollment service (token → credential).
pub mod admin;
pub(crate) mod admission;
pub mod client_ca;
pub mod convert;
pub mod enroll;
pub mod server;
pub(crate) mod status;
pub mod sync;

/// The hub's three services on one router: Sync, Enrollment and (authenticated) Admin.
pub fn routes(
    sync: sync::SyncService,
    enroll: enroll::EnrollService,
    admin: admin::AuthenticatedAdmin,
) -> tonic::service::Routes {
    tonic::service::Routes::new(sync.into_server())
        .add_service(enroll.into_server())
        .add_service(admin)
}

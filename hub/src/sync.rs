//! The sync engine, below the transport: what every cluster must hold and how it gets there.
//!
//! # Layout
//! - [`plan`]: pure planning: inventory × FleetSecrets × status × rollout progress → the
//!   revision each cluster must hold, removals, one rollout decision per FleetSecret.
//! - [`engine`]: the task that carries plans out (change-log tail, Key Vault leadership and
//!   pollers, rendering and encoding revisions, handing desired sets to the fleet).
//! - [`control`]: what the transport may ask of the running engine ([`control::HubControl`]) and
//!   its errors.
//! - [`admin`]: the Admin use cases (inventory, specs, status views, rollouts, pins, sync-now)
//!   over the store and the engine, returning domain views.
//!
//! **Boundary:** nothing here names tonic or generated proto types (only
//! `keyfleet_proto::{digest, limits}`), and nothing imports `crate::grpc`; the wire encoding of a
//! revision comes in through [`RevisionEncoder`] (`scripts/checks/hub-boundaries.sh`).

pub mod admin;
pub mod control;
pub mod engine;
pub(crate) mod plan;

pub use engine::RevisionEncoder;

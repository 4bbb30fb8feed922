#![warn(missing_docs)]

//! keyfleet's test doubles, used by the hub's, agent's and loadtest's tests and by the loadtest's
//! fleet simulation. Each double is proven faithful by official clients in `scripts/test`.
//!
//! # Layout
//! - [`agent`]: a protocol-level test agent (Sync and Enrollment over gRPC, applies nothing), one
//!   stream stepped by a test or a task that follows hub replicas across failovers.
//! - [`keyvault`]: an Azure Key Vault (secrets data plane) + Entra emulator. From the top:
//!   `keyvault.rs` (emulator, handle) → `http.rs` (serve, dispatch) → `http/{vault, entra, admin}.rs`
//!   → `http/secrets.rs` (operations, paging) → `shared.rs` → `config.rs`, `store.rs` (the vault's
//!   rules), `auth.rs`, `faults.rs`.
//! - [`kube`]: a fake Kubernetes API server (Secrets, Namespaces, server-side apply, watch), many
//!   clusters per process. From the top: `kube.rs` (`FakeKube`, `ClusterHandle`) → `server.rs`,
//!   `memory.rs` (transports) → `api.rs` (routing, auth, verbs) → `watch.rs` → `query.rs`,
//!   `cluster.rs` → `store.rs` + `store/` (state and write rules) → `model.rs`, `status.rs`.
//! - [`helm`]: the real Helm binary (installed by `scripts/tools/helm`) rendering
//!   `deploy/charts/*`, and the strict typed parse the chart tests use.
//! - [`tls`]: a generated test CA and server certificates (rcgen, ring), rustls configs.

pub mod agent;
pub mod helm;
pub mod keyvault;
pub mod kube;
pub mod tls;

//! keyfleet's fleet simulation: the quickstart and the benchmarks.
//!
//! # Layout
//! - [`config`]: the command line.
//! - [`scenario`]: the simulation start to end (the quickstart); `rotation` runs one rotation
//!   (drift, a replica kill), `checks` the restart, status truth and baseline after them.
//! - [`admin`]: the Admin API client (what `keyfleet` CLI commands call).
//! - [`fleet`]: the simulated clusters, either kind: [`agents`] (real agent code, in process,
//!   each with a fake Kubernetes API) or [`protocol`] (protocol-level agents, in memory).
//! - [`tracker`]: what each cluster actually holds (its fake Kubernetes API, or its protocol
//!   agent's state).
//! - [`stats`]: latency percentiles for the reports.
//! - [`procfs`]: RSS and CPU of the hub processes from `/proc`.
//! - [`hub_process`]: one hub process (`keyfleet serve`); its ready file and metrics.
//! - [`replicas`]: the hub replicas of a run, killed and restarted, their figures summed.
//! - [`leakcheck`]: scans captured logs for secret values (raw and encoded).
//! - [`baseline`]: the per-cluster polling model (ESO's) against the same emulator.
//! - [`report`]: the report (table + JSON); [`figures`] its arithmetic and targets.

#![warn(missing_docs)]

pub mod admin;
pub mod agents;
pub mod baseline;
mod checks;
pub mod config;
pub mod drift;
pub mod figures;
pub mod fleet;
pub mod hub_process;
pub mod leakcheck;
pub mod procfs;
pub mod protocol;
pub mod replicas;
pub mod report;
mod rotation;
pub mod scenario;
pub mod stats;
pub mod tracker;

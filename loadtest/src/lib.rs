//! keyfleet's fleet simulation: the quickstart and the benchmarks.
//!
//! # Layout
//! - [`config`]: the command line.
//! - [`scenario`]: the simulation start to end (the quickstart).
//! - [`admin`]: the Admin API client (what `keyfleet` CLI commands call).
//! - [`agents`]: the simulated clusters' agents (real agent code, in process).
//! - [`tracker`]: what each cluster actually holds, from its fake Kubernetes API.
//! - [`stats`]: latency percentiles for the reports.
//! - [`procfs`]: RSS and CPU of the hub process from `/proc`.
//! - [`hub_process`]: the real hub binary as a child process; its ready file and metrics.
//! - [`leakcheck`]: scans captured logs for secret values (raw and encoded).
//! - [`baseline`]: the per-cluster polling model (ESO's) against the same emulator.
//! - [`report`]: the report (table + JSON).

#![warn(missing_docs)]

pub mod admin;
pub mod agents;
pub mod baseline;
pub mod config;
pub mod drift;
pub mod hub_process;
pub mod leakcheck;
pub mod procfs;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod tracker;

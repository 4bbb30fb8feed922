//! keyfleet's fleet simulation: the quickstart and the benchmarks.
//!
//! # Layout
//! - [`stats`]: latency percentiles for the reports.
//! - [`procfs`]: RSS and CPU of the hub process from `/proc`.
//! - [`hub_process`]: the real hub binary as a child process; its ready file and metrics.
//! - [`leakcheck`]: scans captured logs for secret values (raw and encoded).
//! - [`baseline`]: the per-cluster polling model (ESO's) against the same emulator.
//! - [`report`]: the report (table + JSON).

pub mod baseline;
pub mod hub_process;
pub mod leakcheck;
pub mod procfs;
pub mod report;
pub mod stats;

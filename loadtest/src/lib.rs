//! keyfleet's fleet simulation: the quickstart and the benchmarks.
//!
//! # Layout
//! - [`stats`]: latency percentiles for the reports.

pub mod stats;

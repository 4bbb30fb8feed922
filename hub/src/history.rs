//! The history writer: turns [`FleetEvent`]s into append-only history, cheaply. Every replica
//! runs one for the streams it serves (next to the status writer, which keeps only the newest row
//! per cluster and FleetSecret).
//!
//! - Acks, refusals and removals become `sync_history` rows; drift the agents repaired becomes
//!   `drift_events` rows. Both are buffered and written with ONE statement per table per flush:
//!   at most `flush_interval` after the first buffered entry, or as soon as `flush_entries` are
//!   buffered (10,000 acks cost 2 statements at the default 5,000).
//! - A failed write (the store is down) keeps the buffer and retries on the next flush; the
//!   buffer is bounded (`max_buffered`): past it the oldest entries are dropped, counted in
//!   `keyfleet_hub_history_dropped_total` and logged, so an outage never grows memory without
//!   bound. History is for people; status truth never depends on it.
//! - Nothing here holds a value: names, revisions and the agents' refusal texts only.

use std::collections::VecDeque;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::fleet::{DriftKind, FleetEvent};
use crate::store::{DriftEntry, HistoryEntry, HistoryOutcome, Store};

/// Settings of the history writer.
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    /// This replica's id (recorded with each row).
    pub replica: String,
    /// Longest wait between the first buffered entry and its write.
    pub flush_interval: Duration,
    /// Flush at once when this many entries are buffered.
    pub flush_entries: usize,
    /// Most entries held while the store does not answer.
    pub max_buffered: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            replica: String::new(),
            flush_interval: Duration::from_secs(1),
            flush_entries: 5_000,
            max_buffered: 200_000,
        }
    }
}

/// Counters of the history writer.
#[derive(Debug, Clone, Default)]
pub struct HistoryMetrics {
    written: Counter,
    dropped: Counter,
    failed_flushes: Counter,
}

impl HistoryMetrics {
    /// Registers the counters under the hub's prefix.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "history_written",
            "History and drift rows written to the store",
            self.written.clone(),
        );
        registry.register(
            "history_dropped",
            "History and drift rows dropped because the store did not answer for too long",
            self.dropped.clone(),
        );
        registry.register(
            "history_failed_flushes",
            "History flushes that failed (retried with the next flush)",
            self.failed_flushes.clone(),
        );
    }
}

/// Buffers fleet events as history and writes them in batches (see the module documentation).
pub struct HistoryWriter {
    store: Store,
    config: HistoryConfig,
    metrics: HistoryMetrics,
    history: VecDeque<HistoryEntry>,
    drift: VecDeque<DriftEntry>,
    flush_at: Option<Instant>,
}

impl HistoryWriter {
    /// A writer appending to `store`.
    pub fn new(store: Store, config: HistoryConfig) -> Self {
        Self {
            store,
            config,
            metrics: HistoryMetrics::default(),
            history: VecDeque::new(),
            drift: VecDeque::new(),
            flush_at: None,
        }
    }

    /// Its counters (register them on the ops registry).
    pub fn metrics(&self) -> HistoryMetrics {
        self.metrics.clone()
    }

    /// Runs until `events` closes or `shutdown` resolves, then writes what is buffered.
    pub async fn run_until(
        mut self,
        mut events: mpsc::Receiver<FleetEvent>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let flush_at = self.flush_at;
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => {
                        self.handle(event);
                        if self.buffered() >= self.config.flush_entries {
                            self.flush().await;
                        }
                    }
                    None => break,
                },
                () = sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => self.flush().await,
                () = &mut shutdown => {
                    while let Ok(event) = events.try_recv() {
                        self.handle(event);
                    }
                    break;
                }
            }
        }
        self.flush().await;
    }

    fn buffered(&self) -> usize {
        self.history.len() + self.drift.len()
    }

    /// Buffers what `event` adds to the history.
    pub fn handle(&mut self, event: FleetEvent) {
        match event {
            FleetEvent::Acked {
                cluster,
                key,
                revision,
                at,
                ..
            } => self.history.push_back(HistoryEntry {
                cluster,
                fleet_secret: key,
                revision,
                outcome: HistoryOutcome::Applied,
                error: None,
                at,
            }),
            FleetEvent::Nacked {
                cluster,
                key,
                revision,
                code,
                message,
                at,
                ..
            } => self.history.push_back(HistoryEntry {
                cluster,
                fleet_secret: key,
                revision,
                outcome: HistoryOutcome::Refused,
                error: Some(format!("{}: {message}", code.as_str())),
                at,
            }),
            FleetEvent::Removed { cluster, key, at } => self.history.push_back(HistoryEntry {
                cluster,
                fleet_secret: key,
                revision: 0,
                outcome: HistoryOutcome::Removed,
                error: None,
                at,
            }),
            FleetEvent::Drift {
                cluster,
                key,
                namespace,
                kind,
                revision,
                failure,
                at,
            } => self.drift.push_back(DriftEntry {
                cluster,
                fleet_secret: key,
                namespace,
                kind: match kind {
                    DriftKind::Modified => "modified",
                    DriftKind::Deleted => "deleted",
                    DriftKind::Unspecified => "unspecified",
                },
                revision,
                failure,
                at,
            }),
            FleetEvent::Connected { .. } | FleetEvent::Disconnected { .. } => return,
        }
        self.bound();
        if self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + self.config.flush_interval);
        }
    }

    /// Drops the oldest entries past `max_buffered` (counted and logged).
    fn bound(&mut self) {
        let mut dropped = 0u64;
        while self.buffered() > self.config.max_buffered {
            if self.history.len() >= self.drift.len() {
                self.history.pop_front();
            } else {
                self.drift.pop_front();
            }
            dropped += 1;
        }
        if dropped > 0 {
            self.metrics.dropped.inc_by(dropped);
            tracing::warn!(
                dropped,
                max_buffered = self.config.max_buffered,
                "history buffer full while the store does not answer: oldest entries dropped"
            );
        }
    }

    /// Writes everything buffered (one statement per table); keeps it on failure.
    async fn flush(&mut self) {
        self.flush_at = None;
        if self.buffered() == 0 {
            return;
        }
        let history: Vec<HistoryEntry> = self.history.iter().cloned().collect();
        let drift: Vec<DriftEntry> = self.drift.iter().cloned().collect();
        match self
            .store
            .record_history(&self.config.replica, &history, &drift)
            .await
        {
            Ok(()) => {
                self.metrics.written.inc_by((history.len() + drift.len()) as u64);
                self.history.clear();
                self.drift.clear();
            }
            Err(error) => {
                self.metrics.failed_flushes.inc();
                tracing::warn!(error = %error, buffered = self.buffered(), "cannot write history yet; retrying");
                self.flush_at = Some(Instant::now() + self.config.flush_interval);
            }
        }
    }
}

#[cfg(test)]
mod tests;

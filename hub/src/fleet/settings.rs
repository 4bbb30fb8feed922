//! The fan-out's settings and its metrics (`keyfleet_hub_fleet_*`).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Fan-out settings.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Unacknowledged updates per stream at most (1-16, announced in Welcome).
    pub max_inflight: u32,
    /// A stream whose oldest update is unacknowledged (or whose writes block) this long is closed.
    pub stall_timeout: Duration,
    /// First retry delay after a retryable NACK.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Hub heartbeat interval (jittered ±10 % per beat).
    pub heartbeat_interval: Duration,
    /// Drain spreads reconnects uniformly over this window.
    pub drain_window: Duration,
    /// Capacity of the event channel (a full channel slows the emitting stream, never fan-out).
    pub event_capacity: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            max_inflight: 4,
            stall_timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(30),
            drain_window: Duration::from_secs(60),
            event_capacity: 65_536,
        }
    }
}

/// Fan-out metrics (`keyfleet_hub_fleet_*`).
#[derive(Debug, Clone, Default)]
pub struct FleetMetrics {
    /// Connected agent streams.
    pub connected: Gauge,
    /// Bytes of messages sent to agents (encoded protobuf).
    pub bytes_sent: Counter,
    /// Updates sent.
    pub updates: Counter,
    /// Items acknowledged as applied or removed.
    pub acks: Counter,
    /// Items refused.
    pub nacks: Counter,
    /// Streams closed because acks or writes stalled.
    pub stalled_closes: Counter,
    /// Streams refused by the admission limit.
    pub admission_rejects: Counter,
    /// Events dropped because the event channel was full at disconnect.
    pub events_dropped: Counter,
    /// Streams accepted whose Hello matched the desired set (Welcome{in_sync}: nothing to send).
    pub in_sync_hellos: Counter,
}

impl FleetMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        let fleet = registry.sub_registry_with_prefix("fleet");
        fleet.register(
            "connected_agents",
            "Connected agent streams",
            self.connected.clone(),
        );
        fleet.register(
            "sent_bytes",
            "Encoded bytes sent to agents",
            self.bytes_sent.clone(),
        );
        fleet.register("updates", "Updates sent to agents", self.updates.clone());
        fleet.register("acks", "Items acknowledged by agents", self.acks.clone());
        fleet.register("nacks", "Items refused by agents", self.nacks.clone());
        fleet.register(
            "stalled_closes",
            "Streams closed because acks or writes stalled",
            self.stalled_closes.clone(),
        );
        fleet.register(
            "admission_rejects",
            "New streams refused by the admission limit",
            self.admission_rejects.clone(),
        );
        fleet.register(
            "in_sync_hellos",
            "Streams accepted already in sync (Welcome{in_sync}, no update)",
            self.in_sync_hellos.clone(),
        );
        fleet.register(
            "events_dropped",
            "Fleet events dropped on a full channel",
            self.events_dropped.clone(),
        );
    }
}

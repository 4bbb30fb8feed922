//! The hub's use of glibc's allocator with thousands of agent connections (measured in
//! docs/performance.md, "Memory per agent").
//!
//! - **Arenas:** glibc gives each thread that contends for the allocator its own arena, up to
//!   eight per core, and memory freed into one arena serves only that arena. The hub's threads
//!   (a tokio worker per core, the blocking pool, the store's) spread each connection's short-lived
//!   allocations over all of them; [`limit_arenas`] caps them at one per core.
//! - **Trim:** every TLS and HTTP/2 handshake frees tens of KiB soon after it allocated them, in
//!   between the buffers its connection keeps. glibc returns free memory to the kernel only from
//!   the top of a heap, so after a burst of connections (a hub start, a reconnecting fleet) the
//!   freed pages stay resident, and the next connections' buffers reuse them dirty.
//!   [`trim_after_churn`] calls `malloc_trim(0)`, which also releases the whole free pages inside
//!   the heaps, every [`TRIM_PERIOD`] (100 ms) while agents connect or leave, never taking more
//!   than a tenth of a thread: a steady fleet costs nothing. A trim holds each arena's lock in
//!   turn: 0.2-3.4 ms at 1,500 agents, median 1.9 ms and at most 59 ms while 10,000 connected.
//!   A draining hub stops trimming.
//!
//! Elsewhere (musl, other systems) both are no-ops.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::fleet::Fleet;

/// How often the stream churn is looked at, and so the shortest time between two trims. Short:
/// while agents connect, the pages their handshakes freed are returned before the next
/// connections' long-lived buffers are carved out of them (a buffer on returned pages is
/// resident only where it is written).
pub(super) const TRIM_PERIOD: Duration = Duration::from_millis(100);
/// After a trim, the next waits at least this many times as long as it took, so trimming never
/// takes more than a tenth of one thread, whatever the heap's size.
const TRIM_COST_FACTOR: u32 = 10;

/// Caps glibc's arenas at one per available core (at least 2). Call before the runtime spawns
/// its threads' first allocations matter, that is first thing in `serve`.
pub(super) fn limit_arenas() {
    let cores = std::thread::available_parallelism().map_or(2, usize::from).max(2);
    let arenas = i32::try_from(cores).unwrap_or(i32::MAX);
    if glibc::set_arena_max(arenas) {
        tracing::debug!(arenas, "glibc arenas capped");
    }
}

/// Until `stop`: after each [`TRIM_PERIOD`] in which streams attached or detached, returns the
/// allocator's free pages to the kernel (on a blocking thread: it locks each arena in turn).
/// Returns how many times it trimmed.
pub(super) async fn trim_after_churn(fleet: Fleet, stop: CancellationToken) -> u64 {
    let mut trims = 0;
    if !glibc::AVAILABLE {
        return trims;
    }
    let mut trimmed_at = fleet.stream_churn();
    let mut wait = TRIM_PERIOD;
    loop {
        tokio::select! {
            () = stop.cancelled() => return trims,
            () = tokio::time::sleep(wait) => {}
        }
        wait = TRIM_PERIOD;
        if fleet.is_draining() {
            // Shutting down: every stream is about to free its memory, the process with it (at
            // 10,000 agents a trim then took 466 ms, holding each arena's lock in turn).
            return trims;
        }
        let churn = fleet.stream_churn();
        if churn == trimmed_at {
            continue;
        }
        trimmed_at = churn;
        trims += 1;
        let started = Instant::now();
        match tokio::task::spawn_blocking(glibc::trim).await {
            Ok(released) => {
                let elapsed = started.elapsed();
                wait = wait.max(elapsed * TRIM_COST_FACTOR);
                tracing::debug!(released, ?elapsed, "returned free heap pages to the kernel");
            }
            Err(error) => tracing::warn!(error = %error, "malloc_trim task failed"),
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod glibc {
    //! The two glibc calls (the hub's other `unsafe` code is its allocator, `crate::memory`).

    pub(super) const AVAILABLE: bool = true;

    /// `mallopt(M_ARENA_MAX, arenas)`; true when glibc took it.
    pub(super) fn set_arena_max(arenas: i32) -> bool {
        // SAFETY: mallopt only reads its two integer arguments; M_ARENA_MAX takes any positive
        // count and is safe to set while other threads allocate.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) == 1 }
    }

    /// `malloc_trim(0)`; true when memory was returned.
    pub(super) fn trim() -> bool {
        // SAFETY: malloc_trim takes a padding size and touches only free chunks, under each
        // arena's lock; it has no precondition on the caller.
        unsafe { libc::malloc_trim(0) == 1 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    pub(super) const AVAILABLE: bool = false;

    pub(super) fn set_arena_max(_arenas: i32) -> bool {
        false
    }

    pub(super) fn trim() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::FleetConfig;

    #[tokio::test(start_paused = true)]
    async fn a_draining_fleet_is_not_trimmed() {
        let (fleet, _events) = Fleet::new(FleetConfig::default());
        let session = fleet.attach(crate::domain::ClusterId(uuid::Uuid::from_u128(1)));
        fleet.drain();
        drop(session);
        let trims = tokio::time::timeout(
            Duration::from_secs(5),
            trim_after_churn(fleet, CancellationToken::new()),
        )
        .await
        .expect("returns once the fleet drains");
        assert_eq!(trims, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn trims_once_per_period_of_churn_and_never_without() {
        let (fleet, _events) = Fleet::new(FleetConfig::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(trim_after_churn(fleet.clone(), stop.clone()));
        tokio::time::sleep(TRIM_PERIOD * 3).await;
        let session = fleet.attach(crate::domain::ClusterId(uuid::Uuid::from_u128(1)));
        drop(session);
        tokio::time::sleep(TRIM_PERIOD * 3).await;
        stop.cancel();
        let trims = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops when told")
            .expect("task");
        let expected = u64::from(glibc::AVAILABLE);
        assert_eq!(
            trims, expected,
            "one trim for one period with churn, none without"
        );
    }
}

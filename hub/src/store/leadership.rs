//! The guard a leader holds ([`super::Store::try_lead`]). On Postgres it owns the task that keeps
//! the session advisory lock's connection; on SQLite (one node) it is always held.
//! **Invariant:** dropping the guard steps down.

use tokio::sync::{oneshot, watch};

/// Held leadership (see [`super::Store::try_lead`]). Dropping it steps down.
pub struct Leadership {
    inner: Option<PgLeadership>,
}

/// What a Postgres leader holds: the way to stop the lock holder, its loss signal and its task.
struct PgLeadership {
    stop: Option<oneshot::Sender<()>>,
    lost: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    #[cfg_attr(not(test), allow(dead_code))]
    backend_pid: i32,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("postgres", &self.inner.is_some())
            .finish()
    }
}

impl Leadership {
    /// A single node leads alone: nothing to hold, never lost.
    pub(super) fn single_node() -> Self {
        Self { inner: None }
    }

    /// A Postgres lock held by `task` on the connection of `backend_pid`: dropping `stop` releases
    /// it, `lost` turns true when that connection dies.
    pub(super) fn postgres(
        stop: oneshot::Sender<()>,
        lost: watch::Receiver<bool>,
        task: tokio::task::JoinHandle<()>,
        backend_pid: i32,
    ) -> Self {
        Self {
            inner: Some(PgLeadership {
                stop: Some(stop),
                lost,
                task,
                backend_pid,
            }),
        }
    }

    /// Resolves when leadership is lost (the lock's connection died). Never on SQLite.
    pub async fn lost(&self) {
        match &self.inner {
            Some(pg) => {
                let mut lost = pg.lost.clone();
                // An error means the holder task ended, which only happens once lost or stopped.
                let _ = lost.wait_for(|lost| *lost).await;
            }
            None => std::future::pending().await,
        }
    }

    /// Steps down and waits until the lock is released (dropping also releases it, in the
    /// background).
    pub async fn step_down(mut self) {
        if let Some(mut pg) = self.inner.take() {
            drop(pg.stop.take());
            let _ = (&mut pg.task).await;
        }
    }

    /// The Postgres backend process holding the lock (tests kill it to simulate a lost
    /// connection).
    #[cfg(test)]
    pub(super) fn backend_pid(&self) -> Option<i32> {
        self.inner.as_ref().map(|pg| pg.backend_pid)
    }
}

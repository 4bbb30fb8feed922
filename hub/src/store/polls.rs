//! Requests to the Key Vault leader and the last poll of each SecretStore (`poll_requests`,
//! `store_polls`): how every replica gives the same answer to `sync-now`, to an Event Grid
//! notification and to "how did the last poll go", although only the leader polls. Names,
//! counts and error texts only, never a value.

use chrono::{DateTime, Utc};

use super::convert::now;
use super::{Backend, Store, StoreError, postgres, sqlite};

/// What a replica asks of the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PollAsk {
    /// Poll this store now (`None`: every store).
    Sweep(Option<String>),
    /// Fetch `secret` of the vault named `vault` now (an Event Grid notification).
    Fetch {
        /// The vault's name (first DNS label of its URL).
        vault: String,
        /// The Key Vault secret.
        secret: String,
    },
}

/// An open request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollRequest {
    /// Its id.
    pub id: i64,
    /// What is asked.
    pub ask: PollAsk,
    /// Replica that asked.
    pub requested_by: String,
    /// When.
    pub requested_at: DateTime<Utc>,
}

/// What the leader did for a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PollResult {
    /// Stores polled.
    pub stores: Vec<String>,
    /// New Key Vault versions found.
    pub new_versions: u32,
    /// Why it failed (names only), None when it succeeded.
    pub error: Option<String>,
}

/// The last poll of a SecretStore, as the leader published it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorePoll {
    /// The SecretStore.
    pub store: String,
    /// Replica that polled.
    pub replica: String,
    /// When it polled last.
    pub polled_at: DateTime<Utc>,
    /// Whether that poll succeeded.
    pub healthy: bool,
    /// Why it failed; empty when healthy.
    pub last_error: String,
    /// Last poll that succeeded.
    pub last_success_at: Option<DateTime<Utc>>,
}

impl PollAsk {
    /// (store, vault, secret) as stored.
    pub(super) fn columns(&self) -> (&str, &str, &str) {
        match self {
            Self::Sweep(store) => (store.as_deref().unwrap_or(""), "", ""),
            Self::Fetch { vault, secret } => ("", vault, secret),
        }
    }

    /// The ask of stored columns.
    pub(super) fn from_columns(store: String, vault: String, secret: String) -> Self {
        if secret.is_empty() {
            Self::Sweep((!store.is_empty()).then_some(store))
        } else {
            Self::Fetch { vault, secret }
        }
    }
}

/// Stores as one column: names joined by commas (store names are DNS labels).
pub(super) fn join_stores(stores: &[String]) -> String {
    stores.join(",")
}

pub(super) fn split_stores(text: Option<String>) -> Vec<String> {
    text.unwrap_or_default()
        .split(',')
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Store {
    /// Asks the leader for `ask` and wakes the replicas; the request's id.
    pub async fn request_poll(&self, ask: &PollAsk, replica: &str) -> Result<i64, StoreError> {
        let at = now();
        match &self.backend {
            Backend::Postgres(pool) => postgres::polls::request_poll(pool, ask, replica, at).await,
            Backend::Sqlite(pool) => sqlite::polls::request_poll(pool, ask, replica, at).await,
        }
    }

    /// Requests not done yet, oldest first, at most `limit`.
    pub async fn open_poll_requests(&self, limit: u32) -> Result<Vec<PollRequest>, StoreError> {
        match &self.backend {
            Backend::Postgres(pool) => postgres::polls::open_poll_requests(pool, i64::from(limit)).await,
            Backend::Sqlite(pool) => sqlite::polls::open_poll_requests(pool, i64::from(limit)).await,
        }
    }

    /// Marks request `id` done by `replica` with `result`.
    pub async fn complete_poll_request(
        &self,
        id: i64,
        replica: &str,
        result: &PollResult,
    ) -> Result<(), StoreError> {
        let at = now();
        match &self.backend {
            Backend::Postgres(pool) => {
                postgres::polls::complete_poll_request(pool, id, replica, result, at).await
            }
            Backend::Sqlite(pool) => {
                sqlite::polls::complete_poll_request(pool, id, replica, result, at).await
            }
        }
    }

    /// The result of request `id`, None while it is not done (or when it does not exist).
    pub async fn poll_result(&self, id: i64) -> Result<Option<PollResult>, StoreError> {
        match &self.backend {
            Backend::Postgres(pool) => postgres::polls::poll_result(pool, id).await,
            Backend::Sqlite(pool) => sqlite::polls::poll_result(pool, id).await,
        }
    }

    /// Deletes requests made before `older_than` (done or not); how many.
    pub async fn prune_poll_requests(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Postgres(pool) => postgres::polls::prune_poll_requests(pool, older_than).await,
            Backend::Sqlite(pool) => sqlite::polls::prune_poll_requests(pool, older_than).await,
        }
    }

    /// Publishes the last poll of each store in `polls` (upsert by store).
    pub async fn record_store_polls(&self, polls: &[StorePoll]) -> Result<(), StoreError> {
        for poll in polls {
            match &self.backend {
                Backend::Postgres(pool) => postgres::polls::record_store_poll(pool, poll).await,
                Backend::Sqlite(pool) => sqlite::polls::record_store_poll(pool, poll).await,
            }?;
        }
        Ok(())
    }

    /// The last poll of every store, by store name.
    pub async fn store_polls(&self) -> Result<Vec<StorePoll>, StoreError> {
        match &self.backend {
            Backend::Postgres(pool) => postgres::polls::store_polls(pool).await,
            Backend::Sqlite(pool) => sqlite::polls::store_polls(pool).await,
        }
    }
}

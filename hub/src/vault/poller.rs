//! Change detection for one store: one paged `list_secrets` sweep per `pollInterval`, then a value
//! GET only for watched secrets whose current version changed.
//!
//! Key Vault's `updated` has one-second resolution, so a version created in the same second as the
//! one last fetched would leave the listing unchanged. Every fetch is therefore *unsettled* until a
//! confirmation with `list_versions` (a list call, no value) has run at least [`SETTLE`] after it
//! on this process's monotonic clock: by then Key Vault's second of the fetch is over, and any
//! version created in it is listed. A GET follows only when a version newer than the fetched one
//! appears. The hub's wall clock is never compared with Key Vault's timestamps, so a skewed hub
//! clock cannot make it miss a version.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{FetchedSecret, SecretInfo, SecretSource, VaultError, VaultMetrics};

/// How long after a fetch a confirmation settles it (timestamp resolution plus margin), measured
/// on the monotonic clock.
const SETTLE: Duration = Duration::from_secs(2);

/// What a store's FleetSecrets reference: remote keys and `find` filters.
#[derive(Debug, Clone, Default)]
pub struct WatchSet {
    /// Remote keys (Key Vault secret names; matched case-insensitively).
    pub keys: BTreeSet<String>,
    /// `dataFrom.find` filters.
    pub finds: Vec<FindFilter>,
}

/// An ESO `find`: a name regex and tags that must all match. Disabled secrets never match.
#[derive(Debug, Clone, Default)]
pub struct FindFilter {
    /// Name regex (any name when `None`).
    pub name: Option<regex::Regex>,
    /// Tags the secret must carry with these values.
    pub tags: BTreeMap<String, String>,
}

impl FindFilter {
    /// Whether a listed secret matches.
    pub fn matches(&self, info: &SecretInfo) -> bool {
        info.enabled
            && self.name.as_ref().is_none_or(|re| re.is_match(&info.name))
            && self.tags.iter().all(|(k, v)| info.tags.get(k) == Some(v))
    }
}

/// A new current version of a watched secret.
#[derive(Debug, Clone)]
pub struct VaultChange {
    /// SecretStore name.
    pub store: String,
    /// The watched key (as referenced) or, for `find` matches, the name Key Vault lists.
    pub key: String,
    /// The version with its value.
    pub secret: FetchedSecret,
}

#[derive(Debug, Clone)]
struct Seen {
    /// `updated` of the listing when last checked.
    updated: Option<DateTime<Utc>>,
    /// Version last fetched (or found disabled).
    version: Option<String>,
    /// `created` of that version.
    created: Option<DateTime<Utc>>,
    /// When the version was fetched (monotonic).
    fetched_at: tokio::time::Instant,
    /// Whether a confirmation ran at least [`SETTLE`] after the fetch.
    settled: bool,
    /// Version ids already accounted for (the fetched one and those listed by a confirmation).
    known: BTreeSet<String>,
}

impl Seen {
    fn unsettled(&self) -> bool {
        !self.settled
    }
}

/// How a sweep ended, published after each one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepOutcome {
    /// The highest sweep request this sweep served (see [`PollerHandle::sweep`]).
    pub ticket: u64,
    /// Changes sent.
    pub changes: usize,
    /// Why it failed (names the vault, secret and operation; never a value).
    pub error: Option<String>,
    /// When it ended (wall clock, for people and for `store_polls`).
    pub finished: chrono::DateTime<chrono::Utc>,
}

/// Asks a running [`Poller`] to sweep now or to fetch one secret now, and tells when a sweep ended.
#[derive(Debug, Clone)]
pub struct PollerHandle {
    store: String,
    sync: Arc<Notify>,
    targeted: mpsc::Sender<String>,
    requested: Arc<AtomicU64>,
    done: watch::Receiver<Option<SweepOutcome>>,
}

/// Pending targeted fetches per poller (more are coalesced into the next sweep).
const TARGETED_QUEUE: usize = 256;

impl PollerHandle {
    /// The store this poller serves.
    pub fn store(&self) -> &str {
        &self.store
    }

    /// Sweep now (coalesced with a sweep already asked for).
    pub fn sync_now(&self) {
        self.requested.fetch_add(1, Ordering::SeqCst);
        self.sync.notify_one();
    }

    /// Fetch `name` now if it is watched (an Event Grid notification). When the queue is full,
    /// falls back to a sweep.
    pub fn fetch_now(&self, name: &str) {
        if self.targeted.try_send(name.to_owned()).is_err() {
            self.sync.notify_one();
        }
    }

    /// Asks for a sweep and resolves when a sweep that started after this call has ended, with
    /// the number of changes it sent or why it failed.
    pub fn sweep(&self) -> impl std::future::Future<Output = Result<usize, String>> + Send + 'static {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.sync.notify_one();
        let mut done = self.done.clone();
        async move {
            let outcome = done
                .wait_for(|outcome| outcome.as_ref().is_some_and(|outcome| outcome.ticket >= ticket))
                .await
                .map_err(|_| "the poller stopped".to_owned())?
                .clone();
            match outcome {
                Some(SweepOutcome {
                    error: None, changes, ..
                }) => Ok(changes),
                Some(SweepOutcome {
                    error: Some(error), ..
                }) => Err(error),
                None => Err("the poller stopped".to_owned()),
            }
        }
    }

    /// How the last sweep ended (`None` before the first one).
    pub fn last_outcome(&self) -> Option<SweepOutcome> {
        self.done.borrow().clone()
    }

    /// Resolves when the first sweep has ended (successfully or not).
    pub fn first_sweep(&self) -> impl std::future::Future<Output = Option<SweepOutcome>> + Send + 'static {
        let mut done = self.done.clone();
        async move {
            done.wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|outcome| outcome.clone())
        }
    }
}

/// The change detector of one store.
pub struct Poller {
    store: String,
    source: Arc<dyn SecretSource>,
    watch: watch::Receiver<WatchSet>,
    changes: mpsc::Sender<VaultChange>,
    interval: Duration,
    metrics: VaultMetrics,
    sync: Arc<Notify>,
    pub(super) targeted: mpsc::Receiver<String>,
    requested: Arc<AtomicU64>,
    done: watch::Sender<Option<SweepOutcome>>,
    seen: HashMap<String, Seen>,
    /// First retry delay after a failed sweep (doubles, full jitter, capped at the interval).
    pub retry_base: Duration,
}

impl Poller {
    /// A poller for `store` reading `source` every `interval`.
    pub fn new(
        store: &str,
        source: Arc<dyn SecretSource>,
        interval: Duration,
        watch: watch::Receiver<WatchSet>,
        changes: mpsc::Sender<VaultChange>,
        metrics: VaultMetrics,
    ) -> (Self, PollerHandle) {
        let sync = Arc::new(Notify::new());
        let (targeted_tx, targeted) = mpsc::channel(TARGETED_QUEUE);
        let requested = Arc::new(AtomicU64::new(0));
        let (done, done_rx) = watch::channel(None);
        let poller = Self {
            store: store.to_owned(),
            source,
            watch,
            changes,
            interval,
            metrics,
            sync: Arc::clone(&sync),
            targeted,
            requested: Arc::clone(&requested),
            done,
            seen: HashMap::new(),
            retry_base: Duration::from_secs(1),
        };
        (
            poller,
            PollerHandle {
                store: store.to_owned(),
                sync,
                targeted: targeted_tx,
                requested,
                done: done_rx,
            },
        )
    }

    /// Sweeps now, then every interval, on `sync_now` and when the watch set changes, until
    /// `shutdown` or until the change receiver is dropped. A failed sweep is retried with
    /// backoff; nothing is emitted or forgotten meanwhile.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut delay = Duration::ZERO;
        let mut failures: u32 = 0;
        let mut watch_open = true;
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = &mut sleep => {}
                () = self.sync.notified() => {}
                changed = self.watch.changed(), if watch_open => watch_open = changed.is_ok(),
                Some(name) = self.targeted.recv() => {
                    // A targeted fetch does not move the sweep schedule.
                    match self.fetch_one(&name).await {
                        Ok(_) => continue,
                        Err(PollError::Closed) => break,
                        Err(PollError::Vault(error)) => {
                            tracing::warn!(store = %self.store, secret = %name, %error, "targeted fetch failed; the next sweep retries");
                            continue;
                        }
                    }
                }
            }
            let ticket = self.requested.load(Ordering::SeqCst);
            let result = self.poll_once().await;
            self.done.send_replace(Some(SweepOutcome {
                ticket,
                changes: *result.as_ref().unwrap_or(&0),
                error: result.as_ref().err().map(ToString::to_string),
                finished: chrono::Utc::now(),
            }));
            match result {
                Ok(_) => {
                    failures = 0;
                    delay = self.interval;
                }
                Err(PollError::Closed) => break,
                Err(PollError::Vault(error)) => {
                    failures = failures.saturating_add(1);
                    delay = self.backoff(failures);
                    tracing::warn!(store = %self.store, %error, failures, retry_in = ?delay, "key vault sweep failed; keeping the last good values");
                }
            }
            sleep.as_mut().reset(tokio::time::Instant::now() + delay);
        }
        tracing::debug!(store = %self.store, "vault poller stopped");
    }

    fn backoff(&self, failures: u32) -> Duration {
        let cap = self
            .retry_base
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
            .min(self.interval)
            .max(Duration::from_millis(1));
        let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::random_range(millis / 2..=millis))
    }

    /// One sweep: list, compare, fetch what changed, emit. Returns the number of changes sent.
    #[tracing::instrument(name = "vault.poll", skip_all, fields(store = %self.store, changes = tracing::field::Empty))]
    pub async fn poll_once(&mut self) -> Result<usize, PollError> {
        let result = self.sweep().await;
        if let Ok(changes) = &result {
            tracing::Span::current().record("changes", changes);
        }
        self.metrics
            .poll(&self.store, !matches!(result, Err(PollError::Vault(_))));
        result
    }

    async fn sweep(&mut self) -> Result<usize, PollError> {
        let listing = self.source.list_secrets().await?;
        let watch = self.watch.borrow_and_update().clone();
        let by_name: HashMap<String, &SecretInfo> = listing
            .iter()
            .map(|info| (info.name.to_ascii_lowercase(), info))
            .collect();
        let mut targets: BTreeMap<String, String> = BTreeMap::new();
        for key in &watch.keys {
            let lower = key.to_ascii_lowercase();
            if by_name.contains_key(&lower) {
                targets.insert(lower, key.clone());
            } else {
                tracing::debug!(store = %self.store, secret = %key, "watched secret is not in the vault");
            }
        }
        for info in &listing {
            if watch.finds.iter().any(|find| find.matches(info)) {
                targets
                    .entry(info.name.to_ascii_lowercase())
                    .or_insert_with(|| info.name.clone());
            }
        }
        let mut sent = 0;
        for (lower, key) in targets {
            let Some(info) = by_name.get(&lower) else { continue };
            let confirming = tokio::time::Instant::now();
            let (fetch, listed, confirmed) = match self.seen.get(&lower) {
                None => (true, Vec::new(), false),
                Some(seen) if seen.updated != info.updated => (true, Vec::new(), false),
                Some(seen) if seen.unsettled() => {
                    let (newer, listed) = self.confirm(&info.name, seen).await?;
                    (newer, listed, true)
                }
                Some(_) => (false, Vec::new(), false),
            };
            if let Some(seen) = self.seen.get_mut(&lower) {
                if confirmed && confirming >= seen.fetched_at + SETTLE {
                    seen.settled = true;
                }
                seen.known.extend(listed.iter().cloned());
            }
            if !fetch {
                continue;
            }
            match self.source.get(&info.name, None).await {
                Ok(secret) => {
                    let previous = self.seen.get(&lower).and_then(|s| s.version.clone());
                    let mut known: BTreeSet<String> = listed.into_iter().collect();
                    known.insert(secret.version.clone());
                    self.seen.insert(
                        lower,
                        Seen {
                            updated: info.updated,
                            version: Some(secret.version.clone()),
                            created: secret.created,
                            fetched_at: tokio::time::Instant::now(),
                            settled: false,
                            known,
                        },
                    );
                    if previous.as_deref() == Some(secret.version.as_str()) {
                        continue;
                    }
                    tracing::info!(store = %self.store, secret = %key, version = %secret.version, "new secret version");
                    self.metrics.change(&self.store);
                    let change = VaultChange {
                        store: self.store.clone(),
                        key,
                        secret,
                    };
                    self.changes.send(change).await.map_err(|_| PollError::Closed)?;
                    sent += 1;
                }
                Err(VaultError::Disabled { .. }) => {
                    tracing::warn!(store = %self.store, secret = %key, "current version is disabled; keeping the last good value");
                    let seen = self.seen.entry(lower).or_insert(Seen {
                        updated: None,
                        version: None,
                        created: None,
                        fetched_at: tokio::time::Instant::now(),
                        settled: false,
                        known: BTreeSet::new(),
                    });
                    seen.updated = info.updated;
                }
                Err(error) if error.is_transient() => return Err(PollError::Vault(error)),
                Err(error) => {
                    tracing::warn!(store = %self.store, secret = %key, %error, "cannot read a watched secret");
                }
            }
        }
        Ok(sent)
    }

    /// Fetches one secret now if it is watched (by key, or already matched by a `find`), and
    /// emits it when its current version is new. Returns whether a change was sent.
    pub async fn fetch_one(&mut self, name: &str) -> Result<bool, PollError> {
        let lower = name.to_ascii_lowercase();
        let key = {
            let watch = self.watch.borrow();
            watch.keys.iter().find(|k| k.eq_ignore_ascii_case(name)).cloned()
        };
        let Some(key) = key.or_else(|| self.seen.contains_key(&lower).then(|| name.to_owned())) else {
            tracing::debug!(store = %self.store, secret = %name, "notification for a secret nobody watches");
            return Ok(false);
        };
        match self.source.get(name, None).await {
            Ok(secret) => {
                let previous = self.seen.get(&lower).and_then(|s| s.version.clone());
                let mut known = self.seen.get(&lower).map(|s| s.known.clone()).unwrap_or_default();
                known.insert(secret.version.clone());
                self.seen.insert(
                    lower,
                    Seen {
                        updated: secret.updated,
                        version: Some(secret.version.clone()),
                        created: secret.created,
                        fetched_at: tokio::time::Instant::now(),
                        settled: false,
                        known,
                    },
                );
                if previous.as_deref() == Some(secret.version.as_str()) {
                    return Ok(false);
                }
                tracing::info!(store = %self.store, secret = %key, version = %secret.version, "new secret version (notified)");
                self.metrics.change(&self.store);
                let change = VaultChange {
                    store: self.store.clone(),
                    key,
                    secret,
                };
                self.changes.send(change).await.map_err(|_| PollError::Closed)?;
                Ok(true)
            }
            Err(VaultError::Disabled { .. } | VaultError::NotFound { .. }) => Ok(false),
            Err(error) => Err(PollError::Vault(error)),
        }
    }

    /// Confirms an unsettled fetch with `list_versions`: whether a version at least as new as the
    /// fetched one and not yet accounted for is listed, and the ids listed that are that recent.
    async fn confirm(&self, name: &str, seen: &Seen) -> Result<(bool, Vec<String>), PollError> {
        let versions = self.source.list_versions(name).await?;
        // A disabled version cannot be read: it is not a reason to GET (the last value stays).
        let recent: Vec<String> = versions
            .into_iter()
            .filter(|v| v.enabled)
            .filter(|v| {
                v.created
                    .zip(seen.created)
                    .is_none_or(|(created, fetched)| created.timestamp() >= fetched.timestamp())
            })
            .map(|v| v.version)
            .collect();
        let newer = recent.iter().any(|id| !seen.known.contains(id));
        Ok((newer, recent))
    }
}

/// Why a sweep stopped.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// Key Vault failed (the sweep is retried with backoff).
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The change receiver is gone.
    #[error("the change receiver is closed")]
    Closed,
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::super::{ErrorContext, Operation, VersionInfo};
    use super::*;
    use crate::domain::SecretValue;

    /// (id, value, created second, enabled).
    type FakeVersion = (String, String, i64, bool);

    /// An in-memory vault with one-second timestamps, like Key Vault's.
    #[derive(Default)]
    struct Fake {
        /// name → versions, oldest first.
        secrets: Mutex<BTreeMap<String, Vec<FakeVersion>>>,
        down: Mutex<bool>,
        calls: Mutex<BTreeMap<&'static str, u32>>,
    }

    impl Fake {
        fn put(&self, name: &str, id: &str, value: &str, second: i64) {
            let mut secrets = self.secrets.lock().expect("lock");
            secrets
                .entry(name.to_owned())
                .or_default()
                .push((id.to_owned(), value.to_owned(), second, true));
        }

        fn count(&self, op: &'static str) -> u32 {
            self.calls.lock().expect("lock").get(op).copied().unwrap_or(0)
        }

        fn call(&self, op: &'static str) -> Result<(), VaultError> {
            *self.calls.lock().expect("lock").entry(op).or_default() += 1;
            if *self.down.lock().expect("lock") {
                return Err(VaultError::Unavailable {
                    context: context(),
                    cause: "down".to_owned(),
                });
            }
            Ok(())
        }
    }

    fn context() -> ErrorContext {
        ErrorContext {
            store: "s".to_owned(),
            vault: "https://v/".to_owned(),
            operation: Operation::Get,
            secret: None,
            auth_type: "ServicePrincipal",
        }
    }

    fn at(second: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(second, 0)
    }

    #[async_trait::async_trait]
    impl SecretSource for Fake {
        async fn get(&self, name: &str, _version: Option<&str>) -> Result<FetchedSecret, VaultError> {
            self.call("get")?;
            let secrets = self.secrets.lock().expect("lock");
            let (id, value, second, enabled) = secrets
                .get(name)
                .and_then(|v| v.last())
                .cloned()
                .ok_or(VaultError::NotFound { context: context() })?;
            if !enabled {
                return Err(VaultError::Disabled { context: context() });
            }
            Ok(FetchedSecret {
                version: id,
                value: SecretValue::new(value.into_bytes()),
                enabled,
                content_type: None,
                tags: BTreeMap::new(),
                created: at(second),
                updated: at(second),
                expires: None,
                not_before: None,
            })
        }

        async fn list_secrets(&self) -> Result<Vec<SecretInfo>, VaultError> {
            self.call("list")?;
            let secrets = self.secrets.lock().expect("lock");
            Ok(secrets
                .iter()
                .filter_map(|(name, versions)| {
                    versions.last().map(|(_, _, second, enabled)| SecretInfo {
                        name: name.clone(),
                        tags: BTreeMap::new(),
                        enabled: *enabled,
                        updated: at(*second),
                    })
                })
                .collect())
        }

        async fn list_versions(&self, name: &str) -> Result<Vec<VersionInfo>, VaultError> {
            self.call("list_versions")?;
            let secrets = self.secrets.lock().expect("lock");
            Ok(secrets
                .get(name)
                .map(|versions| {
                    versions
                        .iter()
                        .map(|(id, _, second, enabled)| VersionInfo {
                            version: id.clone(),
                            enabled: *enabled,
                            created: at(*second),
                            updated: at(*second),
                        })
                        .collect()
                })
                .unwrap_or_default())
        }
    }

    fn poller(fake: &Arc<Fake>, keys: &[&str]) -> (Poller, mpsc::Receiver<VaultChange>) {
        let set = WatchSet {
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            finds: Vec::new(),
        };
        let (_tx, rx) = watch::channel(set);
        let (changes, received) = mpsc::channel(16);
        let source: Arc<dyn SecretSource> = Arc::clone(fake) as Arc<dyn SecretSource>;
        let (poller, _handle) = Poller::new(
            "s",
            source,
            Duration::from_secs(30),
            rx,
            changes,
            VaultMetrics::default(),
        );
        (poller, received)
    }

    #[tokio::test]
    async fn a_version_created_in_the_same_second_is_found_with_a_list_call_not_a_get() {
        let fake = Arc::new(Fake::default());
        let now = Utc::now().timestamp();
        fake.put("db", "v1", "one", now);
        let (mut poller, mut rx) = poller(&fake, &["db"]);
        assert_eq!(poller.poll_once().await.expect("sweep"), 1);
        assert_eq!(rx.try_recv().expect("v1").secret.version, "v1");

        // Same second: the listing's `updated` does not move.
        fake.put("db", "v2", "two", now);
        assert_eq!(poller.poll_once().await.expect("sweep"), 1);
        assert_eq!(rx.try_recv().expect("v2").secret.version, "v2");
        assert_eq!((fake.count("get"), fake.count("list_versions")), (2, 1));

        // Unchanged and still recent: confirmed by a list call, no GET.
        assert_eq!(poller.poll_once().await.expect("sweep"), 0);
        assert_eq!((fake.count("get"), fake.count("list_versions")), (2, 2));
    }

    /// Key Vault's clock 10 s behind the hub's (or the hub's ahead): a second version created in
    /// the same second as the fetched one is still found, because settling never compares the two
    /// clocks.
    #[tokio::test(start_paused = true)]
    async fn a_skewed_hub_clock_does_not_hide_a_version_created_in_the_same_second() {
        let fake = Arc::new(Fake::default());
        let vault_now = Utc::now().timestamp() - 10;
        fake.put("db", "v1", "one", vault_now);
        let (mut poller, mut rx) = poller(&fake, &["db"]);
        assert_eq!(poller.poll_once().await.expect("sweep"), 1);
        assert_eq!(rx.try_recv().expect("v1").secret.version, "v1");
        fake.put("db", "v2", "two", vault_now);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(poller.poll_once().await.expect("sweep"), 1, "v2 is found");
        assert_eq!(rx.try_recv().expect("v2").secret.version, "v2");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(poller.poll_once().await.expect("sweep"), 0);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(poller.poll_once().await.expect("sweep"), 0);
        assert_eq!(
            (fake.count("get"), fake.count("list_versions")),
            (2, 2),
            "settled after one confirmation per version"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn settled_secrets_cost_list_calls_only() {
        let fake = Arc::new(Fake::default());
        fake.put("a", "v1", "one", 1_000);
        fake.put("b", "v1", "one", 1_000);
        let (mut poller, mut rx) = poller(&fake, &["a", "B"]);
        assert_eq!(poller.poll_once().await.expect("sweep"), 2);
        let keys: BTreeSet<String> = [rx.try_recv().expect("a").key, rx.try_recv().expect("b").key].into();
        assert_eq!(
            keys,
            BTreeSet::from(["a".to_owned(), "B".to_owned()]),
            "keys as referenced"
        );
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(30)).await;
            assert_eq!(poller.poll_once().await.expect("sweep"), 0);
        }
        assert_eq!(
            (fake.count("list"), fake.count("get"), fake.count("list_versions")),
            (4, 2, 2),
            "one confirmation per fetched version, then list calls only"
        );
    }

    #[tokio::test]
    async fn a_disabled_current_version_keeps_the_last_value_and_is_not_refetched() {
        let fake = Arc::new(Fake::default());
        fake.put("a", "v1", "one", 1_000);
        let (mut poller, mut rx) = poller(&fake, &["a"]);
        poller.poll_once().await.expect("sweep");
        rx.try_recv().expect("v1");
        fake.secrets.lock().expect("lock").get_mut("a").expect("a").push((
            "v2".into(),
            "two".into(),
            1_010,
            false,
        ));
        assert_eq!(poller.poll_once().await.expect("sweep"), 0);
        assert_eq!(poller.poll_once().await.expect("sweep"), 0);
        assert_eq!(fake.count("get"), 2, "the disabled version is tried once");
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_retried_with_backoff_and_emits_nothing() {
        let fake = Arc::new(Fake::default());
        fake.put("a", "v1", "one", 1_000);
        *fake.down.lock().expect("lock") = true;
        let (poller, mut rx) = poller(&fake, &["a"]);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(poller.run(shutdown.clone()));
        // 1 s, 2 s, 4 s, 8 s (halved by jitter at worst) after the first attempt: 5+ attempts in 40 s.
        tokio::time::sleep(Duration::from_secs(40)).await;
        let attempts = fake.count("list");
        assert!((5..=12).contains(&attempts), "{attempts} attempts");
        assert!(rx.try_recv().is_err());
        *fake.down.lock().expect("lock") = false;
        let change = rx.recv().await.expect("recovers and emits");
        assert_eq!(change.secret.version, "v1");
        shutdown.cancel();
        task.await.expect("stops");
    }

    #[tokio::test]
    async fn sweep_waits_for_a_sweep_that_started_after_the_request() {
        let fake = Arc::new(Fake::default());
        fake.put("a", "v1", "one", 1_000);
        let (_tx, watch_rx) = watch::channel(WatchSet {
            keys: ["a".to_owned()].into_iter().collect(),
            finds: Vec::new(),
        });
        let (changes, mut received) = mpsc::channel(16);
        let source: Arc<dyn SecretSource> = Arc::clone(&fake) as Arc<dyn SecretSource>;
        let (poller, handle) = Poller::new(
            "s",
            source,
            Duration::from_secs(3600),
            watch_rx,
            changes,
            VaultMetrics::default(),
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(poller.run(shutdown.clone()));
        let first = handle.first_sweep().await.expect("first sweep");
        assert_eq!((first.changes, first.error), (1, None));
        assert_eq!(received.recv().await.expect("v1").secret.version, "v1");
        // A rotation: the next requested sweep reports it, long before the hour-long interval.
        fake.put("a", "v2", "two", 2_000);
        assert_eq!(handle.sweep().await, Ok(1));
        assert_eq!(received.recv().await.expect("v2").secret.version, "v2");
        assert_eq!(handle.sweep().await, Ok(0), "nothing new");
        *fake.down.lock().expect("lock") = true;
        let error = handle.sweep().await.expect_err("vault down");
        assert!(error.contains("https://v/"), "{error}");
        assert!(!error.contains("two"), "{error}");
        shutdown.cancel();
        task.await.expect("stops");
    }
}

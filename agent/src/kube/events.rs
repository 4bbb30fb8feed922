//! Kubernetes Events (`events.k8s.io/v1`) on the Secrets the agent writes: `Applied`,
//! `DriftRepaired` and `ApplyFailed` (the NACK), reporting controller `keyfleet.io/agent`,
//! reporting instance the pod name.
//!
//! # Never in the way, never a flood
//! - The writer only queues an occurrence (`try_send` on a bounded queue); a poster task makes the
//!   API calls. A full queue, a refused or failed call is logged and counted
//!   (`keyfleet_agent_events_failed`) and never fails or delays the write it reports.
//! - Occurrences are aggregated per (namespace, Secret, reason, note): the first one creates an
//!   Event; later ones within the cooldown only count (`events_aggregated`), and at most one API
//!   call per cooldown updates the Event's `series` (count, lastObservedTime). A flapping Secret
//!   costs one call per cooldown, not one per flap.
//! - The Event name is derived from (namespace, Secret, reason, note, instance), so a restarted
//!   agent (a crash loop keeps its pod name) finds its Event (create answers 409) and continues
//!   its series instead of creating another.
//! - The note names the fleet secret, revision, digest prefix or the NACK's message: never a value.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{KubeCluster, describe};
use crate::text::truncate_utf8;

/// `reportingController` of every Event the agent posts.
pub const REPORTING_CONTROLLER: &str = "keyfleet.io/agent";
/// Longest note (the API's limit is 1 kB).
const MAX_NOTE: usize = 1024;
/// Occurrences queued for the poster; more are dropped (and counted).
const QUEUE: usize = 256;
/// An aggregate nobody touched for this long is forgotten (its Event has expired on a real API
/// server, whose default event TTL is one hour).
const RETAIN: Duration = Duration::from_secs(3600);

/// Why an Event is posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Reason {
    /// A revision was written to the Secret.
    Applied,
    /// The Secret was edited or deleted and the agent wrote it back.
    DriftRepaired,
    /// The item was refused (NACK).
    ApplyFailed,
}

impl Reason {
    /// The Event's `reason`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "Applied",
            Self::DriftRepaired => "DriftRepaired",
            Self::ApplyFailed => "ApplyFailed",
        }
    }

    /// The Event's `action` (what the agent did or tried).
    fn action(self) -> &'static str {
        match self {
            Self::Applied | Self::ApplyFailed => "Apply",
            Self::DriftRepaired => "Repair",
        }
    }

    /// The Event's `type`.
    fn event_type(self) -> &'static str {
        match self {
            Self::Applied | Self::DriftRepaired => "Normal",
            Self::ApplyFailed => "Warning",
        }
    }
}

/// One thing that happened to one Secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Occurrence {
    /// The Secret's namespace (where the Event goes).
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// Why.
    pub reason: Reason,
    /// What, for people (no values).
    pub note: String,
}

impl Occurrence {
    pub(crate) fn new(namespace: &str, secret: &str, reason: Reason, note: String) -> Self {
        let mut note = note;
        truncate_utf8(&mut note, MAX_NOTE);
        Self {
            namespace: namespace.to_owned(),
            secret: secret.to_owned(),
            reason,
            note,
        }
    }

    /// The Event's name: `<secret>.<16 hex>`, the hex a digest of everything that identifies the
    /// aggregate, so the same occurrence from a restarted agent names the same Event.
    pub(crate) fn event_name(&self, instance: &str) -> String {
        let mut hasher = Sha256::new();
        for part in [
            self.namespace.as_str(),
            self.secret.as_str(),
            self.reason.as_str(),
            self.note.as_str(),
            instance,
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        let digest = hasher.finalize();
        // Secret names are DNS-1123 subdomains of at most 253 characters; keep the name within.
        let mut prefix = self.secret.clone();
        truncate_utf8(&mut prefix, 253 - 17);
        let prefix = prefix.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
        format!("{prefix}.{}", hex::encode(&digest[..8]))
    }

    /// The new Event (`events.k8s.io/v1`) for this occurrence.
    pub(crate) fn event(&self, instance: &str, now: Timestamp) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(self.event_name(instance)),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
            reporting_instance: Some(instance.to_owned()),
            action: Some(self.reason.action().to_owned()),
            reason: Some(self.reason.as_str().to_owned()),
            note: Some(self.note.clone()),
            type_: Some(self.reason.event_type().to_owned()),
            regarding: Some(ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Secret".to_owned()),
                namespace: Some(self.namespace.clone()),
                name: Some(self.secret.clone()),
                ..ObjectReference::default()
            }),
            ..Event::default()
        }
    }
}

/// The series update of an existing Event.
fn series_patch(count: u32, now: Timestamp) -> serde_json::Value {
    let series = EventSeries {
        count: i32::try_from(count).unwrap_or(i32::MAX),
        last_observed_time: MicroTime(now),
    };
    serde_json::json!({ "series": series })
}

/// What the poster must write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Post {
    /// Create the Event (first occurrence in this process).
    Create(Occurrence),
    /// Set the Event's series count (every occurrence so far).
    Series(Occurrence, u32),
}

struct Aggregate {
    count: u32,
    posted: Instant,
    pending: bool,
    seen: Instant,
}

/// The aggregation (pure: time comes in as an argument): the first occurrence is posted, the
/// next ones at most once per cooldown.
pub(crate) struct Aggregator {
    cooldown: Duration,
    aggregates: BTreeMap<Occurrence, Aggregate>,
}

impl Aggregator {
    pub(crate) fn new(cooldown: Duration) -> Self {
        Self {
            cooldown,
            aggregates: BTreeMap::new(),
        }
    }

    /// Records `occurrence` at `now`; returns the write to make now, if any.
    pub(crate) fn observe(&mut self, occurrence: Occurrence, now: Instant) -> Option<Post> {
        match self.aggregates.get_mut(&occurrence) {
            None => {
                self.aggregates.insert(
                    occurrence.clone(),
                    Aggregate {
                        count: 1,
                        posted: now,
                        pending: false,
                        seen: now,
                    },
                );
                Some(Post::Create(occurrence))
            }
            Some(aggregate) => {
                aggregate.count = aggregate.count.saturating_add(1);
                aggregate.seen = now;
                if now.duration_since(aggregate.posted) >= self.cooldown {
                    aggregate.posted = now;
                    aggregate.pending = false;
                    Some(Post::Series(occurrence, aggregate.count))
                } else {
                    aggregate.pending = true;
                    None
                }
            }
        }
    }

    /// The series updates whose cooldown has passed at `now`; forgets idle aggregates.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Post> {
        let cooldown = self.cooldown;
        self.aggregates
            .retain(|_, aggregate| aggregate.pending || now.duration_since(aggregate.seen) < RETAIN);
        self.aggregates
            .iter_mut()
            .filter(|(_, aggregate)| aggregate.pending && now.duration_since(aggregate.posted) >= cooldown)
            .map(|(occurrence, aggregate)| {
                aggregate.pending = false;
                aggregate.posted = now;
                Post::Series(occurrence.clone(), aggregate.count)
            })
            .collect()
    }

    /// The API holds `count` occurrences for `occurrence` (a restarted agent continued a series).
    pub(crate) fn set_count(&mut self, occurrence: &Occurrence, count: u32) {
        if let Some(aggregate) = self.aggregates.get_mut(occurrence) {
            aggregate.count = count;
        }
    }
}

/// The writer's end: queue an occurrence, never wait.
pub(crate) struct EventQueue {
    sender: mpsc::Sender<Occurrence>,
    receiver: tokio::sync::Mutex<Option<mpsc::Receiver<Occurrence>>>,
}

impl EventQueue {
    pub(crate) fn new() -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        Self {
            sender,
            receiver: tokio::sync::Mutex::new(Some(receiver)),
        }
    }
}

impl KubeCluster {
    /// Queues an Event (see the module docs): never fails, never waits.
    pub(super) fn record_event(&self, occurrence: Occurrence) {
        if self.event_queue.sender.try_send(occurrence).is_err() {
            self.metrics.events_failed.inc();
            tracing::debug!("event dropped: queue full");
        }
    }

    /// Posts the queued Events until the agent stops (one task per agent).
    pub async fn run_events(&self) {
        let Some(mut receiver) = self.event_queue.receiver.lock().await.take() else {
            // Already running elsewhere: nothing to do here.
            return std::future::pending().await;
        };
        let cooldown = self.settings.event_cooldown;
        let mut aggregator = Aggregator::new(cooldown);
        let mut tick = tokio::time::interval(cooldown.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let posts = tokio::select! {
                occurrence = receiver.recv() => match occurrence {
                    Some(occurrence) => {
                        let post = aggregator.observe(occurrence, Instant::now());
                        if post.is_none() {
                            self.metrics.events_aggregated.inc();
                        }
                        post.into_iter().collect()
                    }
                    None => return std::future::pending().await,
                },
                _ = tick.tick() => aggregator.due(Instant::now()),
            };
            for post in posts {
                self.post(post, &mut aggregator).await;
            }
        }
    }

    fn events(&self, namespace: &str) -> Api<Event> {
        Api::namespaced(self.client.clone(), namespace)
    }

    async fn post(&self, post: Post, aggregator: &mut Aggregator) {
        let instance = self.settings.instance.as_str();
        let result = match &post {
            Post::Create(occurrence) => {
                let event = occurrence.event(instance, Timestamp::now());
                match self
                    .events(&occurrence.namespace)
                    .create(&PostParams::default(), &event)
                    .await
                {
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        // A previous run of this instance posted it: continue its series.
                        self.continue_series(occurrence, aggregator).await
                    }
                    other => other.map(drop),
                }
            }
            Post::Series(occurrence, count) => {
                match self.patch_series(occurrence, *count).await {
                    Err(kube::Error::Api(status)) if status.code == 404 => {
                        // Expired or deleted: start again.
                        aggregator.set_count(occurrence, 1);
                        self.events(&occurrence.namespace)
                            .create(
                                &PostParams::default(),
                                &occurrence.event(instance, Timestamp::now()),
                            )
                            .await
                            .map(drop)
                    }
                    other => other,
                }
            }
        };
        let (Post::Create(occurrence) | Post::Series(occurrence, _)) = &post;
        match result {
            Ok(()) => {
                self.metrics.events_posted.inc();
            }
            Err(error) => {
                self.metrics.events_failed.inc();
                tracing::warn!(
                    namespace = %occurrence.namespace,
                    secret = %occurrence.secret,
                    reason = occurrence.reason.as_str(),
                    error = %describe(&error),
                    "cannot post a kubernetes event (the write it reports is unaffected)"
                );
            }
        }
    }

    async fn patch_series(&self, occurrence: &Occurrence, count: u32) -> Result<(), kube::Error> {
        let name = occurrence.event_name(&self.settings.instance);
        self.events(&occurrence.namespace)
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(series_patch(count, Timestamp::now())),
            )
            .await
            .map(drop)
    }

    /// The Event exists already (posted before a restart): one more occurrence in its series.
    async fn continue_series(
        &self,
        occurrence: &Occurrence,
        aggregator: &mut Aggregator,
    ) -> Result<(), kube::Error> {
        let name = occurrence.event_name(&self.settings.instance);
        let existing = self.events(&occurrence.namespace).get(&name).await?;
        let before = existing
            .series
            .map_or(1, |series| u32::try_from(series.count).unwrap_or(1));
        let count = before.saturating_add(1);
        aggregator.set_count(occurrence, count);
        self.patch_series(occurrence, count).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occurrence(reason: Reason) -> Occurrence {
        Occurrence::new(
            "team-a",
            "db-creds",
            reason,
            "applied revision 3 of fleet secret db".into(),
        )
    }

    #[test]
    fn events_name_the_secret_and_the_agent() {
        let now = Timestamp::from_second(1_800_000_000).expect("valid time");
        let event = occurrence(Reason::ApplyFailed).event("agent-pod-1", now);
        let regarding = event.regarding.expect("regarding");
        assert_eq!(regarding.kind.as_deref(), Some("Secret"));
        assert_eq!(regarding.api_version.as_deref(), Some("v1"));
        assert_eq!(regarding.namespace.as_deref(), Some("team-a"));
        assert_eq!(regarding.name.as_deref(), Some("db-creds"));
        assert_eq!(event.reason.as_deref(), Some("ApplyFailed"));
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.action.as_deref(), Some("Apply"));
        assert_eq!(event.reporting_controller.as_deref(), Some(REPORTING_CONTROLLER));
        assert_eq!(event.reporting_instance.as_deref(), Some("agent-pod-1"));
        assert_eq!(event.metadata.namespace.as_deref(), Some("team-a"));
        let name = event.metadata.name.expect("name");
        assert!(name.starts_with("db-creds."), "{name}");
        assert_eq!(name.len(), "db-creds.".len() + 16);
        assert_eq!(
            occurrence(Reason::Applied).event("x", now).type_.as_deref(),
            Some("Normal")
        );
        assert_eq!(
            occurrence(Reason::DriftRepaired)
                .event("x", now)
                .action
                .as_deref(),
            Some("Repair")
        );
    }

    #[test]
    fn event_names_are_stable_per_aggregate_and_fit() {
        let a = occurrence(Reason::Applied);
        assert_eq!(
            a.event_name("pod"),
            a.event_name("pod"),
            "a restart names the same Event"
        );
        assert_ne!(
            a.event_name("pod"),
            occurrence(Reason::DriftRepaired).event_name("pod")
        );
        assert_ne!(a.event_name("pod"), a.event_name("other-pod"));
        let long = Occurrence::new("ns", &"a".repeat(253), Reason::Applied, String::new());
        assert!(long.event_name("pod").len() <= 253);
        let note = Occurrence::new("ns", "s", Reason::ApplyFailed, "é".repeat(2000));
        assert!(note.note.len() <= MAX_NOTE);
    }

    #[test]
    fn a_flapping_secret_costs_one_call_per_cooldown() {
        let cooldown = Duration::from_secs(60);
        let mut aggregator = Aggregator::new(cooldown);
        let start = Instant::now();
        let first = aggregator.observe(occurrence(Reason::DriftRepaired), start);
        assert_eq!(first, Some(Post::Create(occurrence(Reason::DriftRepaired))));
        // 99 more flaps within the cooldown: no call.
        for i in 1..100 {
            let at = start + Duration::from_millis(i * 100);
            assert_eq!(aggregator.observe(occurrence(Reason::DriftRepaired), at), None);
        }
        assert!(aggregator.due(start + Duration::from_secs(30)).is_empty());
        // Once the cooldown has passed, one series update carries all 100.
        let due = aggregator.due(start + cooldown);
        assert_eq!(due, vec![Post::Series(occurrence(Reason::DriftRepaired), 100)]);
        assert!(
            aggregator.due(start + cooldown * 2).is_empty(),
            "nothing new, nothing posted"
        );
        // Another reason on the same Secret is its own Event.
        assert_eq!(
            aggregator.observe(occurrence(Reason::Applied), start + cooldown),
            Some(Post::Create(occurrence(Reason::Applied)))
        );
        // After the cooldown an occurrence updates the series at once.
        assert_eq!(
            aggregator.observe(occurrence(Reason::DriftRepaired), start + cooldown * 3),
            Some(Post::Series(occurrence(Reason::DriftRepaired), 101))
        );
        // Idle aggregates are forgotten.
        aggregator.due(start + cooldown * 3 + RETAIN);
        assert_eq!(
            aggregator.observe(occurrence(Reason::DriftRepaired), start + cooldown * 3 + RETAIN),
            Some(Post::Create(occurrence(Reason::DriftRepaired)))
        );
    }

    #[test]
    fn the_series_patch_is_what_the_api_expects() {
        let now = Timestamp::from_second(1_800_000_000).expect("valid time");
        let patch = series_patch(4, now);
        assert_eq!(patch["series"]["count"], 4);
        assert!(
            patch["series"]["lastObservedTime"]
                .as_str()
                .is_some_and(|t| t.starts_with("2027-"))
        );
    }
}

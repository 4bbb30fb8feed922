//! Rotation governance: the validity of the Key Vault versions every FleetSecret serves, the
//! conditions that need attention (`NearExpiry`, `Expired`, `NotYetValid`, `Paused`, `Lagging`)
//! and the per-FleetSecret figures the hub exports as metrics. Everything is read from the store
//! (`keyfleet_expiry`, `keyfleet_rollout`, `rollouts`), so every replica answers the same,
//! leader or not.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::{Admin, AdminError};
use crate::store::ServedVersion;

/// `NearExpiry` threshold when neither the FleetSecret nor `--near-expiry-threshold` sets one.
pub const DEFAULT_NEAR_EXPIRY_THRESHOLD: Duration = Duration::from_secs(30 * 86_400);

/// A cluster off its desired revision for longer than this makes a FleetSecret `Lagging` (a
/// rotation in flight is not lagging; the status writer's undelivered threshold).
pub const LAGGING_AFTER: TimeDelta = TimeDelta::minutes(5);

/// One Key Vault version a FleetSecret's current revision reads, with its validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceView {
    /// Key Vault secret name.
    pub remote_key: String,
    /// Key Vault version id.
    pub version: String,
    /// Key Vault's `exp` (None: no expiry, or not recorded).
    pub expires: Option<DateTime<Utc>>,
    /// Key Vault's `nbf`.
    pub not_before: Option<DateTime<Utc>>,
}

/// What a condition is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConditionKind {
    /// A served version is past its `exp`.
    Expired,
    /// A served version expires within the threshold.
    NearExpiry,
    /// A served version's `nbf` is still ahead.
    NotYetValid,
    /// The rollout is paused (by an admin or by its error rate).
    Paused,
    /// Clusters stayed off their desired revision longer than [`LAGGING_AFTER`].
    Lagging,
}

impl ConditionKind {
    /// The name the Admin API and the CLI print.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "Expired",
            Self::NearExpiry => "NearExpiry",
            Self::NotYetValid => "NotYetValid",
            Self::Paused => "Paused",
            Self::Lagging => "Lagging",
        }
    }
}

/// A condition that needs attention; its message names keys, versions and clusters, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// What.
    pub kind: ConditionKind,
    /// Why, readable.
    pub message: String,
}

/// The served versions of every FleetSecret, by FleetSecret then (remote key, version).
pub(super) type ServedIndex = HashMap<String, HashMap<(String, String), ServedVersion>>;

/// Indexes `keyfleet_expiry` rows.
pub(super) fn index_served(rows: Vec<ServedVersion>) -> ServedIndex {
    let mut index: ServedIndex = HashMap::new();
    for row in rows {
        index
            .entry(row.fleet_secret.clone())
            .or_default()
            .insert((row.remote_key.clone(), row.version.clone()), row);
    }
    index
}

/// The revision's sources with their validity from `served` (unknown when not recorded).
pub(super) fn source_views(
    fleet_secret: &str,
    sources: &[(String, String)],
    served: &ServedIndex,
) -> Vec<SourceView> {
    let known = served.get(fleet_secret);
    sources
        .iter()
        .map(|(remote_key, version)| {
            let row = known.and_then(|rows| rows.get(&(remote_key.clone(), version.clone())));
            SourceView {
                remote_key: remote_key.clone(),
                version: version.clone(),
                expires: row.and_then(|row| row.expires),
                not_before: row.and_then(|row| row.not_before),
            }
        })
        .collect()
}

/// The earliest `exp` among `sources`.
pub fn earliest_expiry(sources: &[SourceView]) -> Option<DateTime<Utc>> {
    sources.iter().filter_map(|source| source.expires).min()
}

/// `Expired`, `NearExpiry` and `NotYetValid` of `sources` at `now` (one condition per kind,
/// naming every key it concerns, soonest first).
pub fn validity_conditions(
    sources: &[SourceView],
    threshold: Duration,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let threshold = TimeDelta::from_std(threshold).unwrap_or(TimeDelta::MAX);
    let mut expired = Vec::new();
    let mut near = Vec::new();
    let mut not_yet = Vec::new();
    for source in sources {
        if let Some(expires) = source.expires {
            if expires <= now {
                expired.push((
                    expires,
                    format!(
                        "{}@{} expired at {}",
                        source.remote_key,
                        source.version,
                        rfc3339(expires)
                    ),
                ));
            } else if expires - now <= threshold {
                near.push((
                    expires,
                    format!(
                        "{}@{} expires at {} (in {})",
                        source.remote_key,
                        source.version,
                        rfc3339(expires),
                        human(expires - now)
                    ),
                ));
            }
        }
        if let Some(not_before) = source.not_before
            && not_before > now
        {
            not_yet.push((
                not_before,
                format!(
                    "{}@{} is not valid before {}",
                    source.remote_key,
                    source.version,
                    rfc3339(not_before)
                ),
            ));
        }
    }
    let mut out = Vec::new();
    for (kind, mut items) in [
        (ConditionKind::Expired, expired),
        (ConditionKind::NearExpiry, near),
        (ConditionKind::NotYetValid, not_yet),
    ] {
        if items.is_empty() {
            continue;
        }
        items.sort();
        out.push(Condition {
            kind,
            message: items
                .into_iter()
                .map(|(_, text)| text)
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    out
}

/// `Lagging` when `count` clusters are off their desired revision and the oldest of them
/// (`oldest`: cluster, last status write) has been for longer than [`LAGGING_AFTER`].
pub fn lagging_condition(
    count: usize,
    oldest: Option<(&str, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> Option<Condition> {
    let (cluster, since) = oldest?;
    if now - since <= LAGGING_AFTER {
        return None;
    }
    Some(Condition {
        kind: ConditionKind::Lagging,
        message: format!(
            "{count} cluster(s) off their desired revision; the oldest, {cluster}, since {} ({} ago)",
            rfc3339(since),
            human(now - since)
        ),
    })
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `10d 4h`, `3h 12m`, `45m`, `30s`: the two largest units.
pub fn human(delta: TimeDelta) -> String {
    let seconds = delta.num_seconds().max(0);
    let (days, hours, minutes) = (seconds / 86_400, seconds % 86_400 / 3_600, seconds % 3_600 / 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// What the hub exports about one FleetSecret (`keyfleet_hub_fleet_secret_*`).
#[derive(Debug, Clone, PartialEq)]
pub struct GovernanceView {
    /// FleetSecret name.
    pub name: String,
    /// Current revision (0: none yet).
    pub revision: u64,
    /// When the current revision was recorded.
    pub revision_created: Option<DateTime<Utc>>,
    /// When the hub first saw the newest Key Vault version the revision reads (for a spec change
    /// without a new version: the revision's own creation).
    pub seen: Option<DateTime<Utc>>,
    /// Clusters that acknowledged the current revision.
    pub applied: u64,
    /// Clusters with status rows not on the current revision yet, nor refusing it (in flight, or
    /// held back by the rollout's waves).
    pub pending: u64,
    /// Clusters that refused the current revision.
    pub failed: u64,
    /// Latest acknowledgement of the current revision.
    pub last_applied: Option<DateTime<Utc>>,
    /// Wave reached (0 without a rollout strategy).
    pub wave: u32,
    /// Whether the rollout is paused.
    pub paused: bool,
    /// The current revision's sources with their validity.
    pub sources: Vec<SourceView>,
    /// The `NearExpiry` threshold in force.
    pub near_expiry_threshold: Duration,
}

/// A version seen longer than this before its revision was rendered did not cause it (a spec
/// change, a pin): the rotation starts at the revision.
const SEEN_WINDOW: TimeDelta = TimeDelta::minutes(10);

impl Admin {
    /// The `NearExpiry` threshold of FleetSecrets that set none.
    #[must_use]
    pub fn with_near_expiry_threshold(mut self, threshold: Duration) -> Self {
        self.near_expiry = threshold;
        self
    }

    /// The threshold in force for a FleetSecret that sets `own`.
    pub(super) fn threshold_for(&self, own: Option<Duration>) -> Duration {
        own.unwrap_or(self.near_expiry)
    }

    /// Every FleetSecret's figures for the metrics, from four small reads (no status row scan).
    pub async fn governance(&self) -> Result<Vec<GovernanceView>, AdminError> {
        let secrets = self.fleet_secrets().await?;
        let revisions: HashMap<String, crate::store::RevisionRecord> = self
            .store
            .latest_revisions()
            .await?
            .into_iter()
            .map(|revision| (revision.fleet_secret.clone(), revision))
            .collect();
        let served = index_served(self.store.served_versions().await?);
        let mut counts: BTreeMap<String, Vec<crate::store::RolloutCounts>> = BTreeMap::new();
        for row in self.store.rollout_counts().await? {
            counts.entry(row.fleet_secret.clone()).or_default().push(row);
        }
        let rollouts: HashMap<String, crate::store::RolloutRecord> = self
            .store
            .rollouts()
            .await?
            .into_iter()
            .map(|rollout| (rollout.fleet_secret.clone(), rollout))
            .collect();
        let mut out = Vec::with_capacity(secrets.len());
        for (name, (_, spec)) in &secrets {
            let revision = revisions.get(name);
            let current = revision.map_or(0, |revision| revision.revision);
            let rows = counts.get(name).map(Vec::as_slice).unwrap_or(&[]);
            let at_current = rows.iter().find(|row| row.revision == current && current != 0);
            let applied = at_current.map_or(0, |row| row.applied);
            let failed = at_current.map_or(0, |row| row.error);
            let total: u64 = rows.iter().map(|row| row.targeted).sum();
            let sources = revision
                .map(|revision| source_views(name, &revision.sources, &served))
                .unwrap_or_default();
            let created = revision.map(|revision| revision.created);
            let newest_seen = revision.and_then(|revision| {
                served.get(name).and_then(|rows| {
                    revision
                        .sources
                        .iter()
                        .filter_map(|key| rows.get(key).and_then(|row| row.seen))
                        .max()
                })
            });
            let seen = match (newest_seen, created) {
                (Some(seen), Some(created)) if seen <= created && created - seen <= SEEN_WINDOW => Some(seen),
                (_, created) => created,
            };
            let rollout = rollouts.get(name).filter(|rollout| rollout.revision == current);
            out.push(GovernanceView {
                name: name.clone(),
                revision: current,
                revision_created: created,
                seen,
                applied,
                pending: total.saturating_sub(applied + failed),
                failed,
                last_applied: at_current.and_then(|row| row.last_applied),
                wave: rollout.map_or(0, |rollout| rollout.current_wave),
                paused: rollout.is_some_and(|rollout| rollout.paused),
                sources,
                near_expiry_threshold: self.threshold_for(spec.near_expiry_threshold),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn source(key: &str, expires: Option<&str>, not_before: Option<&str>) -> SourceView {
        SourceView {
            remote_key: key.to_owned(),
            version: "0123456789abcdef0123456789abcdef".to_owned(),
            expires: expires.map(at),
            not_before: not_before.map(at),
        }
    }

    #[test]
    fn a_version_ten_days_from_expiry_is_near_expiry_under_the_default_threshold() {
        let now = at("2026-12-04T12:00:00Z");
        let sources = [
            source("acr-pull", Some("2026-12-14T12:00:00Z"), None),
            source("no-expiry", None, None),
            source("far", Some("2027-06-01T00:00:00Z"), None),
        ];
        let conditions = validity_conditions(&sources, DEFAULT_NEAR_EXPIRY_THRESHOLD, now);
        assert_eq!(conditions.len(), 1, "{conditions:?}");
        assert_eq!(conditions[0].kind, ConditionKind::NearExpiry);
        assert_eq!(
            conditions[0].message,
            "acr-pull@0123456789abcdef0123456789abcdef expires at 2026-12-14T12:00:00Z (in 10d 0h)"
        );
        // A 7-day threshold (set on the FleetSecret) does not flag it.
        assert!(validity_conditions(&sources, Duration::from_secs(7 * 86_400), now).is_empty());
        assert_eq!(earliest_expiry(&sources), Some(at("2026-12-14T12:00:00Z")));
    }

    #[test]
    fn expired_and_not_yet_valid_versions_are_named_soonest_first() {
        let now = at("2026-12-04T12:00:00Z");
        let sources = [
            source("b", Some("2026-12-04T11:00:00Z"), None),
            source("a", Some("2026-12-01T00:00:00Z"), None),
            source("c", None, Some("2026-12-05T00:00:00Z")),
            source("d", Some("2026-12-04T12:00:00Z"), None),
        ];
        let conditions = validity_conditions(&sources, DEFAULT_NEAR_EXPIRY_THRESHOLD, now);
        let kinds: Vec<_> = conditions.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [ConditionKind::Expired, ConditionKind::NotYetValid]);
        let expired = &conditions[0].message;
        let (a, b, d) = (
            expired.find("a@").expect("a"),
            expired.find("b@").expect("b"),
            expired.find("d@").expect("d"),
        );
        assert!(a < b && b < d, "{expired}");
        assert!(
            conditions[1]
                .message
                .contains("c@0123456789abcdef0123456789abcdef is not valid before 2026-12-05T00:00:00Z")
        );
    }

    #[test]
    fn lagging_only_after_the_grace() {
        let now = at("2026-12-04T12:00:00Z");
        assert_eq!(lagging_condition(0, None, now), None);
        assert_eq!(
            lagging_condition(3, Some(("eu-1", at("2026-12-04T11:58:00Z"))), now),
            None
        );
        let condition =
            lagging_condition(3, Some(("eu-1", at("2026-12-04T11:00:00Z"))), now).expect("lagging");
        assert_eq!(condition.kind, ConditionKind::Lagging);
        assert_eq!(
            condition.message,
            "3 cluster(s) off their desired revision; the oldest, eu-1, since 2026-12-04T11:00:00Z (1h 0m ago)"
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(TimeDelta::seconds(30)), "30s");
        assert_eq!(human(TimeDelta::seconds(45 * 60 + 3)), "45m");
        assert_eq!(human(TimeDelta::seconds(3 * 3600 + 12 * 60)), "3h 12m");
        assert_eq!(human(TimeDelta::seconds(-5)), "0s");
    }
}

//! Drift during a rotation: a few clusters' Secrets are edited (data changed by another field
//! manager, as `kubectl edit` would) or deleted while the new revision is fanning out, each as
//! soon as its cluster holds the new revision (earlier, the rollout's own write would overwrite
//! the edit: no drift). Every one must be repaired by its agent (the Secret back, with
//! the same content as the cluster's untouched namespace) and listed by the hub's drift report
//! (`keyfleet drift`), within a bound; status truth is checked after, as for every run.

use std::collections::BTreeSet;
use std::time::Duration;

use keyfleet_testkit::kube::{ClusterHandle, SecretBytes};
use serde::Serialize;
use tokio::time::Instant;

use crate::admin::Admin;
use crate::tracker::Tracker;

/// Clusters tampered with per run (fewer when the fleet is smaller).
pub const CLUSTERS: usize = 6;
/// Bound for repairs and reports.
const BOUND: Duration = Duration::from_secs(90);

/// What was injected and what came of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DriftFigures {
    /// Secrets tampered with.
    pub injected: usize,
    /// Of them, edited (data changed by another field manager).
    pub edited: usize,
    /// Of them, deleted.
    pub deleted: usize,
    /// Secrets back with the cluster's content within the bound.
    pub repaired: usize,
    /// Tampered clusters listed by the hub's drift report within the bound.
    pub reported: usize,
    /// Time from the injection to the last repair, seconds.
    pub repaired_s: f64,
    /// Time from the injection to the last report, seconds.
    pub reported_s: f64,
}

/// One tampered Secret.
pub struct Injected {
    cluster: String,
    edited: bool,
    handle: ClusterHandle,
}

/// Tampers with the Secret `secret` in namespace `namespaces.last()` of up to [`CLUSTERS`]
/// clusters spread over `candidates` (cluster indices; every cluster but those of a replica about
/// to be killed), each as soon as its cluster holds `revision` everywhere (within `bound`): even
/// picks are edited, odd ones deleted. Returns what was tampered with and when the first
/// tampering happened.
#[allow(clippy::too_many_arguments)]
pub async fn inject_once_applied(
    tracker: &Tracker,
    handles: &[ClusterHandle],
    candidates: &[usize],
    names: &[String],
    secret: &str,
    namespaces: &[String],
    revision: u64,
    bound: Duration,
) -> (Vec<Injected>, Instant) {
    let namespace = namespaces.last().map(String::as_str).unwrap_or("default");
    let count = CLUSTERS.min(candidates.len());
    let step = (candidates.len() / count.max(1)).max(1);
    let mut pending: Vec<(usize, usize)> = (0..count)
        .map(|pick| {
            let at = (pick * step + step / 2).min(candidates.len() - 1);
            (pick, candidates[at])
        })
        .collect();
    let deadline = Instant::now() + bound;
    let mut first = None;
    let mut injected = Vec::new();
    while !pending.is_empty() && Instant::now() < deadline {
        let mut waiting = Vec::new();
        for (pick, index) in pending {
            if tracker.held(&names[index]) != Some(revision) {
                waiting.push((pick, index));
                continue;
            }
            let handle = &handles[index];
            let done = if pick % 2 == 0 {
                handle.get_secret(namespace, secret).is_some_and(|current| {
                    let mut edited = (*current).clone();
                    if let Some(body) = edited.secret_mut() {
                        for value in body.data.values_mut() {
                            *value = SecretBytes::new(b"{\"auths\":{}}".to_vec());
                        }
                    }
                    handle.put_secret(edited, "kubectl-edit").is_ok()
                })
            } else {
                handle.delete_secret(namespace, secret)
            };
            if done {
                first.get_or_insert_with(Instant::now);
                injected.push(Injected {
                    cluster: names[index].clone(),
                    edited: pick % 2 == 0,
                    handle: handle.clone(),
                });
            }
        }
        pending = waiting;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    (injected, first.unwrap_or_else(Instant::now))
}

/// Whether the tampered namespace holds the same content as the cluster's first namespace.
fn repaired(injected: &Injected, secret: &str, namespaces: &[String]) -> bool {
    let (Some(first), Some(last)) = (namespaces.first(), namespaces.last()) else {
        return true;
    };
    match (
        injected.handle.get_secret(first, secret),
        injected.handle.get_secret(last, secret),
    ) {
        (Some(reference), Some(tampered)) => {
            let data = |object: &keyfleet_testkit::kube::Object| {
                object.secret().map(|body| {
                    body.data
                        .iter()
                        .map(|(key, value)| (key.clone(), value.expose().to_vec()))
                        .collect::<Vec<_>>()
                })
            };
            data(&reference) == data(&tampered)
                && reference.meta.annotations.get("keyfleet.io/revision")
                    == tampered.meta.annotations.get("keyfleet.io/revision")
        }
        _ => false,
    }
}

/// Waits (bounded) until every tampered Secret is repaired and every tampered cluster is in the
/// hub's drift report.
pub async fn check(
    admin: &Admin,
    injected: &[Injected],
    at: Instant,
    since: chrono::DateTime<chrono::Utc>,
    secret: &str,
    namespaces: &[String],
) -> anyhow::Result<DriftFigures> {
    let edited = injected.iter().filter(|item| item.edited).count();
    let mut figures = DriftFigures {
        injected: injected.len(),
        edited,
        deleted: injected.len() - edited,
        ..DriftFigures::default()
    };
    let deadline = at + BOUND;
    let wanted: BTreeSet<&str> = injected.iter().map(|item| item.cluster.as_str()).collect();
    loop {
        let repaired_now = injected
            .iter()
            .filter(|item| repaired(item, secret, namespaces))
            .count();
        if repaired_now > figures.repaired {
            figures.repaired = repaired_now;
            figures.repaired_s = at.elapsed().as_secs_f64();
        }
        let reported: BTreeSet<String> = admin
            .drift(since)
            .await?
            .into_iter()
            .map(|entry| entry.cluster)
            .collect();
        let reported_now = wanted
            .iter()
            .filter(|cluster| reported.contains(**cluster))
            .count();
        if reported_now > figures.reported {
            figures.reported = reported_now;
            figures.reported_s = at.elapsed().as_secs_f64();
        }
        if (figures.repaired == injected.len() && figures.reported == injected.len())
            || Instant::now() >= deadline
        {
            return Ok(figures);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

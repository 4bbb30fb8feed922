//! Table tests for the planner: selectors, waves, pauses, offline clusters, removals, scale.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::spec::{self, Spec, SpecFile};

const NOW: i64 = 1_800_000_000;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW, 0).expect("valid timestamp")
}

/// A checked FleetSecret from YAML fragments (`clusters:` selector, optional `rollout:` block).
fn fleet_secret(name: &str, clusters: &str, rollout: &str, deletion: &str) -> Arc<FleetSecretSpec> {
    let content = format!(
        "kind: FleetSecret\nname: {name}\nstoreRef: kv\ndata:\n  - {{ secretKey: token, remoteRef: {{ key: token }} }}\n\
         target:\n  namespaces: [default]\n  deletionPolicy: {deletion}\nclusters: {clusters}\n{rollout}"
    );
    let files = [SpecFile {
        name: format!("{name}.yaml"),
        content,
    }];
    let known: BTreeSet<String> = ["kv".to_owned()].into();
    let mut specs = spec::parse_files(&files, &known).expect("valid spec");
    match specs.pop().map(|loaded| loaded.spec) {
        Some(Spec::FleetSecret(secret)) => Arc::new(secret),
        other => panic!("not a FleetSecret: {other:?}"),
    }
}

fn revision(number: u64) -> RevisionRef {
    RevisionRef { number }
}

fn id(n: u128) -> ClusterId {
    ClusterId(uuid::Uuid::from_u128(n))
}

fn cluster(n: u128, labels: &[(&str, &str)]) -> PlanCluster {
    PlanCluster {
        id: id(n),
        name: Arc::from(format!("c{n}")),
        labels: Arc::new(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        state: ClusterState::Active,
        connected: true,
        last_seen: Some(now()),
        wave_hash: wave_hash(id(n)),
    }
}

fn status(
    cluster: u128,
    fleet_secret: &str,
    desired: u64,
    applied: Option<u64>,
    state: SyncState,
) -> PlanStatus {
    PlanStatus {
        cluster: id(cluster),
        fleet_secret: Arc::from(fleet_secret),
        desired_revision: desired,
        applied_revision: applied,
        state,
    }
}

fn applied(cluster: u128, fleet_secret: &str, revision: u64) -> PlanStatus {
    status(
        cluster,
        fleet_secret,
        revision,
        Some(revision),
        SyncState::Applied,
    )
}

fn progress(fleet_secret: &str, revision: u64, wave: u32, paused: bool, reason: &str) -> RolloutProgress {
    RolloutProgress {
        fleet_secret: fleet_secret.to_owned(),
        revision,
        current_wave: wave,
        paused,
        reason: reason.to_owned(),
    }
}

struct Case<'a> {
    clusters: &'a [PlanCluster],
    secrets: &'a [PlanFleetSecret],
    deleted: BTreeMap<String, DeletionPolicy>,
    status: &'a [PlanStatus],
    rollouts: &'a [RolloutProgress],
}

impl Case<'_> {
    /// The plan; also checks that planning with a selection made beforehand, or with one made
    /// for other clusters (selected again), gives the same plan.
    fn plan(&self) -> Plan {
        let input = PlanInput {
            clusters: self.clusters,
            fleet_secrets: self.secrets,
            deleted: &self.deleted,
            status: self.status,
            rollouts: self.rollouts,
            now: now(),
            offline_grace: TimeDelta::minutes(10),
        };
        let planned = plan(&input);
        let selection = Selection::new(self.clusters, self.secrets);
        assert_eq!(
            plan_with(&input, &selection),
            planned,
            "with a selection made beforehand"
        );
        let other = Selection::new(
            &self.clusters[..self.clusters.len().saturating_sub(1)],
            self.secrets,
        );
        assert_eq!(
            plan_with(&input, &other),
            planned,
            "with a selection of other clusters"
        );
        planned
    }
}

fn case<'a>(
    clusters: &'a [PlanCluster],
    secrets: &'a [PlanFleetSecret],
    status: &'a [PlanStatus],
    rollouts: &'a [RolloutProgress],
) -> Case<'a> {
    Case {
        clusters,
        secrets,
        deleted: BTreeMap::new(),
        status,
        rollouts,
    }
}

/// Revision number per cluster name for one FleetSecret (clusters without one are absent).
fn held(plan: &Plan, clusters: &[PlanCluster], fleet_secret: &str) -> BTreeMap<String, u64> {
    plan.clusters
        .iter()
        .filter_map(|entry| {
            let name = &clusters
                .iter()
                .find(|c| c.id == entry.cluster)
                .expect("known cluster")
                .name;
            entry
                .desired_for(fleet_secret)
                .map(|revision| (name.to_string(), revision.number))
        })
        .collect()
}

fn expected(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

fn decision_for<'a>(plan: &'a Plan, fleet_secret: &str) -> &'a RolloutDecision {
    plan.rollouts
        .iter()
        .find(|decision| &*decision.fleet_secret == fleet_secret)
        .expect("a decision per FleetSecret")
}

#[test]
fn selectors_target_matching_enrolled_and_pending_clusters_but_never_revoked_ones() {
    let mut pending = cluster(3, &[("env", "prod")]);
    pending.state = ClusterState::Pending;
    pending.connected = false;
    let mut revoked = cluster(4, &[("env", "prod")]);
    revoked.state = ClusterState::Revoked;
    let clusters = [
        cluster(1, &[("env", "prod")]),
        cluster(2, &[("env", "dev")]),
        pending,
        revoked,
    ];
    let secrets = [
        PlanFleetSecret {
            spec: fleet_secret("regcred", "{ matchLabels: { env: prod } }", "", "Retain"),
            current: Some(revision(7)),
            previous: Some(revision(5)),
        },
        PlanFleetSecret {
            spec: fleet_secret("everywhere", "{}", "", "Retain"),
            current: Some(revision(9)),
            previous: None,
        },
        PlanFleetSecret {
            spec: fleet_secret(
                "not-dev",
                "{ matchExpressions: [{ key: env, operator: NotIn, values: [dev] }] }",
                "",
                "Retain",
            ),
            current: Some(revision(11)),
            previous: None,
        },
    ];
    let plan = case(&clusters, &secrets, &[], &[]).plan();

    assert_eq!(plan.clusters.len(), 3, "the revoked cluster gets no plan");
    assert_eq!(
        held(&plan, &clusters, "regcred"),
        expected(&[("c1", 7), ("c3", 7)])
    );
    assert_eq!(
        held(&plan, &clusters, "everywhere"),
        expected(&[("c1", 9), ("c2", 9), ("c3", 9)])
    );
    assert_eq!(
        held(&plan, &clusters, "not-dev"),
        expected(&[("c1", 11), ("c3", 11)])
    );
    let first = &plan.clusters[0];
    let names: Vec<&str> = first.desired.iter().map(|d| &*d.fleet_secret).collect();
    assert_eq!(names, ["everywhere", "not-dev", "regcred"], "sorted by name");
    assert_eq!(
        first.desired_for("regcred"),
        Some(revision(7)),
        "the revision is the planned one"
    );
    let names: Vec<&str> = plan.rollouts.iter().map(|d| &*d.fleet_secret).collect();
    assert_eq!(names, ["everywhere", "not-dev", "regcred"]);
    assert!(
        plan.rollouts
            .iter()
            .all(|d| d.state == RolloutState::None && d.progress().is_none())
    );
}

#[test]
fn nothing_rendered_yet_keeps_the_previous_revision_or_nothing() {
    let clusters = [cluster(1, &[])];
    let secrets = [
        PlanFleetSecret {
            spec: fleet_secret("fresh", "{}", "", "Retain"),
            current: None,
            previous: None,
        },
        PlanFleetSecret {
            spec: fleet_secret("rerendering", "{}", "", "Retain"),
            current: None,
            previous: Some(revision(4)),
        },
    ];
    let plan = case(&clusters, &secrets, &[], &[]).plan();
    assert_eq!(held(&plan, &clusters, "fresh"), expected(&[]));
    assert_eq!(held(&plan, &clusters, "rerendering"), expected(&[("c1", 4)]));
    let fresh = decision_for(&plan, "fresh");
    assert_eq!((fresh.state, fresh.revision), (RolloutState::None, None));
    assert_eq!(fresh.reason, "no revision rendered yet");
}

#[test]
fn removals_carry_the_deletion_policy_and_skip_what_is_still_targeted() {
    let mut revoked = cluster(3, &[("env", "dev")]);
    revoked.state = ClusterState::Revoked;
    let clusters = [
        cluster(1, &[("env", "prod")]),
        cluster(2, &[("env", "dev")]),
        revoked,
    ];
    let secrets = [
        PlanFleetSecret {
            spec: fleet_secret("prod-only", "{ matchLabels: { env: prod } }", "", "Delete"),
            current: Some(revision(2)),
            previous: None,
        },
        PlanFleetSecret {
            spec: fleet_secret("prod-retained", "{ matchLabels: { env: prod } }", "", "Retain"),
            current: Some(revision(3)),
            previous: None,
        },
    ];
    let status = [
        applied(1, "prod-only", 2),
        applied(2, "prod-only", 2),     // relabelled away from prod
        applied(2, "prod-retained", 3), // relabelled away from prod
        applied(2, "gone-delete", 1),   // FleetSecret deleted, its policy remembered
        applied(2, "gone-unknown", 1),  // deleted, policy unknown: retained
        applied(3, "prod-only", 2),     // revoked: nothing is sent to it
        applied(99, "prod-only", 2),    // cluster no longer in the inventory
    ];
    let mut case = case(&clusters, &secrets, &status, &[]);
    case.deleted
        .insert("gone-delete".to_owned(), DeletionPolicy::Delete);
    let plan = case.plan();

    let removals = |n: u128| -> Vec<(String, DeletionPolicy)> {
        plan.clusters
            .iter()
            .find(|entry| entry.cluster == id(n))
            .expect("planned")
            .removals
            .iter()
            .map(|r| (r.fleet_secret.to_string(), r.deletion_policy))
            .collect()
    };
    assert_eq!(removals(1), []);
    assert_eq!(
        removals(2),
        [
            ("gone-delete".to_owned(), DeletionPolicy::Delete),
            ("gone-unknown".to_owned(), DeletionPolicy::Retain),
            ("prod-only".to_owned(), DeletionPolicy::Delete),
            ("prod-retained".to_owned(), DeletionPolicy::Retain),
        ]
    );
    assert!(plan.clusters.iter().all(|entry| entry.cluster != id(3)));
}

const WAVES: &str = "rollout:\n  waves: [{ matchLabels: { ring: canary } }, { matchLabels: { ring: early } }]\n  pauseOnErrorRate: 1%\n";

/// 2 canaries (1, 2), 100 early clusters (100..200), 3 others (900..903, the implicit last wave).
fn ringed_fleet() -> Vec<PlanCluster> {
    let mut clusters = vec![
        cluster(1, &[("ring", "canary")]),
        cluster(2, &[("ring", "canary")]),
    ];
    clusters.extend((100..200).map(|n| cluster(n, &[("ring", "early")])));
    clusters.extend((900..903).map(|n| cluster(n, &[])));
    clusters
}

fn ringed_secret(current: u64, previous: Option<u64>) -> [PlanFleetSecret; 1] {
    [PlanFleetSecret {
        spec: fleet_secret("regcred", "{}", WAVES, "Retain"),
        current: Some(revision(current)),
        previous: previous.map(revision),
    }]
}

/// Everyone applied `revision` for regcred.
fn all_applied(clusters: &[PlanCluster], revision: u64) -> Vec<PlanStatus> {
    clusters
        .iter()
        .map(|c| applied(c.id.0.as_u128(), "regcred", revision))
        .collect()
}

#[test]
fn a_new_revision_starts_at_the_first_wave_and_the_rest_keep_the_previous_one() {
    let clusters = ringed_fleet();
    let secrets = ringed_secret(8, Some(5));
    let status = all_applied(&clusters, 5);
    let rollouts = [progress("regcred", 5, 2, false, "")]; // the old rollout, complete
    let plan = case(&clusters, &secrets, &status, &rollouts).plan();

    let held = held(&plan, &clusters, "regcred");
    assert_eq!(
        (held["c1"], held["c2"]),
        (8, 8),
        "the canary wave gets the new revision"
    );
    assert!(
        held.iter()
            .filter(|(name, _)| !["c1", "c2"].contains(&name.as_str()))
            .all(|(_, r)| *r == 5),
        "{held:?}"
    );
    let decision = decision_for(&plan, "regcred");
    assert_eq!(decision.state, RolloutState::Progressing);
    assert_eq!(
        (decision.current_wave, decision.waves, decision.wave_size),
        (0, 3, 2)
    );
    assert_eq!(
        decision.progress(),
        Some(progress("regcred", 8, 0, false, "")),
        "what the caller persists"
    );
}

#[test]
fn waves_advance_only_when_applied_and_pause_above_the_error_rate() {
    let clusters = ringed_fleet();
    let secrets = ringed_secret(8, Some(5));
    let early = |n: u128| (100..200).contains(&n);
    struct Row {
        what: &'static str,
        /// Cluster → status for revision 8; others hold 5.
        status: fn(u128) -> Option<PlanStatus>,
        from_wave: u32,
        state: RolloutState,
        wave: u32,
        reason: &'static str,
    }
    let rows = [
        Row {
            what: "canaries applied: the early wave starts",
            status: |n| (n < 3).then(|| applied(n, "regcred", 8)),
            from_wave: 0,
            state: RolloutState::Progressing,
            wave: 1,
            reason: "",
        },
        Row {
            what: "one canary still pending: wait",
            status: |n| match n {
                1 => Some(applied(n, "regcred", 8)),
                2 => Some(status(n, "regcred", 8, Some(5), SyncState::Pending)),
                _ => None,
            },
            from_wave: 0,
            state: RolloutState::Progressing,
            wave: 0,
            reason: "",
        },
        Row {
            what: "3 of 100 early clusters failed: paused with the reason",
            status: |n| match n {
                1 | 2 => Some(applied(n, "regcred", 8)),
                100..=102 => Some(status(n, "regcred", 8, Some(5), SyncState::Error)),
                103..200 => Some(applied(n, "regcred", 8)),
                _ => None,
            },
            from_wave: 1,
            state: RolloutState::Paused,
            wave: 1,
            reason: "error rate 3/100 (3.0%) above 1.0% in wave 2",
        },
        Row {
            what: "1 of 100 failed (1.0%, at the threshold): the last wave starts",
            status: |n| match n {
                1 | 2 => Some(applied(n, "regcred", 8)),
                100 => Some(status(n, "regcred", 8, Some(5), SyncState::Error)),
                101..200 => Some(applied(n, "regcred", 8)),
                _ => None,
            },
            from_wave: 1,
            state: RolloutState::Progressing,
            wave: 2,
            reason: "",
        },
        Row {
            what: "an error for an older desired revision does not count",
            status: |n| match n {
                100..=110 => Some(status(n, "regcred", 5, Some(4), SyncState::Error)),
                _ => None,
            },
            from_wave: 1,
            state: RolloutState::Progressing,
            wave: 1,
            reason: "",
        },
        Row {
            what: "everyone applied: complete",
            status: |n| Some(applied(n, "regcred", 8)),
            from_wave: 2,
            state: RolloutState::Complete,
            wave: 2,
            reason: "",
        },
        Row {
            what: "everyone applied on the first plan: all waves pass at once",
            status: |n| Some(applied(n, "regcred", 8)),
            from_wave: 0,
            state: RolloutState::Complete,
            wave: 2,
            reason: "",
        },
    ];
    for row in rows {
        let status: Vec<PlanStatus> = clusters
            .iter()
            .map(|c| {
                let n = c.id.0.as_u128();
                (row.status)(n).unwrap_or_else(|| applied(n, "regcred", 5))
            })
            .collect();
        let rollouts = [progress("regcred", 8, row.from_wave, false, "")];
        let plan = case(&clusters, &secrets, &status, &rollouts).plan();
        let decision = decision_for(&plan, "regcred");
        assert_eq!(
            (decision.state, decision.current_wave, decision.reason.as_str()),
            (row.state, row.wave, row.reason),
            "{}",
            row.what
        );
        let held = held(&plan, &clusters, "regcred");
        for c in &clusters {
            let n = c.id.0.as_u128();
            let wave = if n < 3 {
                0
            } else if early(n) {
                1
            } else {
                2
            };
            let want = if row.state == RolloutState::Complete || wave <= row.wave {
                8
            } else {
                5
            };
            assert_eq!(held[&*c.name], want, "{}: {}", row.what, c.name);
        }
    }
}

#[test]
fn a_manual_pause_holds_its_revision_and_a_new_revision_starts_afresh() {
    let clusters = ringed_fleet();
    let status = all_applied(&clusters, 8);
    let paused = [progress("regcred", 8, 1, true, "")];

    let plan = case(&clusters, &ringed_secret(8, Some(5)), &status, &paused).plan();
    let held_plan = held(&plan, &clusters, "regcred");
    let decision = decision_for(&plan, "regcred");
    assert_eq!((decision.state, decision.current_wave), (RolloutState::Paused, 1));
    assert_eq!(decision.reason, MANUAL_PAUSE_REASON);
    assert!(decision.manually_paused);
    assert_eq!(
        decision.progress().map(|p| p.paused),
        Some(true),
        "the pause is persisted"
    );
    assert_eq!(held_plan["c900"], 8, "what a cluster already holds is kept");

    // A rollback by pin renders revision 9: it rolls out from the first wave despite the pause.
    let plan = case(&clusters, &ringed_secret(9, Some(8)), &status, &paused).plan();
    let decision = decision_for(&plan, "regcred");
    assert_eq!(
        (decision.state, decision.current_wave),
        (RolloutState::Progressing, 0)
    );
    assert!(!decision.manually_paused);
    let held = held(&plan, &clusters, "regcred");
    assert_eq!((held["c1"], held["c100"], held["c900"]), (9, 8, 8));
}

#[test]
fn offline_and_unenrolled_clusters_hold_a_wave_back_only_within_the_grace() {
    let mut clusters = vec![
        cluster(1, &[("ring", "canary")]),
        cluster(2, &[("ring", "canary")]),
    ];
    clusters.push(cluster(900, &[]));
    let secrets = ringed_secret(8, Some(5));
    let status = [applied(1, "regcred", 8), applied(900, "regcred", 5)];
    let rollouts = [progress("regcred", 8, 0, false, "")];
    let offline_for = |minutes: i64, state: ClusterState| {
        let mut clusters = clusters.clone();
        clusters[1].connected = false;
        clusters[1].state = state;
        clusters[1].last_seen = Some(now() - TimeDelta::minutes(minutes));
        clusters
    };
    // What the wave waits for (the engine counts it down as acks arrive) and when an offline
    // member stops counting (the engine's timer).
    let five_minutes_on = Some(now() + TimeDelta::minutes(5));
    for (what, clusters, wave, waiting, offline_until) in [
        ("connected and pending", clusters.clone(), 0, vec![id(2)], None),
        (
            "offline for 5 minutes",
            offline_for(5, ClusterState::Active),
            0,
            vec![id(2)],
            five_minutes_on,
        ),
        // The early ring is empty here: the rollout moves on to the implicit last wave.
        (
            "offline for an hour",
            offline_for(60, ClusterState::Active),
            2,
            vec![],
            None,
        ),
        (
            "never enrolled",
            offline_for(0, ClusterState::Pending),
            2,
            vec![],
            None,
        ),
    ] {
        let plan = case(&clusters, &secrets, &status, &rollouts).plan();
        let decision = decision_for(&plan, "regcred");
        assert_eq!(decision.current_wave, wave, "{what}");
        if wave == 2 {
            // The last wave (c900, on revision 5) waits for c900.
            assert_eq!(decision.waiting, vec![id(900)], "{what}");
        } else {
            assert_eq!(decision.waiting, waiting, "{what}");
        }
        assert_eq!(decision.offline_until, offline_until, "{what}");
        assert_eq!(
            held(&plan, &clusters, "regcred")["c2"],
            8,
            "{what}: it still gets the revision"
        );
    }
}

#[test]
fn clusters_beyond_the_wave_get_what_the_completed_waves_have() {
    let clusters = ringed_fleet();
    let secrets = ringed_secret(8, Some(5));
    // c900: new, nothing applied; c901: holds an old revision 3; c902: already on 8.
    let base = [applied(901, "regcred", 3), applied(902, "regcred", 8)];
    let canaries_done = [applied(1, "regcred", 8), applied(2, "regcred", 8)];
    for (wave, canaries, held_new) in [(0, &[][..], 5), (1, &canaries_done[..], 8)] {
        let rollouts = [progress("regcred", 8, 0, false, "")];
        // Wave 1 (the early ring) has nothing applied, so the rollout stops there at most.
        let status: Vec<PlanStatus> = base.iter().chain(canaries).cloned().collect();
        let plan = case(&clusters, &secrets, &status, &rollouts).plan();
        assert_eq!(decision_for(&plan, "regcred").current_wave, wave);
        let held = held(&plan, &clusters, "regcred");
        assert_eq!(
            (held["c900"], held["c901"], held["c902"]),
            (held_new, held_new, 8),
            "current wave {wave}"
        );
    }

    // First revision ever, wave 0 not done: clusters beyond it get nothing yet.
    let secrets = ringed_secret(8, None);
    let plan = case(&clusters, &secrets, &[], &[]).plan();
    let held = held(&plan, &clusters, "regcred");
    assert_eq!(held, expected(&[("c1", 8), ("c2", 8)]));
}

#[test]
fn percentage_waves_pick_the_same_clusters_whatever_the_input_order() {
    let rollout =
        "rollout:\n  waves: [{ percent: 10 }, { percent: 50 }, { percent: 100 }]\n  pauseOnErrorRate: 0%\n";
    let secrets = [PlanFleetSecret {
        spec: fleet_secret("regcred", "{ matchLabels: { env: prod } }", rollout, "Retain"),
        current: Some(revision(2)),
        previous: Some(revision(1)),
    }];
    let mut clusters: Vec<PlanCluster> = (0..95).map(|n| cluster(n, &[("env", "prod")])).collect();
    clusters.extend((1000..1010).map(|n| cluster(n, &[("env", "dev")])));
    let picked = |clusters: &[PlanCluster], wave: u32| -> BTreeSet<String> {
        let rollouts = [progress("regcred", 2, wave, false, "")];
        // Everyone holds revision 1, so the current wave waits and nobody else moves.
        let status: Vec<PlanStatus> = clusters
            .iter()
            .map(|c| applied(c.id.0.as_u128(), "regcred", 1))
            .collect();
        let plan = case(clusters, &secrets, &status, &rollouts).plan();
        held(&plan, clusters, "regcred")
            .into_iter()
            .filter(|(_, revision)| *revision == 2)
            .map(|(name, _)| name)
            .collect()
    };
    let first = picked(&clusters, 0);
    assert_eq!(first.len(), 10, "⌈10% of 95⌉");
    let second = picked(&clusters, 1);
    assert_eq!(second.len(), 48, "⌈50% of 95⌉");
    assert!(first.is_subset(&second), "percentages are cumulative");
    assert_eq!(picked(&clusters, 2).len(), 95);
    clusters.reverse();
    assert_eq!(
        picked(&clusters, 0),
        first,
        "the hash order, not the input order, decides"
    );
    // The pick is spread: not simply the lowest ids.
    let lowest: BTreeSet<String> = (0..10).map(|n| format!("c{n}")).collect();
    assert_ne!(first, lowest);
}

#[test]
fn ten_thousand_clusters_and_fifty_fleet_secrets() {
    const CLUSTERS: u128 = 10_000;
    let regions = ["eu", "us", "ap", "sa"];
    let clusters: Vec<PlanCluster> = (0..CLUSTERS)
        .map(|n| {
            let region = regions[(n % 4) as usize];
            let env = if n % 10 == 0 { "dev" } else { "prod" };
            let ring = if n % 100 == 0 { "canary" } else { "main" };
            cluster(n, &[("region", region), ("env", env), ("ring", ring)])
        })
        .collect();
    let waves = "rollout:\n  waves: [{ matchLabels: { ring: canary } }, { percent: 10 }, { percent: 100 }]\n  pauseOnErrorRate: 2%\n";
    let secrets: Vec<PlanFleetSecret> = (0..50u64)
        .map(|i| {
            let selector = match i % 3 {
                0 => "{}".to_owned(),
                1 => format!("{{ matchLabels: {{ region: {} }} }}", regions[(i % 4) as usize]),
                _ => "{ matchExpressions: [{ key: env, operator: In, values: [prod] }] }".to_owned(),
            };
            let rollout = if i % 2 == 0 { waves } else { "" };
            PlanFleetSecret {
                spec: fleet_secret(&format!("secret-{i:02}"), &selector, rollout, "Retain"),
                current: Some(revision(1000 + i)),
                previous: Some(revision(i)),
            }
        })
        .collect();
    // Every cluster applied the previous revision of everything; the canaries applied the current.
    let mut status = Vec::new();
    for c in &clusters {
        for secret in &secrets {
            if !secret.spec.clusters.matches(&c.labels) {
                continue;
            }
            let (current, previous) = (
                secret.current.expect("rendered"),
                secret.previous.expect("rendered"),
            );
            let canary = c.labels["ring"] == "canary";
            let held = if canary { current.number } else { previous.number };
            status.push(applied(c.id.0.as_u128(), &secret.spec.name, held));
        }
    }
    let rollouts: Vec<RolloutProgress> = secrets
        .iter()
        .filter(|secret| secret.spec.rollout.is_some())
        .map(|secret| {
            progress(
                &secret.spec.name,
                secret.current.expect("rendered").number,
                0,
                false,
                "",
            )
        })
        .collect();

    let case = case(&clusters, &secrets, &status, &rollouts);
    let started = std::time::Instant::now();
    let plan = case.plan();
    let elapsed = started.elapsed();
    eprintln!(
        "plan: {} clusters x {} fleet secrets ({} status rows) in {elapsed:?}",
        clusters.len(),
        secrets.len(),
        status.len()
    );

    assert_eq!(plan.clusters.len(), clusters.len());
    assert_eq!(plan.rollouts.len(), secrets.len());
    for (c, entry) in clusters.iter().zip(&plan.clusters) {
        assert_eq!(entry.cluster, c.id);
        let want = secrets
            .iter()
            .filter(|s| s.spec.clusters.matches(&c.labels))
            .count();
        assert_eq!(entry.desired.len(), want, "{}", c.name);
        assert!(entry.removals.is_empty());
    }
    for (i, secret) in secrets.iter().enumerate() {
        let name = secret.spec.name.as_str();
        let decision = decision_for(&plan, name);
        let current = secret.current.expect("rendered").number;
        let targeted: Vec<&PlanCluster> = clusters
            .iter()
            .filter(|c| secret.spec.clusters.matches(&c.labels))
            .collect();
        let on_current = plan
            .clusters
            .iter()
            .filter(|entry| entry.desired_for(name).is_some_and(|r| r.number == current))
            .count();
        if i % 2 == 0 {
            // Canaries applied: the 10% wave is being rolled out.
            assert_eq!(
                (decision.state, decision.current_wave),
                (RolloutState::Progressing, 1),
                "{name}"
            );
            let canaries = targeted.iter().filter(|c| c.labels["ring"] == "canary").count();
            let wave = targeted.len().div_ceil(10);
            assert!(
                on_current >= wave.max(canaries) && on_current <= canaries + wave,
                "{name}: {on_current} clusters on the current revision"
            );
            assert_eq!(decision.wave_size as usize + canaries, on_current, "{name}");
        } else {
            assert_eq!(decision.state, RolloutState::None, "{name}");
            assert_eq!(on_current, targeted.len(), "{name}");
        }
    }
}

#[test]
fn one_selection_serves_every_plan_of_a_rollout() {
    // The engine selects once per set of clusters and specs and plans each wave with it: the
    // waves must advance exactly as when every plan selects afresh.
    let clusters = ringed_fleet();
    let secrets = ringed_secret(8, Some(5));
    let selection = Selection::new(&clusters, &secrets);
    let mut status = all_applied(&clusters, 5);
    let mut rollouts = vec![progress("regcred", 5, 2, false, "")];
    let mut waves_seen = Vec::new();
    for _ in 0..5 {
        let input = PlanInput {
            clusters: &clusters,
            fleet_secrets: &secrets,
            deleted: &BTreeMap::new(),
            status: &status,
            rollouts: &rollouts,
            now: now(),
            offline_grace: TimeDelta::minutes(10),
        };
        let cached = plan_with(&input, &selection);
        assert_eq!(cached, plan(&input));
        let decision = decision_for(&cached, "regcred");
        waves_seen.push((decision.current_wave, decision.state));
        // Every cluster given revision 8 applies it.
        for entry in &cached.clusters {
            if entry.desired_for("regcred") == Some(revision(8)) {
                for row in status.iter_mut().filter(|row| row.cluster == entry.cluster) {
                    *row = applied(entry.cluster.0.as_u128(), "regcred", 8);
                }
            }
        }
        rollouts = decision.progress().into_iter().collect();
    }
    assert_eq!(
        waves_seen,
        vec![
            (0, RolloutState::Progressing),
            (1, RolloutState::Progressing),
            (2, RolloutState::Progressing),
            (2, RolloutState::Complete),
            (2, RolloutState::Complete),
        ]
    );
}

#[test]
fn the_map_hasher_spreads_sequential_ids_over_the_low_bits() {
    use std::hash::{BuildHasher as _, BuildHasherDefault};
    let build = BuildHasherDefault::<FastHasher>::default();
    let buckets: BTreeSet<u64> = (0..10_000u128).map(|n| build.hash_one(id(n)) & 0x3fff).collect();
    // 10,000 keys over 16,384 buckets: a uniform hash fills about 7,400 of them.
    assert!(
        buckets.len() > 6_500,
        "{} distinct low-bit buckets",
        buckets.len()
    );
    let names: BTreeSet<u64> = (0..1_000)
        .map(|n| build.hash_one(format!("secret-{n}").as_str()) & 0x7ff)
        .collect();
    assert!(names.len() > 550, "{} distinct low-bit buckets", names.len());
}

//! The read-back rule: a key counts as applied only where every target of its newest plan holds
//! it; the targets record round-trips.

use std::collections::BTreeMap;

use super::*;
use crate::reconcile::model::{
    CreationPolicy, DeletionPolicy, DesiredSecret, Digest, REVISION_ANNOTATION, SecretBytes, value_digest,
};

const SHA: Digest = [7; 32];

fn desired(revision: u64, targets: Targets) -> DesiredSecret {
    DesiredSecret {
        key: "regcred".into(),
        revision,
        sha256: SHA,
        secret_name: "regcred".into(),
        secret_type: "Opaque".into(),
        targets,
        data: [("token".to_string(), SecretBytes::new(b"s3cr3t".to_vec()))].into(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        creation: CreationPolicy::Owner,
        deletion: DeletionPolicy::Delete,
        immutable: false,
        source_versions: BTreeMap::new(),
    }
}

fn named(revision: u64, namespaces: &[&str]) -> DesiredSecret {
    desired(
        revision,
        Targets::Namespaces(namespaces.iter().map(|name| (*name).to_owned()).collect()),
    )
}

/// The Secret exactly as the agent writes `desired` into `namespace`.
fn written(desired: &DesiredSecret, namespace: &str) -> ObservedSecret {
    ObservedSecret {
        namespace: namespace.into(),
        name: desired.secret_name.clone(),
        secret_type: desired.secret_type.clone(),
        labels: desired.full_labels(),
        annotations: desired.full_annotations(),
        data: desired
            .data
            .iter()
            .map(|(k, v)| (k.clone(), *v.digest()))
            .collect(),
        immutable: desired.immutable,
    }
}

/// As written by an agent that did not record its targets yet.
fn legacy(desired: &DesiredSecret, namespace: &str) -> ObservedSecret {
    let mut secret = written(desired, namespace);
    secret.annotations.remove(TARGETS_ANNOTATION);
    secret
}

fn foreign(namespace: &str, name: &str) -> ObservedSecret {
    ObservedSecret {
        namespace: namespace.into(),
        name: name.into(),
        secret_type: "Opaque".into(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        data: [("other".to_string(), value_digest(b"x"))].into(),
        immutable: false,
    }
}

fn namespace(name: &str, env: &str) -> Namespace {
    Namespace {
        name: name.into(),
        labels: [("env".to_string(), env.to_string())].into(),
    }
}

fn prod_selector() -> Targets {
    Targets::Selector(Selector {
        match_labels: [("env".to_string(), "prod".to_string())].into(),
        match_expressions: vec![],
    })
}

fn at(revision: u64) -> Option<Applied> {
    Some(Applied {
        revision,
        sha256: SHA,
    })
}

#[test]
fn the_lowest_revision_counts_and_foreign_or_unparseable_secrets_do_not() {
    let mut broken = written(&named(5, &["a", "b"]), "c");
    broken
        .annotations
        .insert(REVISION_ANNOTATION.into(), "not-a-number".into());
    let state = applied_state(
        &[
            written(&named(5, &["a", "b"]), "a"),
            written(&named(3, &["a", "b"]), "b"),
            broken,
            foreign("a", "x"),
        ],
        &[],
    );
    assert_eq!(state.len(), 1);
    assert_eq!(state.get("regcred").cloned(), at(3));
}

/// Issue #16 item 4: killed after writing `a` and before creating `b`, the agent used to report
/// the new revision (lowest over the Secrets that exist) and was told it was in sync.
#[test]
fn a_key_cut_short_between_namespaces_is_not_applied_at_any_revision() {
    let plan = named(5, &["a", "b"]);
    let cases: Vec<(&str, Vec<ObservedSecret>, Option<Applied>)> = vec![
        (
            "first apply, b not created yet",
            vec![written(&plan, "a")],
            Some(Applied::INCOMPLETE),
        ),
        (
            "first apply, only b",
            vec![written(&plan, "b")],
            Some(Applied::INCOMPLETE),
        ),
        ("complete", vec![written(&plan, "a"), written(&plan, "b")], at(5)),
        (
            "update cut short: b still at the previous revision",
            vec![written(&plan, "a"), written(&named(4, &["a", "b"]), "b")],
            at(4),
        ),
        (
            "the new revision adds c, written only into a",
            vec![written(&named(6, &["a", "b", "c"]), "a"), written(&plan, "b")],
            Some(Applied::INCOMPLETE),
        ),
        (
            "the new revision drops b, whose cleanup is still due",
            vec![written(&named(6, &["a"]), "a"), written(&plan, "b")],
            at(5),
        ),
        (
            "a Secret of another name in a target namespace does not stand in",
            vec![written(&plan, "a"), {
                let mut renamed = written(&plan, "b");
                renamed.name = "other".into();
                renamed
            }],
            Some(Applied::INCOMPLETE),
        ),
        (
            "written before targets were recorded: what exists counts",
            vec![legacy(&plan, "a")],
            at(5),
        ),
        (
            "a record this agent cannot read",
            vec![{
                let mut secret = written(&plan, "a");
                secret
                    .annotations
                    .insert(TARGETS_ANNOTATION.into(), "{\"somewhere\":[]}".into());
                secret
            }],
            Some(Applied::INCOMPLETE),
        ),
    ];
    for (name, observed, expected) in cases {
        assert_eq!(
            applied_state(&observed, &[]).get("regcred").cloned(),
            expected,
            "{name}"
        );
    }
    assert_eq!(
        Applied::INCOMPLETE.revision,
        0,
        "the hub never assigns revision 0"
    );
}

#[test]
fn a_selector_is_resolved_against_the_namespaces_of_now() {
    let plan = desired(5, prod_selector());
    let cluster = vec![
        namespace("a", "prod"),
        namespace("b", "prod"),
        namespace("c", "dev"),
    ];
    let both = vec![written(&plan, "a"), written(&plan, "b")];
    assert!(targets_need_namespaces(&both));
    assert_eq!(applied_state(&both, &cluster).get("regcred").cloned(), at(5));
    assert_eq!(
        applied_state(&both[..1], &cluster).get("regcred").cloned(),
        Some(Applied::INCOMPLETE),
        "b matches and lacks the Secret"
    );
    let mut grown = cluster.clone();
    grown.push(namespace("d", "prod"));
    assert_eq!(
        applied_state(&both, &grown).get("regcred").cloned(),
        Some(Applied::INCOMPLETE),
        "d started matching while no payload was in memory"
    );
    let shrunk = vec![namespace("a", "prod"), namespace("b", "dev")];
    assert_eq!(
        applied_state(&both, &shrunk).get("regcred").cloned(),
        at(5),
        "b no longer matches: the Secret there is only a cleanup the hub's next send does"
    );
    assert!(!targets_need_namespaces(&[written(&named(5, &["a"]), "a")]));
    assert!(!targets_need_namespaces(&[foreign("a", "x")]));
}

#[test]
fn the_targets_record_round_trips_and_is_deterministic() {
    let requirement = |operator, values: &[&str]| Requirement {
        key: "env".into(),
        operator,
        values: values.iter().map(|value| (*value).to_owned()).collect(),
    };
    let cases = [
        Targets::Namespaces(vec!["b".into(), "a".into()]),
        Targets::Namespaces(vec![]),
        prod_selector(),
        Targets::Selector(Selector::default()),
        Targets::Selector(Selector {
            match_labels: [
                ("team".to_string(), "x".to_string()),
                ("a".to_string(), "1".to_string()),
            ]
            .into(),
            match_expressions: vec![
                requirement(Operator::In, &["prod", "dev"]),
                requirement(Operator::NotIn, &["qa"]),
                requirement(Operator::Exists, &[]),
                requirement(Operator::DoesNotExist, &[]),
            ],
        }),
    ];
    for targets in cases {
        let text = targets.annotation();
        assert_eq!(Targets::from_annotation(&text), Some(targets.clone()), "{text}");
        assert_eq!(targets.clone().annotation(), text, "same targets, same text");
    }
    assert_eq!(
        Targets::Namespaces(vec!["a".into(), "b".into()]).annotation(),
        r#"{"namespaces":["a","b"]}"#
    );
    assert_eq!(
        prod_selector().annotation(),
        r#"{"namespaceSelector":{"matchLabels":{"env":"prod"}}}"#
    );
    for unreadable in [
        "",
        "[]",
        r#"{"namespaces":"a"}"#,
        r#"{"namespaces":["a"],"extra":1}"#,
        r#"{"namespaceSelector":{"matchExpressions":[{"key":"env","operator":"Near"}]}}"#,
    ] {
        assert_eq!(Targets::from_annotation(unreadable), None, "{unreadable}");
    }
}

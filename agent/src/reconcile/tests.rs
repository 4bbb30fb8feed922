//! Table tests of the pure planner: upserts, removals, priors and undos, drift, applied state.

use std::collections::BTreeMap;

use super::*;

const SHA: Digest = [7; 32];

fn desired(creation: CreationPolicy, deletion: DeletionPolicy) -> DesiredSecret {
    DesiredSecret {
        key: "regcred".into(),
        revision: 5,
        sha256: SHA,
        secret_name: "regcred".into(),
        secret_type: "Opaque".into(),
        targets: Targets::Namespaces(vec!["a".into(), "b".into()]),
        data: [("token".to_string(), SecretBytes::new(b"s3cr3t".to_vec()))].into(),
        labels: [("team".to_string(), "x".to_string())].into(),
        annotations: BTreeMap::new(),
        creation,
        deletion,
        immutable: false,
        source_versions: BTreeMap::new(),
    }
}

fn owner() -> DesiredSecret {
    desired(CreationPolicy::Owner, DeletionPolicy::Delete)
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

fn ns(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// An Apply of the payload every `desired(..)` of these tests is (same key, revision, name and
/// digest: equal as far as `Action` compares payloads).
fn apply(namespace: &str, force: bool) -> Action {
    Action::Apply {
        namespace: namespace.into(),
        force,
        payload: Arc::new(owner()),
    }
}

#[test]
fn upsert_table() {
    let base = owner();
    let mut older = owner();
    older.revision = 4;
    older.sha256 = [4; 32];
    let mut edited = written(&base, "a");
    edited.data.insert("token".into(), value_digest(b"edited"));
    let mut stripped = written(&base, "a");
    stripped.annotations.remove(SHA256_ANNOTATION);
    let mut other_key = written(&base, "a");
    other_key
        .annotations
        .insert(FLEET_SECRET_ANNOTATION.into(), "other".into());
    let mut immutable_old = written(&older, "a");
    immutable_old.immutable = true;
    immutable_old.data.insert("token".into(), value_digest(b"old"));
    let mut immutable_same_data = written(&older, "a");
    immutable_same_data.immutable = true;
    let mut renamed_stale = written(&base, "a");
    renamed_stale.name = "old-name".into();

    type Expected = Result<Vec<Action>, (ErrorCode, bool)>;
    let cases: Vec<(&str, DesiredSecret, Vec<ObservedSecret>, Expected)> = vec![
        (
            "absent everywhere: create without force",
            owner(),
            vec![],
            Ok(vec![apply("a", false), apply("b", false)]),
        ),
        (
            "up to date in both: nothing",
            owner(),
            vec![written(&base, "a"), written(&base, "b")],
            Ok(vec![]),
        ),
        (
            "older revision: forced update of our own",
            owner(),
            vec![written(&older, "a"), written(&base, "b")],
            Ok(vec![apply("a", true)]),
        ),
        (
            "edited data: repair",
            owner(),
            vec![edited, written(&base, "b")],
            Ok(vec![apply("a", true)]),
        ),
        (
            "missing annotation: repair",
            owner(),
            vec![stripped, written(&base, "b")],
            Ok(vec![apply("a", true)]),
        ),
        (
            "foreign secret, Owner: not owned, nothing written",
            owner(),
            vec![foreign("a", "regcred")],
            Err((ErrorCode::NotOwned, true)),
        ),
        (
            "foreign secret, Orphan: not owned",
            desired(CreationPolicy::Orphan, DeletionPolicy::Retain),
            vec![foreign("b", "regcred")],
            Err((ErrorCode::NotOwned, true)),
        ),
        (
            "ours for another key: not owned",
            owner(),
            vec![other_key],
            Err((ErrorCode::NotOwned, true)),
        ),
        (
            "foreign secret, Merge: apply our keys without force",
            desired(CreationPolicy::Merge, DeletionPolicy::Retain),
            vec![foreign("a", "regcred"), foreign("b", "regcred")],
            Ok(vec![apply("a", false), apply("b", false)]),
        ),
        (
            "Merge with a missing target: retryable refusal",
            desired(CreationPolicy::Merge, DeletionPolicy::Retain),
            vec![foreign("a", "regcred")],
            Err((ErrorCode::Invalid, true)),
        ),
        (
            "immutable with other data: refused",
            owner(),
            vec![immutable_old],
            Err((ErrorCode::Immutable, false)),
        ),
        (
            "immutable with same data: annotations can move",
            owner(),
            vec![immutable_same_data, written(&base, "b")],
            Ok(vec![apply("a", true)]),
        ),
        (
            "renamed: old name cleaned up by deletionPolicy",
            owner(),
            vec![written(&base, "a"), written(&base, "b"), renamed_stale],
            Ok(vec![Action::Delete {
                namespace: "a".into(),
                name: "old-name".into(),
            }]),
        ),
        (
            "namespace dropped, Retain: released",
            desired(CreationPolicy::Owner, DeletionPolicy::Retain),
            vec![written(
                &desired(CreationPolicy::Owner, DeletionPolicy::Retain),
                "c",
            )],
            Ok(vec![
                apply("a", false),
                apply("b", false),
                Action::Release {
                    namespace: "c".into(),
                    name: "regcred".into(),
                },
            ]),
        ),
    ];
    for (name, desired, observed, expected) in cases {
        let got = plan_upsert(&Arc::new(desired), &ns(&["a", "b"]), &observed, None)
            .map(Plan::into_actions)
            .map_err(|refusal| (refusal.code, refusal.retryable));
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn refusal_comes_before_any_action() {
    // Namespace a would be created, b is foreign: nothing at all may be written.
    let result = plan_upsert(
        &Arc::new(owner()),
        &ns(&["a", "b"]),
        &[foreign("b", "regcred")],
        None,
    );
    let refusal = result.expect_err("b is not ours");
    assert!(refusal.message.contains("b/regcred"), "{}", refusal.message);
}

/// A compact name for where a planned step's prior comes from, for table tests.
fn source_name(planned: &Planned) -> String {
    match planned {
        Planned::Ready(step) => prior_name(&step.prior),
        Planned::ReadBack(_) => "read back".into(),
    }
}

/// A compact name for a prior, for table tests.
fn prior_name(prior: &Prior) -> String {
    match prior {
        Prior::Absent => "absent".into(),
        Prior::Foreign => "foreign".into(),
        Prior::Ours(content) => format!("held r{}", content.revision),
    }
}

/// A compact description of a write, for table tests.
fn describe(action: &Action) -> String {
    match action {
        Action::Apply {
            namespace,
            force,
            payload,
        } => format!(
            "apply r{} into {namespace}/{}, {}",
            payload.revision,
            payload.secret_name,
            if *force { "force" } else { "no force" }
        ),
        Action::Delete { namespace, name } => format!("delete {namespace}/{name}"),
        Action::Release { namespace, name } => format!("release {namespace}/{name}"),
        Action::RemoveFields { namespace, name } => format!("remove fields {namespace}/{name}"),
    }
}

#[test]
fn priors_table() {
    let mut older = owner();
    older.revision = 4;
    older.sha256 = [4; 32];
    let older = Arc::new(older);
    let mut drifted = written(&older, "b");
    drifted.data.insert("token".into(), value_digest(b"edited"));
    let mut renamed = (*older).clone();
    renamed.secret_name = "old-name".into();
    let renamed = Arc::new(renamed);
    let release_c = Action::Release {
        namespace: "c".into(),
        name: "regcred".into(),
    };
    type Case<'a> = (
        &'a str,
        Vec<Action>,
        Vec<ObservedSecret>,
        Option<&'a Arc<DesiredSecret>>,
        Vec<&'a str>,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "created where nothing was",
            vec![apply("a", false)],
            vec![],
            None,
            vec!["absent"],
        ),
        (
            "merged into a foreign Secret",
            vec![apply("a", false)],
            vec![foreign("a", "regcred")],
            None,
            vec!["foreign"],
        ),
        (
            "ours and the held payload is its content",
            vec![apply("a", true), release_c.clone()],
            vec![written(&older, "a"), written(&older, "c")],
            Some(&older),
            vec!["held r4", "held r4"],
        ),
        (
            "ours but nothing held (after a restart)",
            vec![apply("a", true)],
            vec![written(&older, "a")],
            None,
            vec!["read back"],
        ),
        (
            "ours but drifted from the held payload",
            vec![apply("b", true)],
            vec![drifted],
            Some(&older),
            vec!["read back"],
        ),
        (
            "the held payload names another Secret",
            vec![apply("a", true)],
            vec![written(&older, "a")],
            Some(&renamed),
            vec!["read back"],
        ),
    ];
    for (name, actions, observed, previous, expected) in cases {
        let got: Vec<String> = plan("regcred", actions, &observed, previous)
            .steps
            .iter()
            .map(source_name)
            .collect();
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn undo_table() {
    let content = Arc::new(owner());
    let delete_a = Action::Delete {
        namespace: "a".into(),
        name: "regcred".into(),
    };
    let release_a = Action::Release {
        namespace: "a".into(),
        name: "regcred".into(),
    };
    let cases = [
        (apply("a", false), Prior::Absent, "delete a/regcred"),
        (apply("a", false), Prior::Foreign, "remove fields a/regcred"),
        (
            apply("a", true),
            Prior::Ours(content.clone()),
            "apply r5 into a/regcred, force",
        ),
        (
            delete_a,
            Prior::Ours(content.clone()),
            "apply r5 into a/regcred, no force",
        ),
        (release_a, Prior::Ours(content), "apply r5 into a/regcred, force"),
    ];
    for (action, prior, expected) in cases {
        let context = format!("{} after {}", describe(&action), prior_name(&prior));
        let step = Step::new(action, prior);
        assert_eq!(describe(&step.undo), expected, "{context}");
    }
}

#[test]
fn one_call_gives_actions_priors_and_undos_together() {
    // r4 is held and still in a; b is new; c is a namespace r5 no longer targets.
    let mut older = owner();
    older.revision = 4;
    older.sha256 = [4; 32];
    let older = Arc::new(older);
    let mut wanted = owner();
    wanted.targets = Targets::Namespaces(ns(&["a", "b"]));
    let wanted = Arc::new(wanted);
    let observed = vec![written(&older, "a"), written(&older, "c")];
    let plan = plan_upsert(&wanted, &ns(&["a", "b"]), &observed, Some(&older)).expect("plannable");
    let got: Vec<(String, String, String)> = plan
        .steps
        .iter()
        .map(|planned| match planned {
            Planned::Ready(step) => (
                describe(&step.action),
                prior_name(&step.prior),
                describe(&step.undo),
            ),
            Planned::ReadBack(action) => (describe(action), "read back".into(), String::new()),
        })
        .collect();
    let expected = [
        (
            "apply r5 into a/regcred, force",
            "held r4",
            "apply r4 into a/regcred, force",
        ),
        ("apply r5 into b/regcred, no force", "absent", "delete b/regcred"),
        ("delete c/regcred", "held r4", "apply r4 into c/regcred, no force"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(action, prior, undo)| ((*action).into(), (*prior).into(), (*undo).into()))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn a_read_back_step_is_completed_by_the_content_read() {
    // After a restart nothing is held: the prior of our own Secret is read back, then the step
    // gets the undo that content calls for.
    let mut older = owner();
    older.revision = 4;
    older.sha256 = [4; 32];
    let wanted = Arc::new(owner());
    let plan = plan_upsert(&wanted, &ns(&["a"]), &[written(&older, "a")], None).expect("plannable");
    let [Planned::ReadBack(action)] = plan.steps.as_slice() else {
        panic!("expected one read-back step: {:?}", plan.steps);
    };
    assert_eq!(action.location(), ("a", "regcred"));
    let read = Step::new(action.clone(), Prior::Ours(Arc::new(older)));
    assert_eq!(describe(&read.undo), "apply r4 into a/regcred, force");
    // The Secret vanished between the listing and the read: the undo deletes what we create.
    let vanished = Step::new(action.clone(), Prior::Absent);
    assert_eq!(describe(&vanished.undo), "delete a/regcred");
}

#[test]
fn an_apply_carries_the_payload_it_writes() {
    let mut renamed = owner();
    renamed.secret_name = "new-name".into();
    let wanted = Arc::new(renamed);
    let plan = plan_upsert(&wanted, &ns(&["a"]), &[], None).expect("plannable");
    let actions = plan.into_actions();
    let [Action::Apply { payload, .. }] = actions.as_slice() else {
        panic!("expected one apply: {actions:?}");
    };
    assert!(
        Arc::ptr_eq(payload, &wanted),
        "the apply writes the planned payload itself"
    );
    assert_eq!(actions[0].location(), ("a", "new-name"));
    // A repair writes the held payload too.
    let drift = check_drift(&wanted, "a", None).expect("deleted is drift");
    let Some(Action::Apply { payload, force, .. }) = drift.repair else {
        panic!("a deleted Owner Secret is recreated");
    };
    assert!(Arc::ptr_eq(&payload, &wanted) && !force);
}

#[test]
fn removal_table() {
    let owner_delete = written(&owner(), "a");
    let merge = written(&desired(CreationPolicy::Merge, DeletionPolicy::Delete), "b");
    let orphan = written(&desired(CreationPolicy::Orphan, DeletionPolicy::Delete), "c");
    let observed = vec![owner_delete, merge, orphan, foreign("d", "regcred")];
    let cases = [
        (
            DeletionPolicy::Delete,
            vec![
                Action::Delete {
                    namespace: "a".into(),
                    name: "regcred".into(),
                },
                Action::RemoveFields {
                    namespace: "b".into(),
                    name: "regcred".into(),
                },
                Action::Release {
                    namespace: "c".into(),
                    name: "regcred".into(),
                },
            ],
        ),
        (
            DeletionPolicy::Retain,
            ["a", "b", "c"]
                .iter()
                .map(|n| Action::Release {
                    namespace: (*n).into(),
                    name: "regcred".into(),
                })
                .collect(),
        ),
    ];
    for (policy, expected) in cases {
        assert_eq!(
            plan_removal("regcred", policy, &observed, None).into_actions(),
            expected,
            "{policy:?}"
        );
    }
    assert!(
        plan_removal("other", DeletionPolicy::Delete, &observed, None)
            .steps
            .is_empty()
    );
}

#[test]
fn drift_table() {
    let base = Arc::new(owner());
    let mut edited = written(&base, "a");
    edited.data.insert("token".into(), value_digest(b"edited"));
    let mut relabelled = written(&base, "a");
    relabelled.labels.remove(MANAGED_BY_LABEL);
    let mut extra_key = written(&base, "a");
    extra_key.data.insert("extra".into(), value_digest(b"x"));
    let merge = Arc::new(desired(CreationPolicy::Merge, DeletionPolicy::Retain));
    let mut immutable_edited = written(&base, "a");
    immutable_edited.immutable = true;
    immutable_edited
        .data
        .insert("token".into(), value_digest(b"other"));
    type Case<'a> = (
        &'a str,
        &'a Arc<DesiredSecret>,
        Option<ObservedSecret>,
        Option<Drift>,
    );
    let cases: Vec<Case<'_>> = vec![
        ("intact", &base, Some(written(&base, "a")), None),
        ("foreign extra key is not drift", &base, Some(extra_key), None),
        (
            "deleted: recreated",
            &base,
            None,
            Some(Drift {
                kind: DriftKind::Deleted,
                repair: Some(apply("a", false)),
            }),
        ),
        (
            "edited: forced repair",
            &base,
            Some(edited),
            Some(Drift {
                kind: DriftKind::Modified,
                repair: Some(apply("a", true)),
            }),
        ),
        (
            "label removed: repaired",
            &base,
            Some(relabelled),
            Some(Drift {
                kind: DriftKind::Modified,
                repair: Some(apply("a", true)),
            }),
        ),
        (
            "merge target deleted: not ours to recreate",
            &merge,
            None,
            Some(Drift {
                kind: DriftKind::Deleted,
                repair: None,
            }),
        ),
        (
            "immutable with other data: cannot repair",
            &base,
            Some(immutable_edited),
            Some(Drift {
                kind: DriftKind::Modified,
                repair: None,
            }),
        ),
    ];
    for (name, desired, observed, expected) in cases {
        assert_eq!(check_drift(desired, "a", observed.as_ref()), expected, "{name}");
    }
}

#[test]
fn namespaces_resolve_by_name_or_selector() {
    let cluster = vec![
        Namespace {
            name: "a".into(),
            labels: [("env".to_string(), "prod".to_string())].into(),
        },
        Namespace {
            name: "b".into(),
            labels: [("env".to_string(), "dev".to_string())].into(),
        },
        Namespace {
            name: "c".into(),
            labels: BTreeMap::new(),
        },
    ];
    let named = Targets::Namespaces(ns(&["a", "zz", "yy"]));
    let refusal = resolve_namespaces(&named, &cluster).expect_err("zz is missing");
    assert_eq!(
        (refusal.code, refusal.retryable),
        (ErrorCode::NamespaceMissing, true)
    );
    assert!(refusal.message.contains("zz, yy"), "{}", refusal.message);
    let selector = |operator, values: &[&str]| {
        Targets::Selector(Selector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![Requirement {
                key: "env".into(),
                operator,
                values: ns(values),
            }],
        })
    };
    let cases = [
        (selector(Operator::In, &["prod", "dev"]), ns(&["a", "b"])),
        (selector(Operator::NotIn, &["prod"]), ns(&["b", "c"])),
        (selector(Operator::Exists, &[]), ns(&["a", "b"])),
        (selector(Operator::DoesNotExist, &[]), ns(&["c"])),
        (
            Targets::Selector(Selector {
                match_labels: [("env".to_string(), "dev".to_string())].into(),
                match_expressions: vec![],
            }),
            ns(&["b"]),
        ),
    ];
    for (targets, expected) in cases {
        assert_eq!(
            resolve_namespaces(&targets, &cluster).expect("selector"),
            expected,
            "{targets:?}"
        );
    }
}

#[test]
fn debug_never_shows_secret_bytes() {
    let rendered = format!("{:?}", owner());
    assert!(!rendered.contains("s3cr3t"), "{rendered}");
    assert!(rendered.contains("redacted 6 bytes"), "{rendered}");
}

#[test]
fn the_fleet_secret_label_is_a_valid_label_value_for_every_key() {
    use super::fleet_secret_label_value;
    assert_eq!(fleet_secret_label_value("db-creds"), "db-creds");
    let max = "a".repeat(63);
    assert_eq!(fleet_secret_label_value(&max), max);
    // A DNS-1123 subdomain may be 253 characters; a label value only 63.
    let long = format!(
        "{}.x",
        "team-payments.prod.database-credentials-primary.".repeat(5)
    );
    let value = fleet_secret_label_value(&long);
    assert!(value.len() <= 63, "{value}");
    assert!(
        value.starts_with("team-payments.prod.database-credentials-primar"),
        "{value}"
    );
    let valid = |v: &str| {
        v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && v.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    assert!(valid(&value), "{value}");
    // A prefix ending in a dot is trimmed before the digest.
    let dotted = format!("{}.{}", "a".repeat(45), "b".repeat(30));
    let value = fleet_secret_label_value(&dotted);
    assert!(valid(&value) && !value.contains(".-"), "{value}");
    assert_ne!(
        fleet_secret_label_value(&format!("{long}y")),
        fleet_secret_label_value(&long)
    );
}

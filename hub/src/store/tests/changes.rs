//! Conformance of the change log (tail, pruning, wake-ups), leader election and the audit log.

use super::*;

pub(super) async fn change_log_tail(store: Store) {
    assert_eq!(store.latest_change().await.expect("latest"), 0);
    assert_eq!(store.changes_since(0, 10).await.expect("tail"), []);
    let one = store.append_change(ChangeKind::Spec, "db").await.expect("append");
    let two = store
        .append_change(ChangeKind::Revision, "db")
        .await
        .expect("append");
    let three = store
        .append_change(ChangeKind::Cluster, "eu-1")
        .await
        .expect("append");
    assert!(one < two && two < three);
    assert_eq!(store.latest_change().await.expect("latest"), three);
    let all = store.changes_since(0, 10).await.expect("tail");
    let summary: Vec<_> = all.iter().map(|c| (c.seq, c.kind, c.subject.as_str())).collect();
    assert_eq!(
        summary,
        [
            (one, ChangeKind::Spec, "db"),
            (two, ChangeKind::Revision, "db"),
            (three, ChangeKind::Cluster, "eu-1"),
        ]
    );
    let page = store.changes_since(one, 1).await.expect("tail");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].seq, two);
    assert_eq!(store.changes_since(three, 10).await.expect("tail"), []);
    for kind in [ChangeKind::Pin, ChangeKind::Rollout] {
        store.append_change(kind, "x").await.expect("append");
    }
    let kinds: Vec<_> = store
        .changes_since(three, 10)
        .await
        .expect("tail")
        .iter()
        .map(|c| c.kind.as_str())
        .collect();
    assert_eq!(kinds, ["pin", "rollout"]);
}

pub(super) async fn change_log_pruning_moves_the_horizon(store: Store) {
    assert_eq!(store.change_horizon().await.expect("horizon"), 0);
    assert_eq!(
        store.prune_changes(Utc::now(), 0).await.expect("prune"),
        0,
        "an empty log prunes nothing"
    );
    let mut seqs = Vec::new();
    for index in 0..5 {
        seqs.push(
            store
                .append_change(ChangeKind::Cluster, &format!("c-{index}"))
                .await
                .expect("append"),
        );
    }
    let past = Utc::now() - chrono::TimeDelta::hours(1);
    assert_eq!(
        store.prune_changes(past, 0).await.expect("prune"),
        0,
        "nothing that old"
    );
    assert_eq!(store.change_horizon().await.expect("horizon"), 0);

    let future = Utc::now() + chrono::TimeDelta::minutes(1);
    assert_eq!(
        store.prune_changes(future, 2).await.expect("prune"),
        3,
        "the 2 newest stay"
    );
    assert_eq!(store.change_horizon().await.expect("horizon"), seqs[2]);
    let left: Vec<i64> = store
        .changes_since(0, 10)
        .await
        .expect("tail")
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(left, seqs[3..]);
    assert_eq!(store.latest_change().await.expect("latest"), seqs[4]);

    assert_eq!(store.prune_changes(future, 2).await.expect("prune"), 0);
    assert_eq!(store.prune_changes(future, 0).await.expect("prune"), 2);
    assert_eq!(store.change_horizon().await.expect("horizon"), seqs[4]);
    assert_eq!(store.changes_since(0, 10).await.expect("tail"), []);
    assert_eq!(
        store.latest_change().await.expect("latest"),
        seqs[4],
        "a cursor taken from an emptied log is not behind the horizon"
    );
    // Sequence numbers are not reused after the log was emptied.
    let next = store.append_change(ChangeKind::Spec, "db").await.expect("append");
    assert!(next > seqs[4], "{next} after {}", seqs[4]);
    assert_eq!(store.latest_change().await.expect("latest"), next);
}

pub(super) async fn change_wakeups(store: Store) {
    let wakeups = store.change_wakeups().await.expect("subscribe");
    let mut wakeups = wakeups.changes;
    let seq = store.append_change(ChangeKind::Spec, "db").await.expect("append");
    match store.backend() {
        "postgres" => {
            tokio::time::timeout(Duration::from_secs(30), wakeups.recv())
                .await
                .expect("a wake-up within 30 s")
                .expect("channel open");
            // The wake-up says "read from your cursor": the entry is there.
            assert_eq!(store.changes_since(0, 10).await.expect("tail")[0].seq, seq);
        }
        _ => assert_eq!(
            wakeups.try_recv(),
            Err(mpsc::error::TryRecvError::Empty),
            "SQLite never signals, and the channel stays open"
        ),
    }
}

pub(super) async fn status_writes_wake_other_replicas(store: Store) {
    let mut wakeups = store.change_wakeups().await.expect("subscribe");
    let id = cluster(&store, "eu-1").await.id;
    store
        .upsert_status_batch(&[status_row(id, "regcred", 3, 1)])
        .await
        .expect("status");
    match store.backend() {
        "postgres" => {
            tokio::time::timeout(Duration::from_secs(30), wakeups.status.recv())
                .await
                .expect("a status wake-up within 30 s")
                .expect("channel open");
            assert_eq!(
                wakeups.changes.try_recv(),
                Err(mpsc::error::TryRecvError::Empty),
                "a status write is not a change-log entry"
            );
        }
        _ => assert_eq!(
            wakeups.status.try_recv(),
            Err(mpsc::error::TryRecvError::Empty),
            "SQLite never signals, and the channel stays open"
        ),
    }
}

pub(super) async fn change_wakeups_survive_a_lost_listener(store: Store) {
    if store.backend() == "sqlite" {
        return; // single node: no listener
    }
    let mut wakeups = store.change_wakeups().await.expect("subscribe").changes;
    // Kill the listener's connection; the task reconnects, re-LISTENs, then wakes the reader.
    let killed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let killed = inspect!(
                store,
                (i64,),
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
                    .to_owned()
            );
            if killed[0].0 > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        killed.is_ok(),
        "the listener's session is visible in pg_stat_activity"
    );
    tokio::time::timeout(Duration::from_secs(30), wakeups.recv())
        .await
        .expect("a wake-up after the reconnect")
        .expect("channel open");
    // And notifications flow again on the new connection.
    store.append_change(ChangeKind::Pin, "db").await.expect("append");
    tokio::time::timeout(Duration::from_secs(30), wakeups.recv())
        .await
        .expect("a wake-up for the new change")
        .expect("channel open");
}

pub(super) async fn leader_election(store: Store) {
    if store.backend() == "sqlite" {
        let one = store.try_lead("kv").await.expect("lead");
        let two = store.try_lead("kv").await.expect("lead");
        assert!(one.is_some() && two.is_some(), "single node: always the leader");
        assert_eq!(one.expect("some").backend_pid(), None);
        return;
    }
    let (first, second) = tokio::join!(store.try_lead("kv"), store.try_lead("kv"));
    let (first, second) = (first.expect("try"), second.expect("try"));
    assert!(first.is_some() != second.is_some(), "exactly one wins");
    let leader = first.or(second).expect("a leader");
    // Another key is independent.
    let other = store.try_lead("other").await.expect("try").expect("free key");
    assert!(store.try_lead("kv").await.expect("try").is_none());

    // Stepping down releases the lock at once.
    leader.step_down().await;
    let leader = store.try_lead("kv").await.expect("try").expect("released");

    // Dropping the guard releases it too (in the background): wait for it by retrying.
    drop(leader);
    let leader = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(leader) = store.try_lead("kv").await.expect("try") {
                break leader;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the dropped guard released the lock");

    // Losing the connection is reported by lost().
    let pid = leader.backend_pid().expect("postgres leadership");
    let killed = inspect!(store, (bool,), "SELECT pg_terminate_backend($1)".to_owned(), pid);
    assert_eq!(killed, [(true,)]);
    tokio::time::timeout(Duration::from_secs(30), leader.lost())
        .await
        .expect("lost() resolves once the connection died");
    let leader = store.try_lead("kv").await.expect("try").expect("lock freed");
    drop((leader, other));
}

pub(super) async fn audit_returns_exactly_what_was_passed(store: Store) {
    let events = [
        ("alice", "cluster.add", "eu-1", at(1)),
        ("bob", "spec.apply", "FleetSecret/db", at(2)),
        ("carol", "pin.set", "db/password@v7", at(3)),
    ];
    for (actor, action, subject, when) in events {
        store
            .append_audit(actor, action, subject, when)
            .await
            .expect("audit");
    }
    let read = store.audit(10).await.expect("read");
    let expected: Vec<AuditEvent> = events
        .iter()
        .rev()
        .map(|(actor, action, subject, when)| AuditEvent {
            actor: (*actor).to_owned(),
            action: (*action).to_owned(),
            subject: (*subject).to_owned(),
            at: *when,
        })
        .collect();
    assert_eq!(read, expected, "newest first, exactly as passed");
    assert_eq!(store.audit(1).await.expect("read"), expected[..1]);
    let columns = inspect!(store, (i64,), "SELECT count(*) FROM audit_events".to_owned());
    assert_eq!(columns, [(3,)]);
}

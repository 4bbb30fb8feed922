//! Conformance of `sync_status` and the dashboard views over it: one statement per batch, upsert
//! semantics, the rollout rollup, liveness and rows served elsewhere.

use super::*;

pub(super) async fn status_batch_of_10000_rows_is_one_call(store: Store) {
    const CLUSTERS: usize = 200;
    const SECRETS: usize = 50;
    let mut ids = Vec::with_capacity(CLUSTERS);
    for index in 0..CLUSTERS {
        ids.push(cluster(&store, &format!("cluster-{index:04}")).await.id);
    }
    let mut rows = Vec::with_capacity(CLUSTERS * SECRETS);
    for id in &ids {
        for secret in 0..SECRETS {
            rows.push(status_row(*id, &format!("secret-{secret:02}"), 7, 1));
        }
    }
    let before = store.status_statements();
    let started = Instant::now();
    assert_eq!(store.upsert_status_batch(&rows).await.expect("insert"), 10_000);
    let insert_time = started.elapsed();
    let insert_statements = store.status_statements() - before;
    assert_eq!(
        store.lagging_vacuums(),
        0,
        "10,000 rows: below LAGGING_VACUUM_ROWS"
    );

    let updates: Vec<StatusRow> = rows.into_iter().map(|row| applied(row, 7, 2)).collect();
    let started = Instant::now();
    assert_eq!(store.upsert_status_batch(&updates).await.expect("update"), 10_000);
    let update_time = started.elapsed();
    let update_statements = store.status_statements() - before - insert_statements;

    // Postgres: one unnest statement; SQLite: one multi-row statement per 3,276 rows (bind limit).
    let expected = match store.backend() {
        "postgres" => 1,
        _ => 10_000u64.div_ceil(32_766 / 10),
    };
    assert_eq!((insert_statements, update_statements), (expected, expected));
    // Postgres: the acks emptied `sync_lagging` of 10,000 rows; at 20,000 rows written the store
    // vacuumed it (SQLite keeps no such copy).
    assert_eq!(crate::store::LAGGING_VACUUM_ROWS, 20_000);
    let vacuums = if store.backend() == "postgres" { 1 } else { 0 };
    assert_eq!(store.lagging_vacuums(), vacuums);
    let lagging = inspect!(store, (i64,), "SELECT count(*) FROM keyfleet_lagging".to_owned());
    assert_eq!(lagging, [(0,)]);
    let all = store.all_status().await.expect("read");
    assert_eq!(all.len(), 10_000);
    assert!(all.iter().all(|s| s.state == SyncState::Applied
        && s.applied_revision == Some(7)
        && s.applied_at == Some(at(2))
        && s.updated == at(2)));
    eprintln!(
        "[{}] 10,000-row status batch: insert {insert_time:?} ({insert_statements} statements), \
         update {update_time:?} ({update_statements} statements)",
        store.backend()
    );
}

pub(super) async fn status_semantics(store: Store) {
    let a = cluster(&store, "a").await;
    let b = cluster(&store, "b").await;
    store
        .upsert_status_batch(&[status_row(a.id, "db", 5, 1), status_row(b.id, "db", 5, 2)])
        .await
        .expect("pending");
    let first = store.status_for_cluster(a.id).await.expect("read");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].cluster_name, "a");
    assert_eq!(first[0].applied_at, None);

    // Applied for a new revision: applied_at = at.
    store
        .upsert_status_batch(&[applied(status_row(a.id, "db", 5, 0), 5, 10)])
        .await
        .expect("ack");
    // Re-ack of the same revision keeps the first applied_at.
    store
        .upsert_status_batch(&[applied(status_row(a.id, "db", 5, 0), 5, 20)])
        .await
        .expect("re-ack");
    let read = &store.status_for_cluster(a.id).await.expect("read")[0];
    assert_eq!((read.applied_at, read.updated), (Some(at(10)), at(20)));

    // A NACK of revision 6 keeps revision 5 applied; the error is cut to 1,024 bytes on a
    // character boundary.
    let long_error = format!("x{}", "é".repeat(600));
    let mut nack = status_row(a.id, "db", 6, 30);
    nack.applied_revision = Some(5);
    nack.applied_sha256 = Some(digest("rev-5"));
    nack.state = SyncState::Error;
    nack.last_error = Some(long_error.clone());
    nack.attempts = 3;
    // Same pair twice in one batch: the later row wins.
    let mut earlier = nack.clone();
    earlier.attempts = 1;
    store.upsert_status_batch(&[earlier, nack]).await.expect("nack");
    let read = &store.status_for_cluster(a.id).await.expect("read")[0];
    assert_eq!(read.state, SyncState::Error);
    assert_eq!(read.attempts, 3);
    assert_eq!(read.applied_revision, Some(5));
    assert_eq!(read.applied_at, Some(at(10)));
    let stored_error = read.last_error.clone().expect("error kept");
    assert_eq!(stored_error.len(), 1023);
    assert!(long_error.starts_with(&stored_error));

    // Then revision 6 is applied: applied_at moves.
    store
        .upsert_status_batch(&[applied(status_row(a.id, "db", 6, 0), 6, 40)])
        .await
        .expect("ack 6");
    let read = &store.status_for_cluster(a.id).await.expect("read")[0];
    assert_eq!((read.applied_revision, read.applied_at), (Some(6), Some(at(40))));
    let applied_digest = read.applied_digest.as_ref().expect("applied digest");
    assert_eq!(applied_digest.key(), Some(store.digest_keys().current()));
    assert!(store.digest_keys().matches(applied_digest, &digest("rev-6")));

    store
        .upsert_status_batch(&[status_row(a.id, "api", 6, 3), status_row(b.id, "api", 6, 4)])
        .await
        .expect("more");
    let for_db = store.status_for_fleet_secret("db").await.expect("read");
    assert_eq!(
        for_db.iter().map(|s| s.cluster_name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let lagging = store.lagging(None, 10).await.expect("lagging");
    let summary: Vec<_> = lagging
        .iter()
        .map(|s| (s.cluster_name.as_str(), s.fleet_secret.as_str()))
        .collect();
    assert_eq!(summary, [("b", "db"), ("a", "api"), ("b", "api")], "oldest first");
    assert_eq!(store.lagging(Some("api"), 1).await.expect("lagging").len(), 1);
    assert_eq!(store.all_status().await.expect("all").len(), 4);

    store.delete_status(b.id, "db").await.expect("delete");
    assert_eq!(store.status_for_fleet_secret("db").await.expect("read").len(), 1);
    assert_eq!(store.upsert_status_batch(&[]).await.expect("empty"), 0);
    assert!(matches!(
        store
            .upsert_status_batch(&[status_row(ClusterId(uuid::Uuid::new_v4()), "db", 1, 1)])
            .await,
        Err(StoreError::NotFound { .. })
    ));
    // Deleting a cluster's rows goes with the cluster only through revocation flows; rows of a
    // revoked cluster stay visible for dashboards.
    store.revoke_cluster(b.id).await.expect("revoke");
    assert_eq!(store.status_for_cluster(b.id).await.expect("read").len(), 1);
}

/// keyfleet_rollout (a trigger-maintained rollup on Postgres, an aggregate on SQLite) equals the
/// aggregate of the status rows after inserts, updates that move rows between revisions, and
/// deletes.
pub(super) async fn rollout_view_matches_the_status_rows(store: Store) {
    let mut ids = Vec::new();
    for index in 0..6 {
        ids.push(cluster(&store, &format!("c{index}")).await.id);
    }
    for id in &ids[..3] {
        store
            .record_connect(*id, "r1", "0.1.0", at(0))
            .await
            .expect("connect");
    }
    let check = |step: &'static str| {
        let store = store.clone();
        let ids = ids.clone();
        async move {
            let online: Vec<ClusterId> = store
                .list_clusters(None)
                .await
                .expect("clusters")
                .into_iter()
                .filter(|c| c.connected_replica.is_some())
                .map(|c| c.id)
                .collect();
            let mut expected = std::collections::BTreeMap::<(String, i64), [i64; 5]>::new();
            for s in store.all_status().await.expect("status") {
                let on_revision = s.applied_revision == Some(s.desired_revision);
                let counts = expected
                    .entry((s.fleet_secret.clone(), s.desired_revision as i64))
                    .or_default();
                counts[0] += 1;
                if on_revision && s.state == SyncState::Applied {
                    counts[1] += 1;
                } else if s.state == SyncState::Error {
                    counts[3] += 1;
                } else {
                    counts[2] += 1;
                }
                if !on_revision && !online.contains(&s.cluster) {
                    counts[4] += 1;
                }
            }
            let expected: Vec<(String, i64, i64, i64, i64, i64, i64)> = expected
                .into_iter()
                .map(|((fs, rev), c)| (fs, rev, c[0], c[1], c[2], c[3], c[4]))
                .collect();
            let found = inspect!(
                store,
                (String, i64, i64, i64, i64, i64, i64),
                "SELECT fleet_secret, revision, targeted, applied, pending, error, offline
                 FROM keyfleet_rollout ORDER BY fleet_secret, revision"
                    .to_owned()
            );
            assert_eq!(found, expected, "after {step}");

            // keyfleet_lagging holds exactly the rows off their desired revision (on Postgres
            // from `sync_lagging`, kept by triggers).
            let mut expected: Vec<(String, String, i64, Option<i64>, String, bool)> = store
                .all_status()
                .await
                .expect("status")
                .into_iter()
                .filter(|s| s.applied_revision != Some(s.desired_revision))
                .map(|s| {
                    let index = ids.iter().position(|id| *id == s.cluster).expect("known");
                    (
                        format!("c{index}"),
                        s.fleet_secret,
                        s.desired_revision as i64,
                        s.applied_revision.map(|r| r as i64),
                        s.state.as_str().to_owned(),
                        online.contains(&s.cluster),
                    )
                })
                .collect();
            expected.sort();
            let mut found = inspect!(
                store,
                (String, String, i64, Option<i64>, String, bool),
                "SELECT cluster, fleet_secret, desired_revision, applied_revision, state, online
                 FROM keyfleet_lagging"
                    .to_owned()
            );
            found.sort();
            assert_eq!(found, expected, "lagging after {step}");
        }
    };
    let mut rows = Vec::new();
    for id in &ids {
        for secret in ["api", "db"] {
            rows.push(status_row(*id, secret, 1, 1));
        }
    }
    store.upsert_status_batch(&rows).await.expect("insert");
    check("insert").await;

    let acks: Vec<StatusRow> = rows[..8].iter().cloned().map(|row| applied(row, 1, 2)).collect();
    let mut nack = rows[9].clone();
    nack.state = SyncState::Error;
    nack.last_error = Some("refused".to_owned());
    let mut batch = acks;
    batch.push(nack);
    store.upsert_status_batch(&batch).await.expect("acks");
    check("acks and a nack").await;

    // Revision 2 of db for half the fleet: those rows move to another group.
    let moved: Vec<StatusRow> = rows
        .iter()
        .filter(|row| row.fleet_secret == "db")
        .take(3)
        .map(|row| {
            let mut row = applied(row.clone(), 1, 3);
            row.desired_revision = 2;
            row.state = SyncState::Pending;
            row
        })
        .collect();
    store.upsert_status_batch(&moved).await.expect("move");
    check("moving rows to revision 2").await;

    let done: Vec<StatusRow> = moved.into_iter().map(|row| applied(row, 2, 4)).collect();
    store.upsert_status_batch(&done).await.expect("ack 2");
    check("acks of revision 2").await;

    // Clusters going offline and online (on Postgres `sync_lagging.online` follows by trigger):
    // a disconnect, a connect, a move to another replica, a replica's restart clearing its own.
    store
        .record_disconnect(ids[0], "r1", at(30))
        .await
        .expect("disconnect");
    store
        .record_connect(ids[4], "r2", "0.1.0", at(30))
        .await
        .expect("connect");
    check("a disconnect and a connect").await;
    store
        .record_connect(ids[1], "r2", "0.1.0", at(31))
        .await
        .expect("move to r2");
    store.touch_last_seen(&ids, at(32)).await.expect("liveness");
    check("a move between replicas and a liveness refresh").await;
    assert_eq!(store.clear_replica("r2").await.expect("clear"), 2);
    check("a replica clearing its connections").await;
    store
        .record_connect(ids[5], "r1", "0.1.0", at(33))
        .await
        .expect("connect");
    check("a connect after the clear").await;

    store.delete_status(ids[5], "api").await.expect("delete");
    store.delete_status(ids[5], "db").await.expect("delete");
    check("deletes").await;
}

/// What a replica polls while a rollout progresses: every cluster's serving replica and last
/// seen time, and the status rows of clusters not served by itself.
pub(super) async fn liveness_and_status_served_elsewhere(store: Store) {
    let here = cluster(&store, "here").await;
    let there = cluster(&store, "there").await;
    let nowhere = cluster(&store, "nowhere").await;
    let never = cluster(&store, "never").await;
    store
        .record_connect(here.id, "r1", "0.1.0", at(10))
        .await
        .expect("connect");
    store
        .record_connect(there.id, "r2", "0.1.0", at(11))
        .await
        .expect("connect");
    store
        .record_connect(nowhere.id, "r1", "0.1.0", at(12))
        .await
        .expect("connect");
    store
        .record_disconnect(nowhere.id, "r1", at(13))
        .await
        .expect("disconnect");

    let mut liveness = store.cluster_liveness().await.expect("liveness");
    liveness.sort_by_key(|entry| entry.id.0);
    let mut expected = vec![
        ClusterLiveness {
            id: here.id,
            connected_replica: Some("r1".to_owned()),
            last_seen: Some(at(10)),
        },
        ClusterLiveness {
            id: there.id,
            connected_replica: Some("r2".to_owned()),
            last_seen: Some(at(11)),
        },
        ClusterLiveness {
            id: nowhere.id,
            connected_replica: None,
            last_seen: Some(at(13)),
        },
        ClusterLiveness {
            id: never.id,
            connected_replica: None,
            last_seen: None,
        },
    ];
    expected.sort_by_key(|entry| entry.id.0);
    assert_eq!(liveness, expected);

    let rows: Vec<StatusRow> = [here.id, there.id, nowhere.id, never.id]
        .into_iter()
        .flat_map(|id| [status_row(id, "db", 3, 20), status_row(id, "api", 3, 20)])
        .collect();
    store.upsert_status_batch(&rows).await.expect("status");
    let mut elsewhere: Vec<(ClusterId, String)> = store
        .status_served_elsewhere("db", "r1")
        .await
        .expect("elsewhere")
        .into_iter()
        .map(|s| (s.cluster, s.fleet_secret))
        .collect();
    elsewhere.sort();
    let mut expected: Vec<(ClusterId, String)> = [there.id, nowhere.id, never.id]
        .into_iter()
        .map(|id| (id, "db".to_owned()))
        .collect();
    expected.sort();
    assert_eq!(elsewhere, expected, "every row of db but r1's cluster");
    let of_r2 = store
        .status_served_elsewhere("db", "r2")
        .await
        .expect("elsewhere");
    assert_eq!(of_r2.len(), 3);
    assert!(of_r2.iter().all(|s| s.cluster != there.id));
    assert!(
        store
            .status_served_elsewhere("unknown", "r1")
            .await
            .expect("elsewhere")
            .is_empty()
    );
}

pub(super) async fn dashboard_views(store: Store) {
    let mut ids = Vec::new();
    for name in ["c1", "c2", "c3", "c4"] {
        ids.push(cluster(&store, name).await.id);
    }
    // c1, c2 online; c3, c4 offline.
    for id in &ids[..2] {
        store
            .record_connect(*id, "r1", "0.1.0", at(0))
            .await
            .expect("connect");
    }
    let mut rows = vec![
        applied(status_row(ids[0], "db", 8, 0), 8, 10),
        applied(status_row(ids[1], "db", 8, 0), 8, 12),
        status_row(ids[2], "db", 8, 5),
        applied(status_row(ids[0], "api", 3, 0), 3, 10),
        applied(status_row(ids[1], "api", 3, 0), 3, 10),
        applied(status_row(ids[2], "api", 3, 0), 3, 10),
        applied(status_row(ids[3], "api", 3, 0), 3, 10),
    ];
    let mut failed = status_row(ids[3], "db", 8, 6);
    failed.state = SyncState::Error;
    failed.applied_revision = Some(7);
    failed.last_error = Some("namespace \"x\" not found".to_owned());
    rows.push(failed);
    store.upsert_status_batch(&rows).await.expect("status");

    let rollout = inspect!(
        store,
        (String, i64, i64, i64, i64, i64, i64),
        "SELECT fleet_secret, revision, targeted, applied, pending, error, offline
         FROM keyfleet_rollout ORDER BY fleet_secret, revision"
            .to_owned()
    );
    assert_eq!(
        rollout,
        [
            // offline: targeted clusters not on the revision yet and without a stream.
            ("api".to_owned(), 3, 4, 4, 0, 0, 0),
            ("db".to_owned(), 8, 4, 2, 1, 1, 2),
        ]
    );
    let first_last = inspect!(
        store,
        (String,),
        "SELECT fleet_secret FROM keyfleet_rollout
         WHERE first_applied_at IS NOT NULL AND first_applied_at < last_applied_at"
            .to_owned()
    );
    assert_eq!(first_last, [("db".to_owned(),)], "db applied at 10 and 12");

    let cluster_sync = inspect!(
        store,
        (String, bool, i64, i64, bool, Option<String>),
        "SELECT cluster, online, lagging, errors, in_sync, last_error
         FROM keyfleet_cluster_sync ORDER BY cluster"
            .to_owned()
    );
    assert_eq!(
        cluster_sync,
        [
            ("c1".to_owned(), true, 0, 0, true, None),
            ("c2".to_owned(), true, 0, 0, true, None),
            ("c3".to_owned(), false, 1, 0, false, None),
            (
                "c4".to_owned(),
                false,
                1,
                1,
                false,
                Some("namespace \"x\" not found".to_owned())
            ),
        ]
    );
    let lag = inspect!(
        store,
        (String, Option<f64>),
        "SELECT cluster, lag_seconds FROM keyfleet_cluster_sync ORDER BY cluster".to_owned()
    );
    assert_eq!(lag[0].1, None, "in sync: no lag");
    // Rows written at at(5) (2023): the lag is now - then.
    let c3_lag = lag[2].1.expect("c3 lags");
    let expected = (Utc::now() - at(5)).num_seconds() as f64;
    assert!((c3_lag - expected).abs() < 120.0, "{c3_lag} vs {expected}");

    let lagging = inspect!(
        store,
        (String, String, i64, Option<i64>, String, bool),
        "SELECT cluster, fleet_secret, desired_revision, applied_revision, state, online
         FROM keyfleet_lagging ORDER BY updated_at, cluster, fleet_secret"
            .to_owned()
    );
    assert_eq!(
        lagging,
        [
            (
                "c3".to_owned(),
                "db".to_owned(),
                8,
                None,
                "pending".to_owned(),
                false
            ),
            (
                "c4".to_owned(),
                "db".to_owned(),
                8,
                Some(7),
                "error".to_owned(),
                false
            ),
        ]
    );
}

pub(super) async fn status_inputs_move_with_every_status_input(store: Store) {
    let start = store.status_inputs().await.expect("inputs");
    assert_eq!(
        store.status_inputs().await.expect("inputs"),
        start,
        "reading moves nothing"
    );
    let cluster = store
        .create_cluster("prod-1", &labels(&[]))
        .await
        .expect("cluster");
    let created = store.status_inputs().await.expect("inputs");
    assert!(created.1 > start.1, "a new cluster: {start:?} → {created:?}");
    store
        .record_connect(cluster.id, "hub-a", "test", at(10))
        .await
        .expect("connect");
    let connected = store.status_inputs().await.expect("inputs");
    assert!(connected.1 > created.1, "a connection");
    store
        .upsert_status_batch(&[status_row(cluster.id, "regcred", 1, 11)])
        .await
        .expect("batch");
    let acked = store.status_inputs().await.expect("inputs");
    assert!(acked.1 > connected.1, "a status flush");
    assert_eq!(acked.0, start.0, "no change-log entry yet");
    store
        .append_change(ChangeKind::Pin, "regcred/acr-pull")
        .await
        .expect("change");
    let changed = store.status_inputs().await.expect("inputs");
    assert!(changed.0 > acked.0, "a change-log entry");
    assert_eq!(store.status_inputs().await.expect("inputs"), changed, "still");
}

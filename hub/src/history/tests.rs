use chrono::{TimeZone as _, Utc};

use super::*;
use crate::domain::{ClusterId, Sha256};
use crate::fleet::NackCode;
use crate::store::{HistoryQuery, Store};

async fn store() -> Store {
    let store = Store::connect("sqlite::memory:").await.expect("store");
    store.migrate().await.expect("migrate");
    store
}

fn at(second: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 4, 10, 0, second)
        .single()
        .expect("time")
}

fn config() -> HistoryConfig {
    HistoryConfig {
        replica: "hub-a".to_owned(),
        ..HistoryConfig::default()
    }
}

#[tokio::test]
async fn acks_refusals_removals_and_drift_are_written_in_one_flush_and_read_back() {
    let store = store().await;
    let cluster = store
        .create_cluster("prod-eu-1", &Default::default())
        .await
        .expect("cluster")
        .id;
    let mut writer = HistoryWriter::new(store.clone(), config());
    writer.handle(FleetEvent::Acked {
        cluster,
        key: "regcred".to_owned(),
        revision: 3,
        sha256: Sha256::of(b"x"),
        at: at(1),
    });
    writer.handle(FleetEvent::Nacked {
        cluster,
        key: "regcred".to_owned(),
        revision: 4,
        code: NackCode::Forbidden,
        retryable: true,
        message: "secrets \"regcred\" is forbidden".to_owned(),
        attempts: 1,
        at: at(2),
    });
    writer.handle(FleetEvent::Drift {
        cluster,
        key: "regcred".to_owned(),
        namespace: "ci".to_owned(),
        kind: DriftKind::Deleted,
        revision: 3,
        failure: None,
        at: at(3),
    });
    writer.handle(FleetEvent::Drift {
        cluster,
        key: "regcred".to_owned(),
        namespace: "default".to_owned(),
        kind: DriftKind::Modified,
        revision: 3,
        failure: Some("forbidden: secrets \"regcred\" is forbidden".to_owned()),
        at: at(3),
    });
    writer.handle(FleetEvent::Removed {
        cluster,
        key: "old".to_owned(),
        at: at(4),
    });
    writer.handle(FleetEvent::Disconnected { cluster, at: at(5) });
    assert_eq!(writer.buffered(), 5, "connect and disconnect are not history");
    writer.flush().await;
    assert_eq!(writer.buffered(), 0);

    let all = store
        .history(&HistoryQuery {
            limit: 10,
            ..HistoryQuery::default()
        })
        .await
        .expect("history");
    let rows: Vec<(&str, &str, u64, HistoryOutcome, Option<&str>)> = all
        .iter()
        .map(|row| {
            (
                row.cluster.as_str(),
                row.fleet_secret.as_str(),
                row.revision,
                row.outcome,
                row.error.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("prod-eu-1", "old", 0, HistoryOutcome::Removed, None),
            (
                "prod-eu-1",
                "regcred",
                4,
                HistoryOutcome::Refused,
                Some("forbidden: secrets \"regcred\" is forbidden")
            ),
            ("prod-eu-1", "regcred", 3, HistoryOutcome::Applied, None),
        ],
        "newest first"
    );
    assert!(all.iter().all(|row| row.replica == "hub-a"));
    let regcred = store
        .history(&HistoryQuery {
            fleet_secret: Some("regcred".to_owned()),
            cluster: Some("prod-eu-1".to_owned()),
            since: Some(at(2)),
            limit: 10,
        })
        .await
        .expect("filtered");
    assert_eq!(regcred.len(), 1, "{regcred:?}");
    let drift = store
        .drift(&HistoryQuery {
            limit: 10,
            ..HistoryQuery::default()
        })
        .await
        .expect("drift");
    assert_eq!(drift.len(), 2);
    let ci = drift.iter().find(|row| row.namespace == "ci").expect("ci");
    assert_eq!(
        (
            ci.cluster.as_str(),
            ci.kind.as_str(),
            ci.revision,
            ci.failure.as_deref()
        ),
        ("prod-eu-1", "deleted", 3, None)
    );
    let default = drift
        .iter()
        .find(|row| row.namespace == "default")
        .expect("default");
    assert_eq!(
        default.failure.as_deref(),
        Some("forbidden: secrets \"regcred\" is forbidden")
    );
    let reach = store.revision_reach("regcred").await.expect("reach");
    assert_eq!(
        (reach[&3].applied, reach[&3].refused, reach[&3].first_applied),
        (1, 0, Some(at(1)))
    );
    assert_eq!(
        (reach[&4].applied, reach[&4].refused, reach[&4].last_applied),
        (0, 1, None)
    );
    let counts = store.drift_counts(at(0)).await.expect("counts");
    assert_eq!(
        counts.get("regcred"),
        Some(&crate::store::DriftCount {
            reported: 2,
            unrepaired: 1
        })
    );
    assert!(store.drift_counts(at(4)).await.expect("counts").is_empty());
    assert_eq!(
        store.prune_history(at(4)).await.expect("prune"),
        4,
        "older than 10:00:04"
    );
}

#[tokio::test]
async fn a_full_buffer_drops_the_oldest_and_counts_them() {
    let store = store().await;
    let mut writer = HistoryWriter::new(
        store,
        HistoryConfig {
            max_buffered: 3,
            ..config()
        },
    );
    let cluster = ClusterId(uuid::Uuid::new_v4());
    for revision in 1..=5 {
        writer.handle(FleetEvent::Acked {
            cluster,
            key: "regcred".to_owned(),
            revision,
            sha256: Sha256::of(b"x"),
            at: at(1),
        });
    }
    assert_eq!(writer.buffered(), 3);
    assert_eq!(
        writer
            .history
            .iter()
            .map(|entry| entry.revision)
            .collect::<Vec<_>>(),
        [3, 4, 5],
        "the newest are kept"
    );
    assert_eq!(writer.metrics.dropped.get(), 2);
}

#[tokio::test]
async fn entries_are_written_within_the_flush_interval_and_at_shutdown() {
    let store = store().await;
    let cluster = store
        .create_cluster("prod-eu-2", &Default::default())
        .await
        .expect("cluster")
        .id;
    let writer = HistoryWriter::new(
        store.clone(),
        HistoryConfig {
            flush_interval: Duration::from_millis(50),
            ..config()
        },
    );
    let (events, received) = mpsc::channel(16);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(writer.run_until(received, async {
        let _ = stopped.await;
    }));
    events
        .send(FleetEvent::Acked {
            cluster,
            key: "regcred".to_owned(),
            revision: 1,
            sha256: Sha256::of(b"x"),
            at: at(1),
        })
        .await
        .expect("send");
    let query = HistoryQuery {
        limit: 10,
        ..HistoryQuery::default()
    };
    // Written by the timer alone (nothing else happens): wait for the row, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while store.history(&query).await.expect("history").is_empty() {
        assert!(std::time::Instant::now() < deadline, "not flushed within 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    events
        .send(FleetEvent::Removed {
            cluster,
            key: "regcred".to_owned(),
            at: at(2),
        })
        .await
        .expect("send");
    let _ = stop.send(());
    task.await.expect("writer");
    assert_eq!(
        store.history(&query).await.expect("history").len(),
        2,
        "flushed at shutdown"
    );
}

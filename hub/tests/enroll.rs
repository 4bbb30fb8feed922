//! Enrollment and status against real Postgres: a token is traded once for a credential that
//! opens the Sync stream; acks and NACKs reach the store in batches.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use chrono::Utc;
use keyfleet_hub::domain::{Labels, Sha256, SyncState};
use keyfleet_hub::status::StatusConfig;
use keyfleet_hub::sync::admin::new_enrollment_token as new_token;
use keyfleet_proto::v1::{self, agent_message};
use support::*;
use tonic::Code;

fn status_config() -> StatusConfig {
    StatusConfig {
        replica: "replica-test".to_owned(),
        flush_interval: Duration::from_millis(100),
        flush_rows: 1_000,
        liveness_interval: Duration::from_secs(300),
        undelivered_after: Duration::from_secs(300),
        detector_interval: Duration::from_secs(30),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_enrolls_once_and_its_credential_opens_the_stream() {
    let db = TestDb::create().await;
    let store = db.store.clone();
    let (hub, _view) = Hub::start_with_store(store.clone(), status_config()).await;
    let cluster = store.create_cluster("eu-1", &Labels::new()).await.unwrap();
    let token = new_token();
    store
        .issue_enrollment_token(
            cluster.id,
            &Sha256::of(token.as_bytes()),
            Utc::now() + chrono::Duration::hours(1),
        )
        .await
        .unwrap();

    let enrolled = keyfleet_testkit::agent::enroll(&hub.endpoint, &token)
        .await
        .unwrap();
    assert_eq!(enrolled.cluster_name, "eu-1");
    assert_eq!(enrolled.cluster_id, cluster.id.to_string());
    assert!(enrolled.credential.starts_with("kfc_"));
    assert_eq!(enrolled.credential.len(), 47);
    // Only the hash is stored, and the in-memory index knows it.
    let stored = store.active_credentials().await.unwrap();
    assert_eq!(
        stored,
        vec![(Sha256::of(enrolled.credential.as_bytes()), cluster.id)]
    );
    assert_eq!(hub.credentials.lookup(&enrolled.credential), Some(cluster.id));
    // Other replicas learn about it from the change log.
    let changes = store.changes_since(0, 100).await.unwrap();
    assert!(
        changes
            .iter()
            .any(|change| change.kind == keyfleet_hub::store::ChangeKind::Cluster
                && change.subject == "eu-1"),
        "{changes:?}"
    );

    // The same token again within the replay window, as an agent whose reply was lost retries:
    // a fresh credential that replaces the undelivered one, audited as a replay.
    let replayed = keyfleet_testkit::agent::enroll(&hub.endpoint, &token)
        .await
        .unwrap();
    assert_eq!(replayed.cluster_id, cluster.id.to_string());
    assert_ne!(replayed.credential, enrolled.credential);
    assert_eq!(
        hub.credentials.lookup(&enrolled.credential),
        None,
        "the first credential is replaced"
    );
    assert_eq!(hub.credentials.lookup(&replayed.credential), Some(cluster.id));
    assert_eq!(
        store.active_credentials().await.unwrap(),
        vec![(Sha256::of(replayed.credential.as_bytes()), cluster.id)]
    );
    let audit = store.audit(10).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|event| event.action == "enroll.replay" && event.subject == "eu-1"),
        "{audit:?}"
    );
    let enrolled = replayed;

    // Once the window is over the used token is refused, without echoing it.
    {
        use sqlx::{Connection as _, Executor as _};
        let mut connection = sqlx::PgConnection::connect(&db.url()).await.unwrap();
        connection
            .execute("UPDATE enrollment_tokens SET used_at = now() - interval '11 minutes'")
            .await
            .unwrap();
    }
    let again = keyfleet_testkit::agent::enroll(&hub.endpoint, &token)
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::Unauthenticated);
    assert!(again.message().contains("already used"), "{again:?}");
    assert!(!again.message().contains(&token));

    // Unknown, expired and malformed tokens.
    let unknown = keyfleet_testkit::agent::enroll(&hub.endpoint, &new_token())
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);
    let other = store.create_cluster("eu-2", &Labels::new()).await.unwrap();
    let expired = new_token();
    store
        .issue_enrollment_token(
            other.id,
            &Sha256::of(expired.as_bytes()),
            Utc::now() - chrono::Duration::seconds(1),
        )
        .await
        .unwrap();
    assert_eq!(
        keyfleet_testkit::agent::enroll(&hub.endpoint, &expired)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let malformed = keyfleet_testkit::agent::enroll(&hub.endpoint, "kfe_nope")
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert!(!malformed.message().contains("kfe_nope"));

    // The credential authenticates the Sync stream as this cluster.
    let mut agent = TestAgent::connect(&hub.endpoint, &enrolled.credential, Applied::new())
        .await
        .unwrap();
    assert!(agent.handshake().await.unwrap().in_sync);
    assert!(hub.fleet.is_connected(cluster.id));
    let record = within(PROMPT, "connect recorded", async {
        loop {
            let record = store.cluster_by_id(cluster.id).await.unwrap().unwrap();
            if record.connected_replica.is_some() {
                return record;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(record.connected_replica.as_deref(), Some("replica-test"));
    assert_eq!(record.agent_version.as_deref(), Some("0.1.0-test"));
    drop(agent);
    drop(hub);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_and_nacks_reach_the_store_in_batches() {
    let db = TestDb::create().await;
    let store = db.store.clone();
    let (hub, view) = Hub::start_with_store(store.clone(), status_config()).await;
    let cluster = store.create_cluster("us-1", &Labels::new()).await.unwrap();
    let credential = keyfleet_hub::fleet::credentials::new_credential();
    store
        .set_cluster_credential(cluster.id, &Sha256::of(credential.as_bytes()))
        .await
        .unwrap();
    hub.credentials
        .insert(Sha256::of(credential.as_bytes()), cluster.id);
    let items: Vec<_> = (0..20)
        .map(|n| revision(&format!("secret-{n}"), 10 + n, b"value"))
        .collect();
    hub.fleet.set_desired(cluster.id, desired(&items));
    let statements_before = store.status_statements();

    let mut agent = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .unwrap();
    agent.handshake().await.unwrap();
    let update = agent.update().await.unwrap();
    assert_eq!(update.upserts.len(), 20);
    agent.apply_and_ack(&update).await.unwrap();
    let rows = within(PROMPT, "status flushed", async {
        loop {
            let rows = store.status_for_cluster(cluster.id).await.unwrap();
            // The statement counter moves once the statement returns, after the rows are visible.
            if rows.len() == 20 && store.status_statements() > statements_before {
                return rows;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(rows.iter().all(|row| row.state == SyncState::Applied));
    assert!(
        rows.iter()
            .all(|row| row.applied_revision == Some(row.desired_revision))
    );
    assert_eq!(
        store.status_statements() - statements_before,
        1,
        "20 acks, one statement"
    );
    assert_eq!(view.applied_revision(cluster.id, "secret-3"), Some(13));

    // A rotation of one key is refused: the old revision stays applied, the reason is recorded.
    hub.fleet.set_desired(cluster.id, {
        let mut next = items.clone();
        next[0] = revision("secret-0", 99, b"rotated");
        desired(&next)
    });
    let update = agent.update().await.unwrap();
    agent
        .send(agent_message::Body::Ack(v1::Ack {
            nonce: update.nonce,
            results: vec![v1::ItemResult {
                key: "secret-0".to_owned(),
                revision: 99,
                error: Some(v1::ItemError {
                    code: v1::ErrorCode::NotOwned as i32,
                    retryable: false,
                    message: "secret default/secret-0 exists and is not managed by keyfleet".to_owned(),
                }),
            }],
        }))
        .await
        .unwrap();
    let row = within(PROMPT, "nack recorded", async {
        loop {
            let rows = store.status_for_cluster(cluster.id).await.unwrap();
            if let Some(row) = rows
                .into_iter()
                .find(|row| row.fleet_secret == "secret-0" && row.state == SyncState::Error)
            {
                return row;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(row.desired_revision, 99);
    assert_eq!(row.applied_revision, Some(10));
    assert!(
        row.last_error
            .as_deref()
            .unwrap()
            .contains("not managed by keyfleet"),
        "{row:?}"
    );
    drop(agent);
    drop(hub);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_reaches_200_agents_and_status_shows_all_applied() {
    const AGENTS: usize = 200;
    let db = TestDb::create().await;
    let store = db.store.clone();
    let (hub, _view) = Hub::start_with_store(
        store.clone(),
        StatusConfig {
            flush_rows: 1_000,
            ..status_config()
        },
    )
    .await;
    let mut agents = Vec::new();
    let mut clusters = Vec::new();
    for n in 0..AGENTS {
        let cluster = store
            .create_cluster(&format!("c{n}"), &Labels::new())
            .await
            .unwrap();
        let credential = keyfleet_hub::fleet::credentials::new_credential();
        store
            .set_cluster_credential(cluster.id, &Sha256::of(credential.as_bytes()))
            .await
            .unwrap();
        hub.credentials
            .insert(Sha256::of(credential.as_bytes()), cluster.id);
        let mut agent = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
            .await
            .unwrap();
        agent.handshake().await.unwrap();
        agents.push(agent);
        clusters.push(cluster.id);
    }
    let statements_before = store.status_statements();
    let rotation = desired(&[revision("registry", 42, b"rotated-credential")]);
    hub.fleet
        .set_desired_many(clusters.iter().map(|cluster| (*cluster, rotation.clone())));
    let delivered = futures::future::join_all(agents.iter_mut().map(|agent| async move {
        let update = agent.update().await.unwrap();
        agent.apply_and_ack(&update).await.unwrap();
    }));
    within(PROMPT, "all 200 agents received the rotation", delivered).await;
    let rows = within(PROMPT, "status shows all applied", async {
        loop {
            let rows = store.status_for_fleet_secret("registry").await.unwrap();
            if rows.len() == AGENTS && rows.iter().all(|row| row.state == SyncState::Applied) {
                return rows;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(rows.iter().all(|row| row.applied_revision == Some(42)));
    let statements = store.status_statements() - statements_before;
    assert!(statements <= 10, "{statements} statements for {AGENTS} acks");
    drop(agents);
    drop(hub);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_elsewhere_reach_the_credential_index_and_revoke_streams() {
    use keyfleet_hub::sync::engine::refresh_credentials;
    let db = TestDb::create().await;
    let store = db.store.clone();
    let (hub, _view) = Hub::start_with_store(store.clone(), status_config()).await;
    // Enrolled through another replica: only the store knows the credential.
    let cluster = store.create_cluster("ap-1", &Labels::new()).await.unwrap();
    let credential = keyfleet_hub::fleet::credentials::new_credential();
    store
        .set_cluster_credential(cluster.id, &Sha256::of(credential.as_bytes()))
        .await
        .unwrap();
    let refused = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .err()
        .expect("unknown here yet");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let revoked = refresh_credentials(
        &store,
        &store.list_clusters(None).await.unwrap(),
        &hub.credentials,
        &hub.fleet,
    )
    .await
    .unwrap();
    assert!(revoked.is_empty());
    let mut agent = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .unwrap();
    agent.handshake().await.unwrap();

    // Revoked through another replica's admin API: the next refresh ends the stream.
    store.revoke_cluster(cluster.id).await.unwrap();
    let revoked = refresh_credentials(
        &store,
        &store.list_clusters(None).await.unwrap(),
        &hub.credentials,
        &hub.fleet,
    )
    .await
    .unwrap();
    assert_eq!(revoked, vec![cluster.id]);
    let status = within(Duration::from_secs(1), "revocation", agent.end())
        .await
        .expect_err("ended");
    assert_eq!(status.code(), Code::PermissionDenied);
    let again = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .err()
        .expect("refused");
    assert_eq!(again.code(), Code::Unauthenticated);
    assert!(
        refresh_credentials(
            &store,
            &store.list_clusters(None).await.unwrap(),
            &hub.credentials,
            &hub.fleet
        )
        .await
        .unwrap()
        .is_empty(),
        "revoked once"
    );
    drop(hub);
    db.drop_db().await;
}

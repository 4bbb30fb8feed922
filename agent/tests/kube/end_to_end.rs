//! The whole agent (`run_agent`) against a scripted hub and the fake Kubernetes API.

use keyfleet_agent::{AgentSettings, run_agent};
use keyfleet_proto::v1::{agent_message, hub_message};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use super::support::hub::{CREDENTIAL, ScriptedHub, Session, TOKEN};
use super::*;

async fn hello(session: &mut Session) -> v1::Hello {
    match session.recv().await {
        agent_message::Body::Hello(hello) => hello,
        _ => panic!("first message must be hello"),
    }
}

fn welcome(in_sync: bool) -> hub_message::Body {
    hub_message::Body::Welcome(v1::Welcome {
        in_sync,
        hub_instance: "hub-0".into(),
        heartbeat_interval_ms: 30_000,
        max_inflight: 4,
    })
}

#[tokio::test]
async fn a_write_failing_midway_is_a_nack_and_no_namespace_keeps_the_new_revision() {
    let (_fake, handle) = fake().await;
    let mut hub = ScriptedHub::start().await;
    let (logs, _guard) = support::capture_logs();
    let mut settings = AgentSettings::new(hub.url.clone(), Some(hub.ca_pem.clone()));
    settings.enrollment_token = Some(Zeroizing::new(TOKEN.into()));
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = run_agent(settings, client(&handle).await, async {
        let _ = stopped.await;
    });
    let hub_side = async {
        let mut session = hub.session().await;
        hello(&mut session).await;
        session.send(welcome(false)).await;
        let mut results = Vec::new();
        for (nonce, item) in [
            (1, payload("regcred", 1, VALUE, &["a", "b"])),
            (2, payload("regcred", 2, "new-value", &["a", "b"])),
        ] {
            if nonce == 2 {
                handle.fail_next_write("b", "regcred", 500);
            }
            session
                .send(hub_message::Body::Update(v1::Update {
                    nonce,
                    upserts: vec![item],
                    removals: vec![],
                }))
                .await;
            let agent_message::Body::Ack(ack) = session.recv().await else {
                panic!("expected an ack");
            };
            assert_eq!(ack.nonce, nonce);
            results.extend(ack.results);
        }
        assert!(results[0].error.is_none(), "revision 1 applies");
        let error = results[1].error.as_ref().expect("revision 2 is NACKed");
        assert_eq!(
            (error.code, error.retryable),
            (v1::ErrorCode::KubernetesUnavailable as i32, true)
        );
        assert!(
            error
                .message
                .contains("rolled back to their previous state: a/regcred, b/regcred"),
            "{}",
            error.message
        );
        holds_revision_1(&handle, &["a", "b"]);
        stop.send(()).expect("agent running");
    };
    let (result, ()) = tokio::join!(agent, hub_side);
    result.expect("agent stops cleanly");
    let logs = logs.contents();
    assert!(logs.contains("write failed midway; rolled back"), "{logs}");
    for secret in [VALUE, "new-value"] {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
}

#[tokio::test]
async fn the_agent_enrolls_applies_and_restarts_in_sync_without_writes() {
    let (_fake, handle) = fake().await;
    let mut hub = ScriptedHub::start().await;
    let (logs, _guard) = support::capture_logs();
    let mut settings = AgentSettings::new(hub.url.clone(), Some(hub.ca_pem.clone()));
    settings.enrollment_token = Some(Zeroizing::new(TOKEN.into()));
    let sent = payload("regcred", 1, VALUE, &["a", "b"]);
    let sha = sent.sha256.clone();

    handle
        .put_secret(
            Object::new_secret("a", "theirs").with_data("token", b"not-yours"),
            "kubectl-create",
        )
        .expect("foreign secret");
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = run_agent(settings.clone(), client(&handle).await, async {
        let _ = stopped.await;
    });
    let hub_side = async {
        let mut session = hub.session().await;
        assert_eq!(
            session.authorization.as_deref(),
            Some(format!("Bearer {CREDENTIAL}").as_str())
        );
        let hello = hello(&mut session).await;
        assert_eq!(hello.applied_count, 0);
        session.send(welcome(false)).await;
        session
            .send(hub_message::Body::Update(v1::Update {
                nonce: 1,
                upserts: vec![sent.clone()],
                removals: vec![],
            }))
            .await;
        let agent_message::Body::Ack(ack) = session.recv().await else {
            panic!("expected an ack");
        };
        assert_eq!(ack.nonce, 1);
        assert_eq!(ack.results.len(), 1);
        assert!(
            ack.results[0].error.is_none(),
            "nack: {:?}",
            ack.results[0].error.as_ref().map(|e| &e.message)
        );
        // A Secret someone else owns: NACKed over the wire, left alone.
        session
            .send(hub_message::Body::Update(v1::Update {
                nonce: 2,
                upserts: vec![payload("theirs", 1, VALUE, &["a"])],
                removals: vec![],
            }))
            .await;
        let agent_message::Body::Ack(ack) = session.recv().await else {
            panic!("expected an ack");
        };
        let error = ack.results[0].error.as_ref().expect("nack");
        assert_eq!(error.code, v1::ErrorCode::NotOwned as i32);
        assert_eq!(
            secret(&handle, "a", "theirs").data("token"),
            Some(&b"not-yours"[..])
        );
        // An edit by another manager is repaired and reported on the stream.
        let mut edited = (*secret(&handle, "b", "regcred")).clone();
        edited
            .secret_mut()
            .expect("secret")
            .data
            .insert("token".into(), SecretBytes::from(&b"edited"[..]));
        handle.put_secret(edited, "kubectl-edit").expect("edit");
        let agent_message::Body::Drift(drift) = session.recv().await else {
            panic!("expected a drift report");
        };
        assert_eq!(
            (drift.key.as_str(), drift.namespace.as_str(), drift.revision),
            ("regcred", "b", 1)
        );
        assert_eq!(drift.kind, v1::DriftKind::Modified as i32);
        assert_eq!(
            secret(&handle, "b", "regcred").data("token"),
            Some(VALUE.as_bytes())
        );
        stop.send(()).expect("agent running");
    };
    let (result, ()) = tokio::join!(agent, hub_side);
    result.expect("agent stops cleanly");
    assert_eq!(
        secret(&handle, "b", "regcred").data("token"),
        Some(VALUE.as_bytes())
    );
    let stored = secret(&handle, "keyfleet-system", "keyfleet-agent-credential");
    assert_eq!(stored.data("credential"), Some(CREDENTIAL.as_bytes()));

    // Restart without the (spent) token: the stored credential is reused, the state is
    // rebuilt from annotations, the hub finds it in sync, and nothing is written.
    let writes = handle.writes();
    settings.enrollment_token = None;
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = run_agent(settings, client(&handle).await, async {
        let _ = stopped.await;
    });
    let hub_side = async {
        let mut session = hub.session().await;
        let hello = hello(&mut session).await;
        assert_eq!(hello.applied_count, 1);
        assert_eq!(
            hello.applied_digest,
            digest::set_digest([("regcred", 1, sha.as_slice())]).to_vec()
        );
        session.send(welcome(true)).await;
        session
            .send(hub_message::Body::Heartbeat(v1::Heartbeat { sent_at_unix_ms: 1 }))
            .await;
        assert!(matches!(session.recv().await, agent_message::Body::Heartbeat(_)));
        stop.send(()).expect("agent running");
    };
    let (result, ()) = tokio::join!(agent, hub_side);
    result.expect("agent stops cleanly");
    assert_eq!(handle.writes(), writes, "an in-sync restart wrote to the cluster");
    assert_eq!(hub.enrolls.load(std::sync::atomic::Ordering::SeqCst), 1);

    let logs = logs.contents();
    assert!(logs.contains("sync stream established"), "logs were captured");
    for secret in [VALUE, CREDENTIAL, TOKEN] {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
}

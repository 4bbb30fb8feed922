//! Secret values that flow through the fan-out never reach the logs, at any level.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use keyfleet_hub::fleet::FleetEvent;
use keyfleet_proto::v1::{self, agent_message};
use support::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secret_values_in_payloads_never_appear_in_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    const VALUE: &str = "s3cr3t-V4LUE-never-logged";
    let mut hub = Hub::start().await;
    let (cluster, credential) = hub.enroll(1);
    hub.fleet.set_desired(
        cluster,
        desired(&[
            revision("app-db", 1, VALUE.as_bytes()),
            revision("too-big", 1, &VALUE.repeat(200_000).into_bytes()),
        ]),
    );
    let mut agent = TestAgent::connect(&hub.endpoint, &credential, Applied::new())
        .await
        .unwrap();
    agent.handshake().await.unwrap();
    let update = agent.update().await.unwrap();
    assert_eq!(
        update.upserts[0].data["value"],
        VALUE.as_bytes(),
        "the value did flow"
    );
    agent
        .send(agent_message::Body::Ack(v1::Ack {
            nonce: update.nonce,
            results: vec![v1::ItemResult {
                key: "app-db".to_owned(),
                revision: 1,
                error: Some(v1::ItemError {
                    code: v1::ErrorCode::Conflict as i32,
                    retryable: false,
                    message: "field conflict on .data".to_owned(),
                }),
            }],
        }))
        .await
        .unwrap();
    hub.event(|event| {
        matches!(
            event,
            FleetEvent::Nacked {
                code: keyfleet_hub::fleet::NackCode::Conflict,
                ..
            }
        )
        .then_some(())
    })
    .await;
    hub.credentials.revoke_cluster(cluster);
    hub.fleet.revoke(cluster);
    agent.end().await.expect_err("revoked");
    hub.event(|event| matches!(event, FleetEvent::Disconnected { .. }).then_some(()))
        .await;

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(logs.contains("agent connected"), "logs were captured");
    assert!(logs.contains("agent refused an item"), "nack was logged");
    assert!(!logs.contains(VALUE), "a secret value reached the logs");
    assert!(!logs.contains(&credential), "a credential reached the logs");
}

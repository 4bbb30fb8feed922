//! Secret values never reach the fake kube's logs, errors or `Debug` output. Its own test binary:
//! the capturing subscriber is thread-local and tracing's callsite cache is process-wide, so no
//! other test may run concurrently.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use keyfleet_testkit::kube::{Config, FakeKube, Object};
use kube::api::{Api, Patch, PatchParams, PostParams};

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "keyfleet".to_owned(),
            )])),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

fn api_status(error: kube::Error) -> Box<kube::core::Status> {
    match error {
        kube::Error::Api(status) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Collects everything the server logs, at every level, for the redaction check.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

// A current-thread runtime: the server's tasks run on this thread, under the capturing subscriber.
#[tokio::test(flavor = "current_thread")]
async fn secret_values_never_reach_logs_or_errors() {
    const CANARY: &str = "canary-s3cr3t-value";
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let _ = rustls::crypto::ring::default_provider().install_default();
    let kube = FakeKube::start(Config::default()).await.expect("start fake kube");
    let cluster = kube.add_cluster("redaction").expect("add cluster");
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&cluster.kubeconfig_yaml()).expect("kubeconfig");
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .expect("kube config");
    let secrets: Api<Secret> = Api::namespaced(kube::Client::try_from(config).expect("client"), "default");
    secrets
        .patch(
            "db",
            &PatchParams::apply("keyfleet-agent"),
            &Patch::Apply(secret("db", &[("k", CANARY)])),
        )
        .await
        .expect("apply");
    // A conflict, an invalid docker config and a handle error all carry Secret context.
    let status = api_status(
        secrets
            .patch(
                "db",
                &PatchParams::apply("other"),
                &Patch::Apply(secret("db", &[("k", "different")])),
            )
            .await
            .expect_err("conflict"),
    );
    assert!(!status.message.contains(CANARY) && !status.message.contains("different"));
    let mut docker = secret("docker", &[(".dockerconfigjson", CANARY)]);
    docker.type_ = Some("kubernetes.io/dockerconfigjson".to_owned());
    let status = api_status(
        secrets
            .create(&PostParams::default(), &docker)
            .await
            .expect_err("not json"),
    );
    assert_eq!(status.code, 422);
    assert!(!status.message.contains(CANARY), "{}", status.message);
    let invalid = Object::new_secret("default", "Bad_Name").with_data("k", CANARY.as_bytes());
    let error = cluster.put_secret(invalid, "tester").expect_err("invalid name");
    assert!(!error.to_string().contains(CANARY), "{error}");
    let stored = cluster.get_secret("default", "db").expect("stored");
    assert!(
        !format!("{stored:?}").contains(CANARY),
        "Debug of a stored Secret shows its value"
    );

    let logs = String::from_utf8_lossy(
        &captured
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned();
    assert!(
        logs.contains("fake kube api request"),
        "the server logged nothing: {logs}"
    );
    assert!(!logs.contains(CANARY), "a secret value reached the logs");
    let encoded = base64_encode(CANARY.as_bytes());
    assert!(!logs.contains(&encoded), "a base64 secret value reached the logs");
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

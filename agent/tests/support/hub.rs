//! A scripted hub for agent tests: real tonic `SecretSync` + `Enrollment` services over TLS on a
//! loopback port. Every Sync stream is handed to the test as a [`Session`] that the test drives.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keyfleet_proto::v1::{
    AgentMessage, EnrollRequest, EnrollResponse, HubMessage, agent_message,
    enrollment_server::{Enrollment, EnrollmentServer},
    hub_message,
    secret_sync_server::{SecretSync, SecretSyncServer},
};
use keyfleet_testkit::tls::TestCa;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// One Sync stream as the hub sees it.
pub struct Session {
    /// The `authorization` metadata.
    pub authorization: Option<String>,
    inbound: Streaming<AgentMessage>,
    outbound: mpsc::Sender<Result<HubMessage, Status>>,
}

impl Session {
    /// Next agent message body (panics after 10 s of silence or on stream end).
    pub async fn recv(&mut self) -> agent_message::Body {
        let message = tokio::time::timeout(Duration::from_secs(10), self.inbound.message())
            .await
            .expect("agent message within 10 s")
            .expect("agent stream healthy")
            .expect("agent stream open");
        message.body.expect("agent message has a body")
    }

    /// The stream's end as the hub sees it (`None`: closed; `Some`: another message).
    pub async fn next(&mut self) -> Option<agent_message::Body> {
        match self.inbound.message().await {
            Ok(Some(message)) => message.body,
            _ => None,
        }
    }

    /// Sends one hub message.
    pub async fn send(&self, body: hub_message::Body) {
        self.outbound
            .send(Ok(HubMessage { body: Some(body) }))
            .await
            .expect("stream open");
    }

    /// Ends the stream with a status.
    pub async fn fail(&self, status: Status) {
        self.outbound.send(Err(status)).await.expect("stream open");
    }
}

/// How the scripted hub answers a new stream before handing it to the test.
#[derive(Clone)]
pub enum Admission {
    /// Accept.
    Accept,
    /// Refuse with this status.
    Refuse(Status),
}

#[derive(Clone)]
struct Service {
    sessions: mpsc::Sender<Session>,
    admission: Arc<Mutex<Vec<Admission>>>,
    enrolls: Arc<AtomicUsize>,
    token: String,
    credential: String,
}

#[tonic::async_trait]
impl SecretSync for Service {
    type SyncStream = ReceiverStream<Result<HubMessage, Status>>;

    async fn sync(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        if let Some(Admission::Refuse(status)) = self.admission.lock().await.pop() {
            return Err(status);
        }
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let (tx, rx) = mpsc::channel(16);
        let session = Session {
            authorization,
            inbound: request.into_inner(),
            outbound: tx,
        };
        self.sessions
            .send(session)
            .await
            .map_err(|_| Status::unavailable("test over"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl Enrollment for Service {
    async fn enroll(&self, request: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        let request = request.into_inner();
        if request.token != self.token || self.enrolls.fetch_add(1, Ordering::SeqCst) > 0 {
            return Err(Status::unauthenticated("invalid enrollment token"));
        }
        Ok(Response::new(EnrollResponse {
            cluster_name: "c1".into(),
            cluster_id: "00000000-0000-4000-8000-000000000001".into(),
            credential: self.credential.clone(),
        }))
    }
}

/// The running scripted hub.
pub struct ScriptedHub {
    /// `https://localhost:PORT`.
    pub url: String,
    /// CA PEM to pin.
    pub ca_pem: String,
    /// Streams opened by agents, in order.
    pub sessions: mpsc::Receiver<Session>,
    /// Successful enrollments.
    pub enrolls: Arc<AtomicUsize>,
    admission: Arc<Mutex<Vec<Admission>>>,
}

/// The enrollment token the scripted hub accepts (once).
pub const TOKEN: &str = "kfe_test-token-0000000000000000000000000000000";
/// The credential it hands out.
pub const CREDENTIAL: &str = "kfc_test-credential-000000000000000000000000000";

impl ScriptedHub {
    /// Starts on 127.0.0.1:0 with TLS from a fresh test CA.
    pub async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = TestCa::generate("scripted hub ca").expect("ca");
        let cert = ca.issue(&["localhost"]).expect("server cert");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (sessions_tx, sessions) = mpsc::channel(16);
        let admission = Arc::new(Mutex::new(Vec::new()));
        let enrolls = Arc::new(AtomicUsize::new(0));
        let service = Service {
            sessions: sessions_tx,
            admission: admission.clone(),
            enrolls: enrolls.clone(),
            token: TOKEN.into(),
            credential: CREDENTIAL.into(),
        };
        let tls = ServerTlsConfig::new().identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem));
        let server = Server::builder()
            .tls_config(tls)
            .expect("server tls")
            .add_service(SecretSyncServer::new(service.clone()))
            .add_service(EnrollmentServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::spawn(server);
        Self {
            url: format!("https://localhost:{port}"),
            ca_pem: ca.cert_pem().to_owned(),
            sessions,
            enrolls,
            admission,
        }
    }

    /// The next stream an agent opens (panics after 10 s).
    pub async fn session(&mut self) -> Session {
        tokio::time::timeout(Duration::from_secs(10), self.sessions.recv())
            .await
            .expect("an agent connects within 10 s")
            .expect("hub running")
    }

    /// Refuse the next stream with `status`.
    pub async fn refuse_next(&self, status: Status) {
        self.admission.lock().await.push(Admission::Refuse(status));
    }
}

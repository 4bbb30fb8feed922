//! Shared test support: a scripted hub, an in-memory cluster, log capture.
#![allow(dead_code)]

pub mod hub;
pub mod processes;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use keyfleet_agent::cluster::{Cluster, Credential, CredentialStore};
use keyfleet_agent::reconcile::{Applied, DeletionPolicy, DesiredSecret, ErrorCode, Refusal};

/// Error of the in-memory doubles.
#[derive(Debug, thiserror::Error)]
#[error("in-memory cluster unavailable")]
pub struct Unavailable;

/// A cluster held in memory: key -> applied; keys listed in `refuse` are NACKed as not owned.
#[derive(Default)]
pub struct MemCluster {
    pub applied: Mutex<BTreeMap<String, Applied>>,
    pub refuse: Mutex<Vec<String>>,
    pub unavailable: std::sync::atomic::AtomicBool,
    pub applied_calls: Mutex<Vec<tokio::time::Instant>>,
    pub removed: Mutex<Vec<(String, DeletionPolicy)>>,
    /// Number of `applied` calls so far, observable without polling.
    pub applied_count: tokio::sync::watch::Sender<usize>,
}

impl Cluster for MemCluster {
    type Error = Unavailable;

    async fn applied(&self) -> Result<BTreeMap<String, Applied>, Unavailable> {
        self.applied_calls
            .lock()
            .expect("lock")
            .push(tokio::time::Instant::now());
        self.applied_count.send_modify(|count| *count += 1);
        if self.unavailable.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Unavailable);
        }
        Ok(self.applied.lock().expect("lock").clone())
    }

    async fn upsert(&self, desired: DesiredSecret) -> Result<(), Refusal> {
        if self.refuse.lock().expect("lock").contains(&desired.key) {
            return Err(Refusal::new(
                ErrorCode::NotOwned,
                true,
                format!(
                    "Secret default/{} exists and is not managed by keyfleet",
                    desired.secret_name
                ),
            ));
        }
        self.applied.lock().expect("lock").insert(
            desired.key.clone(),
            Applied {
                revision: desired.revision,
                sha256: desired.sha256,
            },
        );
        Ok(())
    }

    async fn remove(&self, key: &str, policy: DeletionPolicy) -> Result<(), Refusal> {
        self.applied.lock().expect("lock").remove(key);
        self.removed.lock().expect("lock").push((key.to_owned(), policy));
        Ok(())
    }
}

/// Credential store in memory.
#[derive(Default)]
pub struct MemStore {
    pub stored: Mutex<Option<Credential>>,
    pub saves: std::sync::atomic::AtomicUsize,
}

impl CredentialStore for MemStore {
    type Error = Unavailable;

    async fn load(&self) -> Result<Option<Credential>, Unavailable> {
        Ok(self.stored.lock().expect("lock").clone())
    }

    async fn save(&self, credential: &Credential) -> Result<(), Unavailable> {
        self.saves.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *self.stored.lock().expect("lock") = Some(credential.clone());
        Ok(())
    }
}

/// Everything written by tracing while a [`capture_logs`] guard is alive.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs a TRACE-level subscriber for the current thread writing into the returned buffer.
///
/// Tests of one binary that run the same code in parallel should all capture: tracing caches a
/// callsite's interest when it is first hit, and a thread without a subscriber hitting it while
/// another thread installs one can leave it disabled for both (seen as a flaky empty capture).
pub fn capture_logs() -> (LogBuffer, tracing::subscriber::DefaultGuard) {
    let buffer = LogBuffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    (buffer, tracing::subscriber::set_default(subscriber))
}

/// A TCP proxy that counts the bytes the client sends (to measure the agent's wire cost).
pub struct CountingProxy {
    /// Where clients connect.
    pub addr: std::net::SocketAddr,
    /// Bytes received from clients and forwarded upstream.
    pub sent_by_client: Arc<std::sync::atomic::AtomicU64>,
}

/// Starts a counting proxy on 127.0.0.1:0 in front of `upstream`.
pub async fn counting_proxy(upstream: std::net::SocketAddr) -> CountingProxy {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sent_by_client = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent_by_client.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 16 * 1024];
                loop {
                    match client_read.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            counter.fetch_add(n as u64, Ordering::SeqCst);
                            if server_write.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
        }
    });
    CountingProxy { addr, sent_by_client }
}

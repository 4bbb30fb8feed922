//! The hub client: enrollment, the Sync stream, and every proto ⇄ domain conversion of the agent.
//! Invariant: `hub.rs` and `hub/` are the only agent modules naming `keyfleet_proto::v1` types.
//!
//! # Layout
//! - this file: the channel to the hub, reconnect backoff, enrollment and the stored credential.
//! - `stream`: [`SyncClient`], one Sync session after another.
//! - `convert`: payload validation ([`desired_from_payload`]) and the messages the agent sends.
//!
//! # Reconnects
//! Full-jitter exponential backoff (1 s → 60 s): the n-th retry waits a uniform random time in
//! `[0, min(60 s, 1 s · 2ⁿ)]`. It resets after a session that reached Welcome and stayed up for
//! [`SyncSettings::stable_after`], and after a Drain (the hub already jitters that delay). A
//! refusal with `retry-after-ms` metadata (the hub's admission queue: RESOURCE_EXHAUSTED) waits
//! that long instead, capped at [`MAX_RETRY_AFTER`] (60 s: the hub never hints beyond 30 s, so a
//! longer hint is a hub flooded or misbehaving, and obeying it would keep the agent away for
//! hours), and does not grow the backoff: the hub spaced the refused agents at the rate it
//! admits them, and a backoff grown by every refusal would leave them away long after their
//! turn (minutes for 10,000 agents after a hub restart).

mod convert;
mod stream;

#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use keyfleet_proto::v1::{self, enrollment_client::EnrollmentClient};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use zeroize::Zeroizing;

pub use self::convert::desired_from_payload;
pub use self::stream::{SyncClient, SyncSettings};
use crate::cluster::{Credential, CredentialStore};

/// Errors of the hub client.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The hub URL or CA could not be used.
    #[error("invalid hub endpoint {url}: {reason}")]
    Endpoint {
        /// URL as configured.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// No stored credential and no enrollment token.
    #[error("not enrolled: credential Secret {namespace}/{name} not found and no enrollment token given")]
    NotEnrolled {
        /// Agent namespace.
        namespace: String,
        /// Credential Secret name.
        name: String,
    },
    /// The hub refused the enrollment token for good.
    #[error("enrollment refused by the hub ({code:?}): {message}")]
    EnrollRefused {
        /// gRPC code.
        code: tonic::Code,
        /// Hub message.
        message: String,
    },
    /// The hub answered enrollment with something unusable.
    #[error("invalid enrollment response: {0}")]
    EnrollResponse(&'static str),
}

/// How to reach the hub.
#[derive(Clone)]
pub struct HubEndpoint {
    /// `https://host:port` (or `http://` for plaintext).
    pub url: String,
    /// PEM of the CA that signed the hub certificate (required for https).
    pub ca_pem: Option<String>,
}

impl fmt::Debug for HubEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubEndpoint")
            .field("url", &self.url)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

/// Builds a lazily connecting channel with the pinned CA and HTTP/2 keepalive.
pub fn channel(endpoint: &HubEndpoint) -> Result<Channel, HubError> {
    let invalid = |reason: String| HubError::Endpoint {
        url: endpoint.url.clone(),
        reason,
    };
    let mut builder = Endpoint::from_shared(endpoint.url.clone())
        .map_err(|error| invalid(error.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if endpoint.url.starts_with("https://") {
        let ca = endpoint
            .ca_pem
            .as_ref()
            .ok_or_else(|| invalid("an https hub needs its CA (--hub-ca)".into()))?;
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        builder = builder
            .tls_config(tls)
            .map_err(|error| invalid(error.to_string()))?;
    }
    Ok(builder.connect_lazy())
}

/// Full-jitter exponential backoff.
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: StdRng,
}

impl Backoff {
    /// 1 s → 60 s, seeded from the OS.
    pub fn new() -> Self {
        Self::with_rng(
            Duration::from_secs(1),
            Duration::from_secs(60),
            StdRng::from_os_rng(),
        )
    }

    /// Custom bounds and random source (tests seed it).
    pub fn with_rng(base: Duration, cap: Duration, rng: StdRng) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
            rng,
        }
    }

    /// Upper bound of the next delay.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay: uniform in `[0, ceiling]`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(self.rng.random_range(0..=millis))
    }

    /// Back to the base.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

fn retryable_code(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::ResourceExhausted
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Aborted
            | tonic::Code::Internal
            | tonic::Code::Cancelled
    )
}

/// Returns the stored credential, or enrolls with `token` and stores the result. Retries the
/// store and transient hub failures with backoff; an enrollment the hub refuses is an error.
pub async fn ensure_credential<S: CredentialStore>(
    store: &S,
    channel: Channel,
    token: Option<&str>,
    agent_version: &str,
    not_enrolled: impl FnOnce() -> HubError,
    backoff: &mut Backoff,
) -> Result<Credential, HubError> {
    loop {
        match store.load().await {
            Ok(Some(credential)) => {
                tracing::info!(cluster = %credential.cluster_name, "using the stored credential");
                return Ok(credential);
            }
            Ok(None) => break,
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    ?delay,
                    "cannot read the credential secret"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
    backoff.reset();
    let token = token.ok_or_else(not_enrolled)?;
    let mut client = EnrollmentClient::new(channel);
    let credential = loop {
        let request = v1::EnrollRequest {
            token: token.to_owned(),
            agent_version: agent_version.to_owned(),
        };
        match client.enroll(request).await {
            Ok(response) => break credential_from(response.into_inner())?,
            Err(status) if retryable_code(status.code()) => {
                let delay = retry_after(&status).unwrap_or_else(|| backoff.next_delay());
                tracing::warn!(code = ?status.code(), message = status.message(), ?delay, "enrollment failed, retrying");
                tokio::time::sleep(delay).await;
            }
            Err(status) => {
                return Err(HubError::EnrollRefused {
                    code: status.code(),
                    message: status.message().to_owned(),
                });
            }
        }
    };
    tracing::info!(cluster = %credential.cluster_name, cluster_id = %credential.cluster_id, "enrolled");
    backoff.reset();
    loop {
        match store.save(&credential).await {
            Ok(()) => return Ok(credential),
            Err(error) => {
                // The token is spent: keep trying, the credential exists only in memory.
                let delay = backoff.next_delay();
                tracing::error!(
                    error = &error as &dyn std::error::Error,
                    ?delay,
                    "cannot store the credential, retrying"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn credential_from(response: v1::EnrollResponse) -> Result<Credential, HubError> {
    let secret = Zeroizing::new(response.credential);
    if secret.is_empty() || secret.len() > 256 || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HubError::EnrollResponse(
            "credential is empty, too long or not printable ascii",
        ));
    }
    if response.cluster_name.is_empty() || response.cluster_name.len() > 63 {
        return Err(HubError::EnrollResponse("cluster_name is empty or too long"));
    }
    Ok(Credential {
        cluster_name: response.cluster_name,
        cluster_id: response.cluster_id,
        secret,
    })
}

/// The longest wait a hub's `retry-after-ms` can impose: a longer hint (a flooded or misbehaving
/// hub) is capped here, so an agent is never sent away for hours.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

fn retry_after(status: &tonic::Status) -> Option<Duration> {
    let value = status.metadata().get("retry-after-ms")?.to_str().ok()?;
    value
        .parse()
        .ok()
        .map(|ms| Duration::from_millis(ms).min(MAX_RETRY_AFTER))
}

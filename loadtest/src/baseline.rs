//! The per-cluster polling baseline: what the same fleet costs under External Secrets Operator's
//! model (research/eso-keyvault.md §0–1), run against the same Key Vault emulator.
//!
//! ESO's Azure provider keeps no client, token or value cache across reconciles: every
//! ExternalSecret refresh in every cluster builds a new client (one unauthenticated request that
//! gets the 401 challenge), gets a new Entra token, and issues one GET per `data[]` key. The
//! baseline issues exactly those calls for real, one refresh of every cluster per rotation, so the
//! emulator's counters (and its throttling) measure them. Staleness is not waited for: a cluster
//! picks a rotation up at its next refresh, so with refresh phases spread uniformly over
//! `refreshInterval` (ESO's default 1 h) the staleness of each cluster follows from its phase.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt as _;

use crate::stats::{self, Percentiles};

/// What the baseline needs to reach the emulator as an ESO SecretStore would.
#[derive(Clone)]
pub struct Target {
    /// Key Vault URL (`https://127.0.0.1:PORT`).
    pub vault_url: url::Url,
    /// Entra authority (`https://127.0.0.1:PORT`), the token endpoint is
    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub authority_url: url::Url,
    /// Tenant id.
    pub tenant: String,
    /// Client id of the principal every cluster uses.
    pub client_id: String,
    /// Its client secret.
    pub client_secret: String,
    /// PEM of the emulator's CA.
    pub ca_pem: Vec<u8>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("vault_url", &self.vault_url.as_str())
            .field("authority_url", &self.authority_url.as_str())
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Baseline parameters.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Simulated clusters.
    pub clusters: usize,
    /// Key Vault secret names every cluster reads on each refresh.
    pub keys: Vec<String>,
    /// ESO `refreshInterval`.
    pub refresh_interval: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
}

/// Calls made by one fleet-wide refresh, as the baseline's own client saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RefreshCalls {
    /// Entra token requests.
    pub token: u64,
    /// Unauthenticated requests answered with the 401 challenge.
    pub challenge: u64,
    /// Secret GETs answered 200.
    pub get_ok: u64,
    /// Calls answered 429 (the caller backs off 1 s, 2 s, … as ESO's SDK does; not retried here).
    pub throttled: u64,
    /// Other failures.
    pub failed: u64,
}

/// Staleness of a rotation under the polling model, from refresh phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Staleness {
    /// ESO `refreshInterval`, seconds.
    pub refresh_interval_s: u64,
    /// Percentiles of the time until each cluster holds the new version.
    pub percentiles: Percentiles,
}

/// Errors setting the baseline up.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// The emulator's CA PEM did not parse.
    #[error("invalid emulator CA certificate")]
    Ca(#[source] reqwest::Error),
    /// Building the HTTP client failed.
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    /// Joining an emulator endpoint URL failed.
    #[error("cannot build the {what} URL")]
    Url {
        /// Which URL, e.g. `token`.
        what: &'static str,
        /// The parse error.
        #[source]
        source: url::ParseError,
    },
}

/// An ESO-like fleet of per-cluster pollers.
pub struct Baseline {
    target: Target,
    plan: Plan,
    http: reqwest::Client,
    token_url: url::Url,
}

impl Baseline {
    /// Builds the HTTP client trusting the emulator's CA.
    pub fn new(target: Target, plan: Plan) -> Result<Self, BaselineError> {
        let ca = reqwest::Certificate::from_pem(&target.ca_pem).map_err(BaselineError::Ca)?;
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .pool_max_idle_per_host(plan.concurrency)
            .build()
            .map_err(BaselineError::Client)?;
        let token_url = target
            .authority_url
            .join(&format!("{}/oauth2/v2.0/token", target.tenant))
            .map_err(|source| BaselineError::Url {
                what: "token",
                source,
            })?;
        Ok(Self {
            target,
            plan,
            http,
            token_url,
        })
    }

    /// One refresh of every cluster: per cluster a new client (challenge), a new token and one
    /// GET per key; returns what was called.
    pub async fn refresh_all(&self) -> RefreshCalls {
        let counters = Arc::new(Counters::default());
        futures::stream::iter(0..self.plan.clusters)
            .for_each_concurrent(self.plan.concurrency.max(1), |_| {
                let counters = Arc::clone(&counters);
                async move { self.refresh_one(&counters).await }
            })
            .await;
        counters.snapshot()
    }

    async fn refresh_one(&self, counters: &Counters) {
        let Some(first) = self.plan.keys.first() else {
            return;
        };
        // New client: the first request carries no token and gets the challenge.
        // Every response body is read to its end, as a real client does: a response dropped
        // unread makes the HTTP/2 client reset its stream, and after 1,024 such resets h2 closes
        // the connection (ENHANCE_YOUR_CALM), failing the requests in flight on it.
        match self.http.get(self.secret_url(first)).send().await {
            Ok(response) if response.status() == reqwest::StatusCode::UNAUTHORIZED => {
                let _ = response.bytes().await;
                counters.challenge.fetch_add(1, Ordering::Relaxed);
            }
            Ok(response) => counters.count_failure(response).await,
            Err(_) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.target.client_id.as_str()),
            ("client_secret", self.target.client_secret.as_str()),
            ("scope", "https://vault.azure.net/.default"),
        ];
        let token = match self.http.post(self.token_url.clone()).form(&form).send().await {
            Ok(response) if response.status().is_success() => {
                counters.token.fetch_add(1, Ordering::Relaxed);
                match response.json::<TokenResponse>().await {
                    Ok(body) => body.access_token,
                    Err(_) => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
            Ok(response) => {
                counters.count_failure(response).await;
                return;
            }
            Err(_) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        for key in &self.plan.keys {
            let response = self
                .http
                .get(self.secret_url(key))
                .bearer_auth(&token)
                .send()
                .await;
            match response {
                Ok(response) if response.status().is_success() => {
                    // Read and drop the body: ESO would write it into the cluster's Secret.
                    let _ = response.bytes().await;
                    counters.get_ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(response) => counters.count_failure(response).await,
                Err(_) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn secret_url(&self, key: &str) -> String {
        let base = self.target.vault_url.as_str().trim_end_matches('/');
        format!("{base}/secrets/{key}?api-version=2025-07-01")
    }

    /// Staleness of one rotation for this many clusters with uniformly spread refresh phases.
    pub fn staleness(&self, rng: &mut impl rand::Rng) -> Option<Staleness> {
        staleness(self.plan.clusters, self.plan.refresh_interval, rng)
    }
}

/// Staleness percentiles of one rotation when `clusters` refresh every `interval` at uniformly
/// random phases (the time from the rotation to each cluster's next refresh).
pub fn staleness(clusters: usize, interval: Duration, rng: &mut impl rand::Rng) -> Option<Staleness> {
    let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX).max(1);
    let samples: Vec<Duration> = (0..clusters)
        .map(|_| Duration::from_millis(rng.random_range(0..interval_ms)))
        .collect();
    Some(Staleness {
        refresh_interval_s: interval.as_secs(),
        percentiles: stats::percentiles(&samples)?,
    })
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
}

#[derive(Default)]
struct Counters {
    token: AtomicU64,
    challenge: AtomicU64,
    get_ok: AtomicU64,
    throttled: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    /// Counts an unexpected answer (after reading its body to the end).
    async fn count_failure(&self, response: reqwest::Response) {
        let status = response.status();
        let _ = response.bytes().await;
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            self.throttled.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> RefreshCalls {
        RefreshCalls {
            token: self.token.load(Ordering::Relaxed),
            challenge: self.challenge.load(Ordering::Relaxed),
            get_ok: self.get_ok.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    #[test]
    fn staleness_spreads_over_the_refresh_interval() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let result = staleness(10_000, Duration::from_secs(3600), &mut rng).expect("samples");
        let p = result.percentiles;
        assert_eq!(p.count, 10_000);
        assert_eq!(result.refresh_interval_s, 3600);
        // Uniform over an hour: the median near 30 min, p99 near 59.4 min, nothing above 1 h.
        assert!((1_700_000..1_900_000).contains(&p.p50_ms), "{p:?}");
        assert!((3_500_000..3_600_000).contains(&p.p99_ms), "{p:?}");
        assert!(p.last_ms < 3_600_000, "{p:?}");
        assert!(staleness(0, Duration::from_secs(1), &mut rng).is_none());
    }
}

//! [`AzureKeyVault`]: the official `azure_identity` + `azure_security_keyvault_secrets` crates.
//!
//! Every wire request of the secret client goes through [`VaultPolicy`] (a per-try pipeline
//! policy): it takes a token from the vault's `governor` bucket first (retries included) and counts
//! the outcome. Retries are ours ([`Backoff`]): `Retry-After` / `retry-after-ms` honoured,
//! otherwise exponential backoff with full jitter, sleeping on the tokio clock.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret as AzureSecret, TokenCredential};
use azure_core::error::ErrorKind;
use azure_core::http::headers::{AUTHORIZATION, HeaderName, RETRY_AFTER};
use azure_core::http::policies::{Policy, PolicyResult, RetryHeaders, RetryPolicy};
use azure_core::http::{ClientOptions, Context, Method, Request, RetryOptions, StatusCode, Transport};
use azure_identity::{
    AzureCliCredential, ClientAssertionCredentialOptions, ClientSecretCredential,
    ClientSecretCredentialOptions, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use azure_security_keyvault_secrets::models::{
    SecretClientGetSecretOptions, SecretClientListSecretPropertiesOptions,
    SecretClientListSecretPropertiesVersionsOptions,
};
use azure_security_keyvault_secrets::{ResourceExt as _, SecretClient, SecretClientOptions};
use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use governor::clock::Clock as _;

use super::breaker::{Admit, Breaker, OPEN_MESSAGE, Verdict};
use super::{
    ErrorContext, FetchedSecret, Operation, SecretInfo, SecretSource, VaultError, VaultMetrics, VersionInfo,
};
use crate::domain::SecretValue;
use crate::spec::{AuthType, AzureEnvironment, CredentialSource, SecretStoreSpec};

/// How to reach a vault beyond what the spec says (tests, the loadtest, tuning).
#[derive(Clone)]
pub struct VaultOptions {
    /// An extra trust root (PEM), for emulators; production uses the system roots only.
    pub ca_pem: Option<Vec<u8>>,
    /// Entra authority host override (`https` only); otherwise the spec's cloud decides.
    pub authority_host: Option<url::Url>,
    /// Whether the challenge's resource must match the vault's domain (the SDK default, true).
    /// Emulators on `127.0.0.1` need false.
    pub verify_challenge_resource: bool,
    /// Workload identity token file; default `AZURE_FEDERATED_TOKEN_FILE`.
    pub federated_token_file: Option<PathBuf>,
    /// Retries after a 429, 408, 5xx or transport error.
    pub max_retries: u32,
    /// First backoff step (full jitter: a random wait up to base × 2^n, capped at `max_backoff`).
    pub base_backoff: Duration,
    /// Largest backoff step.
    pub max_backoff: Duration,
    /// Consecutive failed requests (5xx, 408, transport) that open the circuit breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker fails requests fast before one trial request.
    pub breaker_cooldown: Duration,
    /// Where calls are counted.
    pub metrics: VaultMetrics,
}

impl Default for VaultOptions {
    fn default() -> Self {
        Self {
            ca_pem: None,
            authority_host: None,
            verify_challenge_resource: true,
            federated_token_file: None,
            max_retries: 4,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            breaker_threshold: 10,
            breaker_cooldown: Duration::from_secs(30),
            metrics: VaultMetrics::default(),
        }
    }
}

impl std::fmt::Debug for VaultOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultOptions")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field("authority_host", &self.authority_host)
            .field("verify_challenge_resource", &self.verify_challenge_resource)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

/// The tokio clock for `governor`, so that a paused test clock also drives the bucket.
#[derive(Debug, Clone, Copy, Default)]
struct TokioClock;

impl governor::clock::Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> Self::Instant {
        tokio::time::Instant::now().into_std()
    }
}

type Limiter = governor::RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    TokioClock,
    governor::middleware::NoOpMiddleware<std::time::Instant>,
>;

/// Per-try policy: circuit breaker, rate limit, then count the outcome by operation.
#[derive(Debug)]
struct VaultPolicy {
    store: String,
    limiter: Arc<Limiter>,
    breaker: Breaker,
    metrics: VaultMetrics,
}

fn operation_of(method: Method, path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::Get, ["secrets"] | ["secrets", ""]) => "list_secrets",
        (Method::Get, ["secrets", _, "versions"]) => "list_versions",
        (Method::Get, ["secrets", ..]) => "get",
        _ => "other",
    }
}

fn outcome_of(status: StatusCode, authorized: bool) -> &'static str {
    match u16::from(status) {
        200..=299 => "ok",
        401 if !authorized => "challenge",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        429 => "throttled",
        500..=599 => "server_error",
        _ => "client_error",
    }
}

#[async_trait::async_trait]
impl Policy for VaultPolicy {
    #[allow(
        elided_lifetimes_in_paths,
        reason = "async_trait needs the trait's late-bound Context lifetime"
    )]
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        let operation = operation_of(request.method(), request.url().path());
        if let Admit::No { retry_in } = self.breaker.admit() {
            self.metrics.call(&self.store, operation, "circuit_open");
            return Err(azure_core::Error::with_message(
                ErrorKind::Other,
                format!(
                    "{OPEN_MESSAGE} after consecutive failures; next attempt in {} ms",
                    retry_in.as_millis()
                ),
            ));
        }
        while let Err(not_until) = self.limiter.check() {
            tokio::time::sleep(not_until.wait_time_from(TokioClock.now())).await;
        }
        let authorized = request.headers().get_optional_str(&AUTHORIZATION).is_some();
        let Some((first, rest)) = next.split_first() else {
            return Err(azure_core::Error::with_message(
                ErrorKind::Other,
                "vault policy is last in the pipeline",
            ));
        };
        let result = first.send(ctx, request, rest).await;
        let outcome = match &result {
            Ok(response) => outcome_of(response.status(), authorized),
            Err(_) => "transport_error",
        };
        self.metrics.call(&self.store, operation, outcome);
        let verdict = match outcome {
            "server_error" | "transport_error" => Verdict::Down,
            "client_error" if matches!(&result, Ok(r) if r.status() == StatusCode::RequestTimeout) => {
                Verdict::Down
            }
            "throttled" => Verdict::Neutral,
            _ => Verdict::Up,
        };
        if self.breaker.record(verdict) {
            tracing::warn!(store = %self.store, "key vault failing: circuit breaker open");
        }
        if outcome == "throttled" {
            tracing::info!(store = %self.store, operation, "key vault throttled the request (429)");
        }
        result
    }
}

/// Longest `Retry-After` / `retry-after-ms` honoured: a reply asking for more (a faulty or
/// hostile endpoint could ask for hours) waits this long, so one call never holds a poll for
/// longer; the poller's own backoff takes over if the vault keeps refusing.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Retry policy: `Retry-After` when the service gives one (at most [`MAX_RETRY_AFTER`]), else
/// exponential backoff with full jitter.
#[derive(Debug)]
struct Backoff {
    max_retries: u32,
    base: Duration,
    max: Duration,
    headers: RetryHeaders,
}

impl Backoff {
    /// How long to wait before retry `retry_count`.
    fn delay(&self, retry_count: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(after) => after.min(MAX_RETRY_AFTER),
            None => self.jitter(retry_count),
        }
    }

    fn jitter(&self, retry_count: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(retry_count.saturating_sub(1)))
            .min(self.max);
        let millis = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::random_range(0..=millis))
    }
}

#[async_trait::async_trait]
impl RetryPolicy for Backoff {
    fn is_expired(&self, _duration_since_start: azure_core::time::Duration, retry_count: u32) -> bool {
        retry_count >= self.max_retries
    }

    fn retry_headers(&self) -> Option<&RetryHeaders> {
        Some(&self.headers)
    }

    fn retry_status_codes(&self) -> &[StatusCode] {
        &[]
    }

    fn sleep_duration(&self, retry_count: u32) -> azure_core::time::Duration {
        azure_core::time::Duration::try_from(self.jitter(retry_count))
            .unwrap_or(azure_core::time::Duration::ZERO)
    }

    async fn wait(&self, retry_count: u32, retry_after: Option<azure_core::time::Duration>) {
        let retry_after = retry_after.map(|after| Duration::try_from(after).unwrap_or(MAX_RETRY_AFTER));
        tokio::time::sleep(self.delay(retry_count, retry_after)).await;
    }
}

/// A Key Vault read through the official Azure crates.
pub struct AzureKeyVault {
    client: SecretClient,
    store: String,
    vault: String,
    auth_type: &'static str,
}

impl std::fmt::Debug for AzureKeyVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureKeyVault")
            .field("store", &self.store)
            .field("vault", &self.vault)
            .field("auth_type", &self.auth_type)
            .finish_non_exhaustive()
    }
}

fn read_client_secret(source: &CredentialSource) -> Result<String, String> {
    let raw = match source {
        CredentialSource::Env(name) => std::env::var(name)
            .map_err(|_| format!("client secret environment variable {name} is not set"))?,
        CredentialSource::File(path) => std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read client secret file {}: {error}", path.display()))?,
    };
    let trimmed = raw.trim_end_matches(['\r', '\n']).to_owned();
    if trimmed.is_empty() {
        return Err("the client secret is empty".to_owned());
    }
    Ok(trimmed)
}

impl AzureKeyVault {
    /// Builds the credential and client for `spec`. Reads the client secret (service principal)
    /// now; tokens are acquired on first use.
    pub fn new(spec: &SecretStoreSpec, options: &VaultOptions) -> Result<Self, VaultError> {
        let auth_type = spec.auth.as_str();
        let context = ErrorContext {
            store: spec.name.clone(),
            vault: spec.vault_url.to_string(),
            operation: Operation::Connect,
            secret: None,
            auth_type,
        };
        let config = |reason: String| VaultError::Config {
            context: context.clone(),
            reason,
        };
        if spec.vault_url.scheme() != "https" {
            return Err(config("the vault URL must use https".to_owned()));
        }
        let mut http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &options.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|error| config(format!("invalid extra CA PEM: {error}")))?;
            http = http.tls_certs_merge(certs);
        }
        let http = http
            .build()
            .map_err(|error| config(format!("cannot build the HTTP client: {error}")))?;
        let transport = Transport::new(Arc::new(http));
        let cloud = match (&options.authority_host, spec.environment) {
            (Some(host), _) => {
                let mut custom = CustomConfiguration::default();
                custom.authority_host = host.as_str().trim_end_matches('/').to_owned();
                CloudConfiguration::Custom(custom)
            }
            (None, AzureEnvironment::PublicCloud) => CloudConfiguration::AzurePublic,
            (None, AzureEnvironment::UsGovernmentCloud) => CloudConfiguration::AzureGovernment,
            (None, AzureEnvironment::ChinaCloud) => CloudConfiguration::AzureChina,
        };
        let credential_options = ClientOptions {
            transport: Some(transport.clone()),
            cloud: Some(Arc::new(cloud)),
            ..ClientOptions::default()
        };
        let sdk = |error: azure_core::Error| config(cause_text(&error, false));
        let credential: Arc<dyn TokenCredential> = match &spec.auth {
            AuthType::ServicePrincipal {
                tenant_id,
                client_id,
                client_secret,
            } => {
                let secret = read_client_secret(client_secret).map_err(config)?;
                ClientSecretCredential::new(
                    tenant_id,
                    client_id.clone(),
                    AzureSecret::new(secret),
                    Some(ClientSecretCredentialOptions {
                        client_options: credential_options,
                    }),
                )
                .map_err(sdk)?
            }
            AuthType::WorkloadIdentity { tenant_id, client_id } => {
                WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                    credential_options: ClientAssertionCredentialOptions {
                        client_options: credential_options,
                    },
                    client_id: client_id.clone(),
                    tenant_id: tenant_id.clone(),
                    token_file_path: options.federated_token_file.clone(),
                }))
                .map_err(sdk)?
            }
            AuthType::ManagedIdentity { identity_id } => {
                ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                    user_assigned_id: identity_id.clone().map(UserAssignedId::ClientId),
                    client_options: credential_options,
                }))
                .map_err(sdk)?
            }
            AuthType::AzureCli => AzureCliCredential::new(None).map_err(sdk)?,
        };
        let rate = NonZeroU32::new(spec.rate_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst =
            NonZeroU32::new(spec.rate_burst.max(spec.rate_per_second).max(1)).unwrap_or(NonZeroU32::MIN);
        let limiter = Arc::new(governor::RateLimiter::direct_with_clock(
            governor::Quota::per_second(rate).allow_burst(burst),
            TokioClock,
        ));
        let client_options = ClientOptions {
            transport: Some(transport),
            retry: RetryOptions::custom(Arc::new(Backoff {
                max_retries: options.max_retries,
                base: options.base_backoff,
                max: options.max_backoff,
                headers: RetryHeaders {
                    retry_headers: vec![
                        HeaderName::from_static("retry-after-ms"),
                        HeaderName::from_static("x-ms-retry-after-ms"),
                        RETRY_AFTER,
                    ],
                },
            })),
            per_try_policies: vec![Arc::new(VaultPolicy {
                store: spec.name.clone(),
                limiter,
                breaker: Breaker::new(options.breaker_threshold, options.breaker_cooldown),
                metrics: options.metrics.clone(),
            })],
            ..ClientOptions::default()
        };
        let client = SecretClient::new(
            spec.vault_url.as_str(),
            credential,
            Some(SecretClientOptions {
                client_options,
                verify_challenge_resource: Some(options.verify_challenge_resource),
                ..SecretClientOptions::default()
            }),
        )
        .map_err(sdk)?;
        Ok(Self {
            client,
            store: spec.name.clone(),
            vault: spec.vault_url.to_string(),
            auth_type,
        })
    }

    fn context(&self, operation: Operation, secret: Option<String>) -> ErrorContext {
        ErrorContext {
            store: self.store.clone(),
            vault: self.vault.clone(),
            operation,
            secret,
            auth_type: self.auth_type,
        }
    }
}

/// The SDK's error text: `Display` of the error and of every `source()`, deduplicated. Body
/// decoding errors are left out when `may_quote_values` (serde can quote the input).
fn cause_text(error: &azure_core::Error, may_quote_values: bool) -> String {
    if may_quote_values && matches!(error.kind(), ErrorKind::DataConversion) {
        return "the response body could not be decoded".to_owned();
    }
    let mut parts: Vec<String> = Vec::new();
    let mut push = |text: String| {
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    };
    push(error.to_string());
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        push(cause.to_string());
        source = cause.source();
    }
    parts.join(": ")
}

/// The inner error code of a Key Vault error body (`error.innererror.code`).
fn inner_code(error: &azure_core::Error) -> Option<String> {
    let ErrorKind::HttpResponse {
        raw_response: Some(response),
        ..
    } = error.kind()
    else {
        return None;
    };
    let body: serde_json::Value = serde_json::from_slice(response.body().as_ref()).ok()?;
    body.pointer("/error/innererror/code")
        .and_then(|c| c.as_str())
        .map(str::to_owned)
}

fn classify(error: &azure_core::Error, context: ErrorContext) -> VaultError {
    let cause = cause_text(error, context.operation == Operation::Get);
    match error.kind() {
        _ if cause.contains(OPEN_MESSAGE) => VaultError::Unavailable { context, cause },
        ErrorKind::Credential => VaultError::Auth { context, cause },
        ErrorKind::Io | ErrorKind::Connection => VaultError::Unavailable { context, cause },
        ErrorKind::HttpResponse { status, .. } => match u16::from(*status) {
            401 => VaultError::Auth { context, cause },
            403 if inner_code(error).as_deref() == Some("SecretDisabled") => VaultError::Disabled { context },
            403 => VaultError::Forbidden { context, cause },
            404 => VaultError::NotFound { context },
            429 => VaultError::Throttled { context, cause },
            408 | 500..=599 => VaultError::Unavailable { context, cause },
            _ => VaultError::Unexpected { context, cause },
        },
        // Token acquisition failures surface as Other/HttpResponse from the credential, wrapped.
        _ if looks_like_auth(error) => VaultError::Auth { context, cause },
        _ => VaultError::Unexpected { context, cause },
    }
}

fn looks_like_auth(error: &azure_core::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(azure) = cause.downcast_ref::<azure_core::Error>()
            && matches!(azure.kind(), ErrorKind::Credential)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

fn to_chrono(time: Option<azure_core::time::OffsetDateTime>) -> Option<DateTime<Utc>> {
    time.and_then(|t| DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()))
}

fn tags(tags: Option<std::collections::HashMap<String, String>>) -> BTreeMap<String, String> {
    tags.unwrap_or_default().into_iter().collect()
}

#[async_trait::async_trait]
impl SecretSource for AzureKeyVault {
    #[tracing::instrument(name = "vault.get", skip_all, fields(store = %self.store, secret = %name,
        requested = version.unwrap_or("latest"), version = tracing::field::Empty))]
    async fn get(&self, name: &str, version: Option<&str>) -> Result<FetchedSecret, VaultError> {
        let shown = match version {
            Some(version) => format!("{name}/{version}"),
            None => name.to_owned(),
        };
        let context = || self.context(Operation::Get, Some(shown.clone()));
        let options = SecretClientGetSecretOptions {
            secret_version: version.map(str::to_owned),
            ..SecretClientGetSecretOptions::default()
        };
        let response = self
            .client
            .get_secret(name, Some(options))
            .await
            .map_err(|e| classify(&e, context()))?;
        let secret = response.into_model().map_err(|e| classify(&e, context()))?;
        let found_version = secret
            .resource_id()
            .ok()
            .and_then(|id| id.version)
            .ok_or_else(|| VaultError::Unexpected {
                context: context(),
                cause: "the secret id has no version".to_owned(),
            })?;
        let attributes = secret.attributes.unwrap_or_default();
        let value = SecretValue::new(secret.value.unwrap_or_default().into_bytes());
        tracing::Span::current().record("version", found_version.as_str());
        tracing::debug!(store = %self.store, secret = %name, version = %found_version, bytes = value.len(), "fetched secret");
        Ok(FetchedSecret {
            version: found_version,
            value,
            enabled: attributes.enabled.unwrap_or(true),
            content_type: secret.content_type,
            tags: tags(secret.tags),
            created: to_chrono(attributes.created),
            updated: to_chrono(attributes.updated),
            expires: to_chrono(attributes.expires),
            not_before: to_chrono(attributes.not_before),
        })
    }

    async fn list_secrets(&self) -> Result<Vec<SecretInfo>, VaultError> {
        let context = || self.context(Operation::ListSecrets, None);
        let options = SecretClientListSecretPropertiesOptions {
            maxresults: Some(25),
            ..Default::default()
        };
        let mut pager = self
            .client
            .list_secret_properties(Some(options))
            .map_err(|e| classify(&e, context()))?;
        let mut out = Vec::new();
        while let Some(item) = pager.try_next().await.map_err(|e| classify(&e, context()))? {
            let Ok(id) = item.resource_id() else { continue };
            let attributes = item.attributes.unwrap_or_default();
            out.push(SecretInfo {
                name: id.name,
                tags: tags(item.tags),
                enabled: attributes.enabled.unwrap_or(true),
                updated: to_chrono(attributes.updated),
            });
        }
        Ok(out)
    }

    async fn list_versions(&self, name: &str) -> Result<Vec<VersionInfo>, VaultError> {
        let context = || self.context(Operation::ListVersions, Some(name.to_owned()));
        let options = SecretClientListSecretPropertiesVersionsOptions {
            maxresults: Some(25),
            ..Default::default()
        };
        let mut pager = self
            .client
            .list_secret_properties_versions(name, Some(options))
            .map_err(|e| classify(&e, context()))?;
        let mut out = Vec::new();
        while let Some(item) = pager.try_next().await.map_err(|e| classify(&e, context()))? {
            let Some(version) = item.resource_id().ok().and_then(|id| id.version) else {
                continue;
            };
            let attributes = item.attributes.unwrap_or_default();
            out.push(VersionInfo {
                version,
                enabled: attributes.enabled.unwrap_or(true),
                created: to_chrono(attributes.created),
                updated: to_chrono(attributes.updated),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_honoured_up_to_a_cap() {
        let backoff = Backoff {
            max_retries: 3,
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
            headers: RetryHeaders {
                retry_headers: Vec::new(),
            },
        };
        assert_eq!(
            backoff.delay(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            backoff.delay(1, Some(Duration::from_secs(7_200))),
            MAX_RETRY_AFTER,
            "an endpoint cannot park a poll for hours"
        );
        assert!(backoff.delay(3, None) <= Duration::from_millis(400));
    }

    #[test]
    fn operations_from_paths() {
        assert_eq!(operation_of(Method::Get, "/secrets"), "list_secrets");
        assert_eq!(operation_of(Method::Get, "/secrets/a/"), "get");
        assert_eq!(operation_of(Method::Get, "/secrets/a/abc"), "get");
        assert_eq!(operation_of(Method::Get, "/secrets/a/versions"), "list_versions");
        assert_eq!(operation_of(Method::Put, "/secrets/a"), "other");
    }

    #[test]
    fn outcomes() {
        assert_eq!(outcome_of(StatusCode::Unauthorized, false), "challenge");
        assert_eq!(outcome_of(StatusCode::Unauthorized, true), "unauthorized");
        assert_eq!(outcome_of(StatusCode::TooManyRequests, true), "throttled");
        assert_eq!(outcome_of(StatusCode::Ok, true), "ok");
    }

    #[test]
    fn full_jitter_stays_under_the_cap() {
        let backoff = Backoff {
            max_retries: 3,
            base: Duration::from_millis(100),
            max: Duration::from_millis(500),
            headers: RetryHeaders::default(),
        };
        for retry in 1..10 {
            assert!(backoff.jitter(retry) <= Duration::from_millis(500));
        }
        assert!(backoff.jitter(1) <= Duration::from_millis(100));
        assert!(backoff.is_expired(azure_core::time::Duration::ZERO, 3));
        assert!(!backoff.is_expired(azure_core::time::Duration::ZERO, 2));
    }
}

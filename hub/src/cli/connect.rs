//! Reaching the hub: the `--hub` endpoint with TLS (`--hub-ca`, optional client certificate) and
//! the admin token as a bearer header. **Invariant:** the token travels as a sensitive header value
//! and is never logged or printed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyfleet_proto::v1::admin_client::AdminClient;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::CliError;
use crate::config::ClientArgs;

/// Adds the admin token to every request (nothing when the client authenticates by certificate
/// alone: [`BearerToken::default`]).
#[derive(Clone, Default)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl BearerToken {
    /// `authorization: Bearer <token>`; the value is marked sensitive (never logged by tonic/hyper).
    pub fn new(token: &str) -> Result<Self, CliError> {
        let mut value: AsciiMetadataValue =
            MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                CliError::Usage("the admin token holds characters a header cannot carry".to_owned())
            })?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// An authenticated Admin API client.
pub type Client = AdminClient<InterceptedService<Channel, BearerToken>>;

/// Reads the admin token: `--admin-token-file` (its first token line, blank lines and `#`
/// comments skipped; a `name:token` line of the hub's token file gives its token) or
/// `KEYFLEET_ADMIN_TOKEN` (also as `name:token`). `None` when neither is given but a client
/// certificate is (mTLS alone); an error when there is no credential at all.
pub fn admin_token(args: &ClientArgs) -> Result<Option<String>, CliError> {
    let token = match (&args.admin_token_file, &args.admin_token) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
                path: path.clone(),
                source,
            })?;
            let line = text
                .lines()
                .map(str::trim)
                .find(|line| !line.is_empty() && !line.starts_with('#'))
                .unwrap_or_default();
            crate::config::token_of_line(line).to_owned()
        }
        (None, Some(token)) => crate::config::token_of_line(token).to_owned(),
        (None, None) if args.client_cert.is_some() => return Ok(None),
        (None, None) => {
            return Err(CliError::Usage(
                "no admin credentials: pass --admin-token-file or set KEYFLEET_ADMIN_TOKEN, or pass \
                 --client-cert and --client-key"
                    .to_owned(),
            ));
        }
    };
    if token.is_empty() {
        return Err(CliError::Usage("the admin token is empty".to_owned()));
    }
    Ok(Some(token))
}

/// The client certificate and key of `--client-cert`/`--client-key`, if given.
fn client_identity(args: &ClientArgs) -> Result<Option<Identity>, CliError> {
    let (cert, key) = match (&args.client_cert, &args.client_key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            return Err(CliError::Usage(
                "--client-cert and --client-key go together".to_owned(),
            ));
        }
    };
    let cert_pem = read_file(cert)?;
    let key_pem = zeroize::Zeroizing::new(read_file(key)?);
    if !String::from_utf8_lossy(&cert_pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(CliError::Usage(format!(
            "--client-cert {}: no PEM certificate found",
            cert.display()
        )));
    }
    if !String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY-----") {
        return Err(CliError::Usage(format!(
            "--client-key {}: no PEM private key found",
            key.display()
        )));
    }
    Ok(Some(Identity::from_pem(cert_pem, key_pem.as_slice())))
}

/// Reads a PEM file named on the command line; a failure is a usage error naming the file.
fn read_file(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })
}

/// System CA bundles tried, in order, when `--hub-ca` is not given.
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The CA that signed the hub's certificate: `--hub-ca`, else `SSL_CERT_FILE`, else the first
/// system bundle found; `None` leaves tonic with its built-in roots.
fn read_ca(args: &ClientArgs) -> Result<Option<Certificate>, CliError> {
    if let Some(path) = &args.hub_ca {
        return read_file(path).map(|pem| Some(Certificate::from_pem(pem)));
    }
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let candidates = from_env
        .into_iter()
        .chain(SYSTEM_CA_FILES.iter().map(PathBuf::from));
    for path in candidates {
        if path.is_file() {
            return read_file(&path).map(|pem| Some(Certificate::from_pem(pem)));
        }
    }
    Ok(None)
}

/// Connects to `--hub` with the admin token and/or the client certificate.
pub async fn connect(args: &ClientArgs) -> Result<Client, CliError> {
    let token = match admin_token(args)? {
        Some(token) => BearerToken::new(&token)?,
        None => BearerToken::default(),
    };
    let identity = client_identity(args)?;
    let url = args.hub_url.clone();
    let bad_url = || CliError::Usage(format!("invalid --hub URL {url:?}, expected https://HOST:PORT"));
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|_| bad_url())?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120));
    match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("https") => {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = read_ca(args)? {
                tls = tls.ca_certificate(ca);
            }
            if let Some(identity) = identity {
                tls = tls.identity(identity);
            }
            endpoint = endpoint.tls_config(tls).map_err(|source| CliError::Connect {
                url: url.clone(),
                source,
            })?;
        }
        Some("http") if identity.is_some() => {
            return Err(CliError::Usage(
                "--client-cert needs an https:// --hub URL".to_owned(),
            ));
        }
        Some("http") if !args.insecure => {
            return Err(CliError::Usage(format!(
                "--hub {url} is plaintext http://: the admin token would cross the network in \
                 clear; use https://, or --insecure for a local test hub"
            )));
        }
        Some("http") => {}
        _ => return Err(bad_url()),
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| CliError::Connect { url, source })?;
    Ok(AdminClient::with_interceptor(channel, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_comes_from_the_file_first_and_is_required() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "# the hub's token file\n\nalice:kfa_file\nbob:ignored\n").expect("written");
        let mut args = ClientArgs {
            admin_token: Some("kfa_env".to_owned()),
            admin_token_file: Some(path),
            ..ClientArgs::default()
        };
        assert_eq!(admin_token(&args).expect("token").as_deref(), Some("kfa_file"));
        args.admin_token_file = None;
        assert_eq!(admin_token(&args).expect("token").as_deref(), Some("kfa_env"));
        args.admin_token = Some("ci:kfa_env".to_owned());
        assert_eq!(admin_token(&args).expect("token").as_deref(), Some("kfa_env"));
        args.admin_token = None;
        let error = admin_token(&args).expect_err("no token");
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("KEYFLEET_ADMIN_TOKEN"), "{error}");
        assert!(error.to_string().contains("--client-cert"), "{error}");
        args.client_cert = Some(dir.path().join("alice.pem"));
        assert_eq!(admin_token(&args).expect("a client certificate is enough"), None);
        args.admin_token_file = Some(dir.path().join("missing"));
        assert_eq!(admin_token(&args).expect_err("missing file").exit_code(), 2);
    }

    #[test]
    fn the_bearer_header_is_sensitive() {
        let mut interceptor = BearerToken::new("kfa_secret").expect("ascii token");
        let request = interceptor.call(tonic::Request::new(())).expect("intercepted");
        let value = request.metadata().get("authorization").expect("header set");
        assert!(value.is_sensitive());
        assert_eq!(value.to_str().expect("ascii"), "Bearer kfa_secret");
        assert!(!format!("{value:?}").contains("kfa_secret"));
        assert!(BearerToken::new("bad\ntoken").is_err());
        let request = BearerToken::default()
            .call(tonic::Request::new(()))
            .expect("intercepted");
        assert!(
            request.metadata().get("authorization").is_none(),
            "certificate-only clients send no token"
        );
    }

    #[test]
    fn client_certificates_are_checked_before_connecting() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = dir.path().join("alice.pem");
        let key = dir.path().join("alice-key.pem");
        let mut args = ClientArgs {
            client_cert: Some(cert.clone()),
            client_key: Some(key.clone()),
            ..ClientArgs::default()
        };
        let error = client_identity(&args).map(drop).expect_err("missing files");
        assert!(error.to_string().contains("alice.pem"), "{error}");
        assert_eq!(error.exit_code(), 2);
        std::fs::write(&cert, "not pem").expect("write");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        let error = client_identity(&args).map(drop).expect_err("not a certificate");
        assert_eq!(
            error.to_string(),
            format!("--client-cert {}: no PEM certificate found", cert.display())
        );
        args.client_key = None;
        assert_eq!(client_identity(&args).map(drop).expect_err("half").exit_code(), 2);
        args.client_cert = None;
        assert!(client_identity(&args).expect("none").is_none());
    }
}

//! The store URL (`--database`). **Invariant:** the password it may hold is shown only by
//! [`DatabaseUrl::expose`], for connecting; `Debug` redacts it and there is no `Display`.

/// The embedded default store: a SQLite file in the working directory.
pub const DEFAULT_DATABASE: &str = "sqlite://keyfleet.db";

/// The store URL (`--database`). It may hold a password (`postgres://user:PASSWORD@…` or a
/// `password=` query parameter), so its `Debug` shows it redacted and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL as given, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Why the connection's TLS is weaker than `sslmode=verify-full` for a Postgres server that is
    /// not on this host (`None` for SQLite, loopback, a Unix socket, or `verify-full`). Postgres'
    /// default, `prefer`, silently falls back to plaintext and checks no certificate.
    pub fn tls_warning(&self) -> Option<String> {
        let url = url::Url::parse(&self.0).ok()?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return None;
        }
        let mode = url
            .query_pairs()
            .find(|(key, _)| key == "sslmode")
            .map_or_else(|| "prefer".to_owned(), |(_, value)| value.into_owned());
        let socket = url
            .query_pairs()
            .any(|(key, value)| key == "host" && value.starts_with('/'));
        let local = match url.host() {
            None => true,
            // Not a special scheme: the URL parser leaves IP addresses as text.
            Some(url::Host::Domain(name)) => {
                name.eq_ignore_ascii_case("localhost")
                    || name
                        .trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        };
        if local || socket || mode == "verify-full" {
            return None;
        }
        Some(format!(
            "the store connection uses sslmode={mode} to a remote host: the server's certificate is \
             not verified{}; add sslmode=verify-full (and sslrootcert=…) to --database",
            if matches!(mode.as_str(), "disable" | "allow" | "prefer") {
                " and the connection may be plaintext"
            } else {
                ""
            }
        ))
    }

    /// The URL with any password replaced by `<redacted>` (the whole URL when it does not parse).
    pub fn redacted(&self) -> String {
        const REDACTED: &str = "<redacted>";
        let Ok(mut url) = url::Url::parse(&self.0) else {
            return REDACTED.to_owned();
        };
        if url.password().is_some() && url.set_password(Some(REDACTED)).is_err() {
            return REDACTED.to_owned();
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(key, value)| {
                    let value = if key.to_ascii_lowercase().contains("password") {
                        REDACTED.to_owned()
                    } else {
                        value.into_owned()
                    };
                    (key.into_owned(), value)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        // `<` and `>` come back percent-encoded from the URL writer; show them as written.
        url.as_str().replace("%3Credacted%3E", REDACTED)
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DatabaseUrl").field(&self.redacted()).finish()
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::DatabaseUrl;

    fn warning(url: &str) -> Option<String> {
        url.parse::<DatabaseUrl>().expect("infallible").tls_warning()
    }

    #[test]
    fn weak_tls_to_a_remote_postgres_is_named() {
        let default = warning("postgres://kf:pw@db.example.com/keyfleet").expect("warned");
        assert!(
            default.contains("sslmode=prefer") && default.contains("plaintext"),
            "{default}"
        );
        assert!(!default.contains("pw"), "the password never shows: {default}");
        let require = warning("postgres://db.example.com/keyfleet?sslmode=require").expect("warned");
        assert!(
            require.contains("sslmode=require") && !require.contains("plaintext"),
            "{require}"
        );
        assert_eq!(
            warning("postgres://db.example.com/keyfleet?sslmode=verify-full"),
            None
        );
        assert_eq!(warning("postgres://postgres@127.0.0.1:5432/test"), None);
        assert_eq!(warning("postgres://localhost/test"), None);
        assert_eq!(warning("postgres://[::1]/test"), None);
        assert!(warning("postgres://10.0.0.5/test").is_some());
        assert_eq!(warning("postgres:///keyfleet?host=/var/run/postgresql"), None);
        assert_eq!(warning("sqlite://keyfleet.db"), None);
    }
}

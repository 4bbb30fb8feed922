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

//! The digest key file (`--digest-key-file`): where the hub's [`DigestKeys`] come from.
//!
//! **Decision** (docs/security.md, "Digests of secret values"): with a Postgres store the hub
//! refuses to start without the file (replicas must share the key, and a production store must
//! not hold guessable digests); with a SQLite file and no flag, the hub uses `<database>.digest-key`
//! next to the database, creating it (mode 0600, 32 random bytes in hex) on first start, so the
//! quickstart needs no setup and a restart keeps its key; `sqlite::memory:` gets a random key of
//! the process (nothing outlives it).

use std::path::{Path, PathBuf};

use crate::domain::{DigestKeyError, DigestKeys};

use super::DatabaseUrl;

/// Where the keys came from (logged by `serve`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestKeySource {
    /// `--digest-key-file`.
    File(PathBuf),
    /// Next to the SQLite database; `created` on this start.
    BesideDatabase {
        /// The key file.
        path: PathBuf,
        /// Whether this start created it.
        created: bool,
    },
    /// A random key of this process (`sqlite::memory:`).
    Ephemeral,
}

/// Why the digest keys cannot be loaded. Never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum DigestKeyFileError {
    /// Postgres without `--digest-key-file`.
    #[error(
        "--digest-key-file (KEYFLEET_DIGEST_KEY_FILE) is required with a Postgres store: digests \
         of secret values are stored keyed with it, and every replica needs the same key; create \
         one with `openssl rand -hex 32 > digest-key` (docs/security.md)"
    )]
    Required,
    /// The file cannot be read or created.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The file's content is refused.
    #[error("digest key file {path}: {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong (by line).
        problem: DigestKeyError,
    },
}

/// The digest keys for `database`: from `file`, else as the decision above says.
pub fn load_digest_keys(
    file: Option<&Path>,
    database: &DatabaseUrl,
) -> Result<(DigestKeys, DigestKeySource), DigestKeyFileError> {
    if let Some(path) = file {
        return Ok((read_key_file(path)?, DigestKeySource::File(path.to_owned())));
    }
    let url = database.expose();
    if !url.starts_with("sqlite:") {
        return Err(DigestKeyFileError::Required);
    }
    let Some(database_path) = sqlite_file(url) else {
        return Ok((DigestKeys::generate().0, DigestKeySource::Ephemeral));
    };
    let mut name = database_path.file_name().unwrap_or_default().to_owned();
    name.push(".digest-key");
    let path = database_path.with_file_name(name);
    if path.exists() {
        let keys = read_key_file(&path)?;
        return Ok((keys, DigestKeySource::BesideDatabase { path, created: false }));
    }
    let (keys, text) = DigestKeys::generate();
    write_private(&path, text.as_bytes()).map_err(|source| DigestKeyFileError::Io {
        what: "create the digest key file",
        path: path.display().to_string(),
        source,
    })?;
    Ok((keys, DigestKeySource::BesideDatabase { path, created: true }))
}

fn read_key_file(path: &Path) -> Result<DigestKeys, DigestKeyFileError> {
    let text =
        zeroize::Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| DigestKeyFileError::Io {
                what: "read --digest-key-file",
                path: path.display().to_string(),
                source,
            })?,
        );
    DigestKeys::parse(&text).map_err(|problem| DigestKeyFileError::Invalid {
        path: path.display().to_string(),
        problem,
    })
}

/// The file of a `sqlite:` URL; `None` for an in-memory database.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// Creates `path` with `bytes`, readable by its owner only; fails when it exists.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> DatabaseUrl {
        text.parse().unwrap()
    }

    #[test]
    fn postgres_needs_a_key_file() {
        let error = load_digest_keys(None, &url("postgres://u@db/keyfleet")).unwrap_err();
        assert!(matches!(error, DigestKeyFileError::Required));
        assert!(error.to_string().contains("--digest-key-file"), "{error}");
    }

    #[test]
    fn sqlite_keeps_a_key_beside_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let database = url(&format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("hub.db").display()
        ));
        let (first, source) = load_digest_keys(None, &database).unwrap();
        let path = dir.path().join("hub.db.digest-key");
        assert_eq!(
            source,
            DigestKeySource::BesideDatabase {
                path: path.clone(),
                created: true
            }
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, source) = load_digest_keys(None, &database).unwrap();
        assert_eq!(source, DigestKeySource::BesideDatabase { path, created: false });
        assert_eq!(again.current(), first.current(), "a restart keeps the key");
        let (_, source) = load_digest_keys(None, &url("sqlite::memory:")).unwrap();
        assert_eq!(source, DigestKeySource::Ephemeral);
    }

    #[test]
    fn a_short_key_is_refused_by_line_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# current\n0011223344556677\n").unwrap();
        let error = load_digest_keys(Some(&path), &url("postgres://u@db/k")).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("line 2") && message.contains("8 bytes"),
            "{message}"
        );
        assert!(!message.contains("0011223344556677"), "{message}");
        let error = load_digest_keys(Some(&dir.path().join("missing")), &url("sqlite::memory:")).unwrap_err();
        assert!(matches!(error, DigestKeyFileError::Io { .. }), "{error}");
    }
}

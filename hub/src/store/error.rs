//! The store's one error type, and how both backends turn a constraint violation into it.
//! Messages never include bound values, only names of what was wrong.

/// Errors of the store. Messages never include bound values (only names of what was wrong).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named thing does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. `cluster "eu-1"`.
        what: String,
    },
    /// The named thing exists already.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What was created twice.
        what: String,
    },
    /// The operation is refused in the current state.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database refused or failed the statement.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// A migration failed.
    #[error("cannot migrate the database")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The database URL names no supported backend (the URL itself is not repeated: it may hold a
    /// password).
    #[error("unsupported database url: expected postgres://…, sqlite://PATH or sqlite::memory:")]
    UnsupportedUrl,
    /// A stored value does not decode (a row written by something else than this store).
    #[error("stored {what} is invalid")]
    Corrupt {
        /// Column or record.
        what: &'static str,
    },
    /// A number does not fit the column.
    #[error("{what} is out of range")]
    OutOfRange {
        /// Field.
        what: &'static str,
    },
}

impl StoreError {
    /// Whether the database could not be reached or went away (a failover, a network blip, a
    /// server refusing connections): the caller should retry later, nothing was decided.
    pub fn is_unavailable(&self) -> bool {
        let Self::Database(error) = self else {
            return false;
        };
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            // Connection exceptions (08), operator intervention (57P: shutdown, cannot connect
            // now, terminated), and a database that refuses connections (55000).
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|code| code.starts_with("08") || code.starts_with("57P") || code == "55000"),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(error)
    }
}

/// A unique violation becomes `AlreadyExists { what }`; any other error stays a database error.
pub(super) fn unique_to_exists(error: sqlx::Error, what: &str) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::AlreadyExists {
            what: what.to_owned(),
        },
        _ => StoreError::Database(error),
    }
}

/// A foreign-key violation becomes `NotFound { what }`; any other error stays a database error.
pub(super) fn fk_to_not_found(error: sqlx::Error, what: &str) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound {
            what: what.to_owned(),
        },
        _ => StoreError::Database(error),
    }
}

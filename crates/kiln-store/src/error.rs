//! The store's error type. Infrastructure failures (database down, disk full, a corrupt row)
//! are errors; an operation the state machine refuses is not — that is an
//! [`OpResult::Refused`](crate::OpResult), and the rest of its batch still commits.

use std::path::PathBuf;

/// What went wrong talking to the database or the blob store. Messages read as
/// "failed to …" and name the operation, query or path involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to create directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to open the {backend} database at {location}: {source}")]
    Open {
        backend: &'static str,
        location: String,
        source: sqlx::Error,
    },
    #[error("failed to understand the database URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("failed to migrate the {backend} database: {source}")]
    Migrate {
        backend: &'static str,
        source: sqlx::migrate::MigrateError,
    },
    #[error("failed to {operation}: {source}")]
    Query {
        /// What the store was doing, e.g. `grant a lease`.
        operation: &'static str,
        source: sqlx::Error,
    },
    #[error("failed to decode column `{column}` of {table}: {detail}")]
    Decode {
        table: &'static str,
        column: &'static str,
        detail: String,
    },
    #[error("failed to write blob {}: {source}", path.display())]
    BlobWrite {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to read blob {}: {source}", path.display())]
    BlobRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to use blob key `{key}`: {reason}")]
    BadBlobKey { key: String, reason: &'static str },
    #[error("failed to {operation} `{key}` in the artifact store: {detail}")]
    Objects {
        operation: &'static str,
        key: String,
        detail: String,
    },
    #[error("failed to use the webhook intake journal {}: {source}", path.display())]
    Intake {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to run a blob task: {0}")]
    BlobTask(String),
    #[error("failed to draw random bytes for a token: {detail}")]
    Random { detail: String },
    #[error("failed to accept the preseeded admin token: {reason}")]
    BadToken { reason: String },
    #[error("failed to find {what} `{id}`")]
    NotFound { what: &'static str, id: String },
    #[error("failed to name {what} `{name}`: another {what} has that name")]
    NameTaken { what: &'static str, name: String },
    #[error("failed to resolve run `{prefix}`: it is the prefix of more than one run")]
    Ambiguous { prefix: String },
    #[error(
        "failed to resolve run `{prefix}`: give the full id or a prefix of at least 4 characters"
    )]
    PrefixTooShort { prefix: String },
    /// The secrets keys are malformed, missing a version, or do not open a stored secret.
    #[error("failed to use the secrets keys: {0}")]
    Secrets(String),
    #[error(
        "failed to find a secrets key: a PostgreSQL store keeps webhook and receiver secrets \
         sealed under a key every replica must share, and kiln makes none up for it. Set \
         KILN__SECRETS__KEY to 64 hex digits (`VERSION:KEY,VERSION:KEY` while rotating), or \
         KILN__SECRETS__KEY_FILE to a file holding them, or put them in <data dir>/secrets.key"
    )]
    NoSecretKey,
}

/// Maps a sqlx error to [`StoreError::Query`] naming the operation.
pub(crate) fn query(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { operation, source }
}

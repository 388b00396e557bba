//! What can go wrong in the store. Every message names the file or server
//! and the key or role concerned, never a password or a secret.

use std::{path::PathBuf, time::Duration};

use crate::{key::KeyId, permission::RoleName};

use super::feed;

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL (expected sqlite://PATH or postgres://USER@HOST/DATABASE)")]
    UnsupportedUrl,
    #[error("invalid PostgreSQL URL: {0}")]
    InvalidUrl(String),
    #[error("cannot create database file {path}: {source}")]
    CreateFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `database` names the file or the server, never a password.
    #[error("cannot open database {database}: {source}")]
    Open {
        database: String,
        source: sqlx::Error,
    },
    #[error("cannot apply database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database is already initialised")]
    AlreadyInitialized,
    #[error("key {0} not found")]
    KeyNotFound(KeyId),
    #[error("key {id} cannot be rotated: {why}")]
    NotRotatable { id: KeyId, why: &'static str },
    #[error("a key with id {0} already exists")]
    IdCollision(KeyId),
    #[error("role {0} already exists")]
    RoleExists(RoleName),
    #[error("role {0} not found")]
    RoleNotFound(RoleName),
    #[error("role {0} is built in and cannot be changed or deleted")]
    BuiltinRole(RoleName),
    #[error("role {name} is held by {keys} key(s) ({active} not revoked); take it from them first")]
    RoleInUse {
        name: RoleName,
        keys: i64,
        active: i64,
    },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the change feed's connection to the database closed")]
    FeedClosed,
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
    #[error("SQLite has no change feed: one server is the only writer")]
    NoFeed,
    #[error(transparent)]
    FeedPayload(#[from] feed::UnknownPayload),
    #[error("corrupt row in {table}: {what}")]
    Corrupt {
        table: &'static str,
        what: &'static str,
    },
}

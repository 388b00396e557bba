//! What can go wrong in the store. Every message names the file or server
//! and the key or role concerned, never a password or a secret.

use std::{path::PathBuf, sync::Arc, time::Duration};

use crate::{key::KeyId, permission::RoleName};

use super::feed;

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is neither `sqlite://PATH` nor `postgres://…`, or
    /// its path is empty: the setting needs fixing.
    #[error("unsupported database URL (expected sqlite://PATH or postgres://USER@HOST/DATABASE)")]
    UnsupportedUrl,
    /// sqlx cannot parse a `postgres://` URL; the message has any quoted URL
    /// cut out, so it never shows a password.
    #[error("invalid PostgreSQL URL: {0}")]
    InvalidUrl(String),
    /// The SQLite file could not be created (mode 0600) before opening it:
    /// a missing directory, say, or no write permission.
    #[error("cannot create database file {path}: {source}")]
    CreateFile {
        /// As given in the URL, so possibly relative.
        path: PathBuf,
        /// Why the OS refused.
        source: std::io::Error,
    },
    /// The first connection failed: the server is down or refuses the
    /// credentials or TLS, the database does not exist, or the session
    /// settings run on connect failed.
    #[error("cannot open database {database}: {source}")]
    Open {
        /// The file, or `postgres://HOST:PORT/DATABASE`: never the user or
        /// password.
        database: String,
        /// sqlx's reason, which may name the server but not the password.
        source: sqlx::Error,
    },
    /// Migrating at open failed, e.g. on a database a newer keyward has
    /// migrated (an applied migration this build does not know).
    #[error("cannot apply database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// [`Store::initialize`](super::Store::initialize) found the first admin
    /// key made already and wrote nothing; bootstrap reports it as
    /// [`InitError::AlreadyInitialized`](crate::bootstrap::InitError::AlreadyInitialized).
    #[error("the database is already initialised")]
    AlreadyInitialized,
    /// No key, in any state, has this id; admin RPCs answer `NOT_FOUND`.
    #[error("key {0} not found")]
    KeyNotFound(KeyId),
    /// The key is revoked, expired, spent or already rotated, so it has no
    /// successor to hand on to; nothing was written (`FAILED_PRECONDITION`).
    #[error("key {id} cannot be rotated: {why}")]
    NotRotatable {
        /// The key asked to be rotated.
        id: KeyId,
        /// From [`KeyRecord::rotation_refusal`](crate::model::KeyRecord::rotation_refusal),
        /// e.g. "it is revoked".
        why: &'static str,
    },
    /// The randomly drawn id of a new key is taken; nothing was written.
    /// Minting draws a fresh id and tries again, a few times.
    #[error("a key with id {0} already exists")]
    IdCollision(KeyId),
    /// A role with this name exists already (`ALREADY_EXISTS`).
    #[error("role {0} already exists")]
    RoleExists(RoleName),
    /// No role has this name; admin RPCs answer `NOT_FOUND`.
    #[error("role {0} not found")]
    RoleNotFound(RoleName),
    /// An update or delete named a built-in role (`admin`, `validator`);
    /// nothing was written (`FAILED_PRECONDITION`).
    #[error("role {0} is built in and cannot be changed or deleted")]
    BuiltinRole(RoleName),
    /// A delete named a role some keys still hold; nothing was written
    /// (`FAILED_PRECONDITION`). The caller must take the role from those
    /// keys first.
    #[error("role {name} is held by {keys} key(s) ({active} not revoked); take it from them first")]
    RoleInUse {
        /// The role that was not deleted.
        name: RoleName,
        /// Keys holding the role, revoked ones included: their records
        /// keep naming the roles they had.
        keys: i64,
        /// Of `keys`, those not revoked (expired and spent ones included).
        active: i64,
    },
    /// A trust policy with this name exists already (`ALREADY_EXISTS`).
    #[error("trust policy {0} already exists")]
    PolicyExists(crate::trust::PolicyName),
    /// No trust policy has this name; admin RPCs answer `NOT_FOUND`.
    #[error("trust policy {0} not found")]
    PolicyNotFound(crate::trust::PolicyName),
    /// An identity token's `jti` was exchanged before (on any replica);
    /// nothing was written. The exchange refuses it like any bad token.
    #[error("the identity token was exchanged before")]
    Replayed,
    /// Any other query or connection failure. A lost or refused connection
    /// (or a lock or pool timeout) answers `UNAVAILABLE`, worth a retry;
    /// anything else `INTERNAL`.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A replica's feed connection closed, so changes may have been missed:
    /// the replica reconnects and resyncs in full.
    #[error("the change feed's connection to the database closed")]
    FeedClosed,
    /// Connecting or pinging the change feed, or a replica's reload or
    /// resync, took longer than this (a hung connection, a partition): the
    /// replica starts over.
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
    /// [`Store::subscribe`](super::Store::subscribe) on SQLite; ask
    /// [`Store::has_change_feed`](super::Store::has_change_feed) first.
    #[error("SQLite has no change feed: one server is the only writer")]
    NoFeed,
    /// A notification this version does not read (a newer keyward during a
    /// rolling upgrade, or another program's): a change may have been
    /// missed, so the replica reconnects and resyncs.
    #[error(transparent)]
    FeedPayload(#[from] feed::UnknownPayload),
    /// One failure met by several writes committed together (a group
    /// commit of mints), handed to each of them: it reads, and answers, as
    /// the failure itself.
    #[error(transparent)]
    Shared(Arc<StoreError>),
    /// A row keyward could not have written (a value that does not parse, a
    /// number out of range): reported, never guessed at (`INTERNAL`).
    #[error("corrupt row in {table}: {what}")]
    Corrupt {
        /// Where the row is, e.g. `api_keys` or `role_permissions`.
        table: &'static str,
        /// The column or value that is wrong, e.g. `digest` or `rate limit`.
        what: &'static str,
    },
}

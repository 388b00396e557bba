//! The durable store: keys, roles and the audit log, in SQLite (the embedded
//! default, one server) or PostgreSQL (one database, many replicas), behind
//! one set of methods and one set of queries.
//!
//! Every write is one transaction that also appends its audit record: the
//! change and its record commit together or not at all. Writes take the
//! database's write turn first (`BEGIN IMMEDIATE` on SQLite, a transaction
//! advisory lock on PostgreSQL), so read-then-write transactions queue
//! instead of failing, on one server or across replicas. On PostgreSQL each
//! write also notifies the [change feed](feed) in the same transaction.
//!
//! The store is never on the validate path of a known key; it feeds the
//! in-memory index at start and returns [`Change`]s for every write.
//!
//! The queries are written once, for sqlx's `Any` driver, in the SQL both
//! databases accept: numbered placeholders (`$1`), `ON CONFLICT`,
//! `RETURNING`, aggregate `FILTER`. What does differ is in [`Backend`].

pub mod feed;

use std::{
    collections::{BTreeMap, HashMap},
    fmt::{self, Write as _},
    fs::OpenOptions,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::{
    Any, AnyConnection, AnyPool, Arguments, AssertSqlSafe, Encode, Executor, Row, Transaction,
    Type,
    any::{AnyArguments, AnyPoolOptions, AnyRow},
    postgres::PgConnectOptions,
};

use crate::{
    cidr::Cidr,
    clock::Timestamp,
    key::{KeyDigest, KeyId, Prefix},
    model::{
        Actor, AuditAction, AuditRecord, Change, IndexedKey, KeyRecord, KeySettings, KeyState,
        Labels, Role,
    },
    permission::{Permission, RoleName},
    rate_limit::RateLimit,
    usage::UsageDelta,
};

use self::feed::{Changed, Topic};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The key of the PostgreSQL advisory lock that serialises writes across
/// replicas (the ASCII of "keyward").
const WRITE_LOCK: i64 = 0x006b_6579_7761_7264;

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

/// A key about to be written: its settings plus the digest of its secret.
#[derive(Debug)]
pub struct NewKey {
    pub id: KeyId,
    pub digest: KeyDigest,
    pub settings: KeySettings,
    pub created_by: Option<KeyId>,
}

/// Everything the index needs at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Keys that can still validate (not revoked, not expired).
    pub keys: Vec<(KeyRecord, KeyDigest)>,
    pub roles: Vec<Role>,
}

/// Filters and position for [`Store::list_keys`].
#[derive(Debug, Clone, Default)]
pub struct KeyQuery {
    pub labels: BTreeMap<String, String>,
    pub owner: Option<String>,
    pub role: Option<RoleName>,
    pub state: Option<KeyState>,
    pub after: Option<PageCursor>,
    pub limit: u32,
}

/// Where a page ends: keys are listed newest first by `(created_at, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCursor {
    pub created_at: Timestamp,
    pub id: KeyId,
}

/// One page of keys.
#[derive(Debug)]
pub struct KeyPage {
    pub keys: Vec<KeyRecord>,
    /// Set when more keys may follow.
    pub next: Option<PageCursor>,
}

/// The outcome of a rotation.
#[derive(Debug)]
pub struct Rotation {
    pub previous: KeyRecord,
    pub successor: KeyRecord,
}

/// The outcome of a revocation.
#[derive(Debug)]
pub struct Revocation {
    pub key: KeyRecord,
    /// True when the key was revoked before; nothing changed.
    pub already_revoked: bool,
}

/// A change to a role's settings; `None` fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct RoleUpdate {
    pub add_permissions: Vec<Permission>,
    pub remove_permissions: Vec<Permission>,
    pub description: Option<String>,
    /// `Some(None)` removes the cap.
    pub max_ttl: Option<Option<Duration>>,
    /// `Some(None)` removes the default rate limit.
    pub rate_limit: Option<Option<RateLimit>>,
}

/// Filters and position for [`Store::list_audit`].
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub target: Option<String>,
    pub actor: Option<KeyId>,
    pub action: Option<String>,
    /// Only records with a smaller sequence number (the next page).
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// One page of audit records, newest first.
#[derive(Debug)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    /// Set when more records may follow: pass as `before_seq`.
    pub next_before_seq: Option<i64>,
}

/// Which database a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One file, one server: the embedded default.
    Sqlite,
    /// One database shared by many replicas, with a change feed.
    Postgres,
}

/// Connection pool settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// The most connections one server opens.
    pub max_connections: u32,
    /// How long a query waits for a connection (including connecting)
    /// before it fails with "unavailable".
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// Where a database URL points. Its `Debug` never shows a password.
#[derive(Clone, PartialEq, Eq)]
enum Location {
    SqliteFile(PathBuf),
    /// The URL as given, and a description for messages (no password).
    Postgres {
        url: String,
        shown: String,
    },
}

impl Location {
    fn parse(database_url: &str) -> Result<Self, StoreError> {
        if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(database_url)
                .map_err(|error| StoreError::InvalidUrl(without_secrets(&error.to_string())))?;
            let shown = format!(
                "postgres://{}:{}/{}",
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or_default()
            );
            return Ok(Self::Postgres {
                url: database_url.to_owned(),
                shown,
            });
        }
        sqlite_path(database_url).map(Self::SqliteFile)
    }

    fn shown(&self) -> String {
        match self {
            Self::SqliteFile(path) => path.display().to_string(),
            Self::Postgres { shown, .. } => shown.clone(),
        }
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

/// `database_url` for logs and `Debug`: the file, or the PostgreSQL server
/// and database, never a password.
pub fn redacted_url(database_url: &str) -> String {
    Location::parse(database_url).map_or_else(
        |_| "(unparseable URL)".to_owned(),
        |location| location.shown(),
    )
}

/// Keeps a URL-parsing error's message but drops any URL it quotes, which
/// could hold a password.
fn without_secrets(message: &str) -> String {
    match message.split_once("://") {
        Some((head, _)) => format!("{head}://… (check the URL's syntax)"),
        None => message.to_owned(),
    }
}

/// The durable store. Its `Debug` never shows the database URL, which may
/// hold a password.
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// For the change feed's own connection (PostgreSQL only).
    postgres_url: Option<String>,
    calls: AtomicU64,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens and migrates the database at `database_url` with default pool
    /// settings.
    ///
    /// # Errors
    /// See [`Store::open_with`].
    pub async fn open(database_url: &str) -> Result<Self, StoreError> {
        Self::open_with(database_url, PoolSettings::default()).await
    }

    /// Opens and migrates the database at `database_url`: `sqlite://PATH`
    /// (the file is created with mode 0600 if missing) or `postgres://…`
    /// (the database must exist).
    ///
    /// # Errors
    /// A [`StoreError`] naming the file or server (never a password) when it
    /// cannot be created, reached or migrated.
    pub async fn open_with(database_url: &str, pool: PoolSettings) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let location = Location::parse(database_url)?;
        let (backend, url) = match &location {
            Location::SqliteFile(path) => {
                create_private_file(path)?;
                (Backend::Sqlite, sqlite_url(path))
            }
            Location::Postgres { url, .. } => (Backend::Postgres, url.clone()),
        };
        let open_error = |source| StoreError::Open {
            database: location.shown(),
            source,
        };
        let lock_timeout_ms = pool.acquire_timeout.as_millis().max(1);
        let pool = AnyPoolOptions::new()
            .max_connections(pool.max_connections)
            .acquire_timeout(pool.acquire_timeout)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    match backend {
                        // WAL: readers never wait for the writer. FULL: a
                        // revocation or audit record acknowledged to an
                        // operator survives a power cut. Writes are rare; the
                        // validate path never writes.
                        Backend::Sqlite => {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                            )
                            .await?;
                        }
                        // A write waits for the write turn no longer than for
                        // a connection, and a session that dies mid-write
                        // (say, a replica cut off) releases it within 30 s,
                        // instead of holding every replica's writes.
                        Backend::Postgres => {
                            conn.execute(AssertSqlSafe(format!(
                                "SET lock_timeout = {lock_timeout_ms}; \
                                 SET idle_in_transaction_session_timeout = 30000;"
                            )))
                            .await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(open_error)?;
        match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        Ok(Self {
            pool,
            backend,
            postgres_url: (backend == Backend::Postgres).then_some(url),
            calls: AtomicU64::new(0),
        })
    }

    /// The database this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// How many store operations (each one or more queries) requests caused
    /// so far. Tests use it to show that validating a known key touches no
    /// database. Loading the index (at start, and the change feed's reloads
    /// and resyncs) is not counted: it runs on its own schedule.
    pub fn operations(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a write transaction holding the database's write turn.
    async fn begin_write(&self) -> Result<Transaction<'static, Any>, StoreError> {
        match self.backend {
            Backend::Sqlite => Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)")
                    .bind(WRITE_LOCK)
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }

    /// On PostgreSQL, locks key `id`'s row until `tx` ends. Validations on
    /// any replica spend uses (`consume_use`) without the write turn, so a
    /// write that reads the remaining uses and writes them back must hold
    /// the row meanwhile. (SQLite's write lock already covers it.)
    async fn lock_key(&self, tx: &mut AnyConnection, id: KeyId) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }

    /// Tells the other replicas, when `tx` commits, what to reload. Nothing
    /// to do on SQLite, where this server is the only one.
    async fn notify(
        &self,
        tx: &mut AnyConnection,
        topics: impl IntoIterator<Item = Topic>,
    ) -> Result<(), StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        for payload in topics.into_iter().flat_map(|topic| topic.payloads()) {
            sqlx::query("SELECT 1 FROM pg_notify($1, $2)")
                .bind(feed::CHANNEL)
                .bind(payload)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }

    /// Whether the built-in roles and first admin key exist.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn is_initialized(&self) -> Result<bool, StoreError> {
        self.count();
        let row = sqlx::query("SELECT 1 FROM keyward_meta WHERE name = 'initialized_at'")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Creates the built-in roles and the first admin key, once.
    ///
    /// # Errors
    /// [`StoreError::AlreadyInitialized`] on the second call.
    pub async fn initialize(
        &self,
        roles: &[Role],
        admin: NewKey,
        now: Timestamp,
    ) -> Result<KeyRecord, StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        let marked = sqlx::query(
            "INSERT INTO keyward_meta (name, value) VALUES ('initialized_at', $1) ON CONFLICT DO NOTHING",
        )
        .bind(now.as_millis().to_string())
        .execute(&mut *tx)
        .await?;
        if marked.rows_affected() == 0 {
            return Err(StoreError::AlreadyInitialized);
        }
        for role in roles {
            insert_role(&mut tx, role).await?;
        }
        let record = insert_key(&mut tx, admin, None, now).await?;
        append_audit(
            &mut tx,
            now,
            Actor::Local,
            AuditAction::Initialize,
            Some(&record.id.to_string()),
            None,
        )
        .await?;
        let mut topics: Vec<Topic> = roles
            .iter()
            .map(|role| Topic::Role(role.name.clone()))
            .collect();
        topics.push(Topic::Keys(vec![record.id]));
        self.notify(&mut tx, topics).await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Loads every key that can still validate, and every role.
    ///
    /// # Errors
    /// On a database failure or a row keyward could not have written.
    pub async fn load_snapshot(&self, now: Timestamp) -> Result<Snapshot, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query(
            "SELECT * FROM api_keys WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1) AND (uses_remaining IS NULL OR uses_remaining > 0)",
        )
        .bind(now.as_millis())
        .fetch_all(&mut *conn)
        .await?;
        let keys = with_details(&mut conn, rows, true).await?;
        let keys = keys
            .into_iter()
            .map(|(record, digest)| (record, digest.expect("digest requested")))
            .collect();
        let roles = load_roles(&mut conn).await?;
        Ok(Snapshot { keys, roles })
    }

    /// Writes a new key and its audit record.
    ///
    /// # Errors
    /// [`StoreError::IdCollision`] when the random id is taken (mint again).
    pub async fn insert_key(
        &self,
        key: NewKey,
        actor: Actor,
        now: Timestamp,
    ) -> Result<KeyRecord, StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        let record = insert_key(&mut tx, key, None, now).await?;
        append_audit(
            &mut tx,
            now,
            actor,
            AuditAction::Mint,
            Some(&record.id.to_string()),
            None,
        )
        .await?;
        self.notify(&mut tx, [Topic::Keys(vec![record.id])]).await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Whether key `id` exists, unrevoked and unexpired at `now`.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn key_is_live(&self, id: KeyId, now: Timestamp) -> Result<bool, StoreError> {
        self.count();
        let row = sqlx::query(
            "SELECT 1 FROM api_keys WHERE id = $1 AND revoked_at IS NULL
                                      AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(id.to_string())
        .bind(now.as_millis())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// One key, whatever its state.
    ///
    /// # Errors
    /// [`StoreError::KeyNotFound`] for an unknown id.
    pub async fn get_key(&self, id: KeyId) -> Result<KeyRecord, StoreError> {
        self.count();
        let mut conn = self.pool.acquire().await?;
        fetch_key(&mut conn, id).await
    }

    /// A page of keys, newest first, filtered.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn list_keys(&self, query: &KeyQuery, now: Timestamp) -> Result<KeyPage, StoreError> {
        self.count();
        let mut sql = Sql::new("SELECT * FROM api_keys k WHERE 1 = 1");
        push_label_filters(&mut sql, &query.labels);
        if let Some(owner) = &query.owner {
            sql.push(" AND k.owner = ").push_bind(owner.clone());
        }
        if let Some(role) = &query.role {
            sql.push(" AND EXISTS (SELECT 1 FROM key_roles r WHERE r.key_id = k.id AND r.role = ")
                .push_bind(role.as_str().to_owned())
                .push(")");
        }
        match query.state {
            None => {}
            Some(KeyState::Revoked) => {
                sql.push(" AND k.revoked_at IS NOT NULL");
            }
            Some(KeyState::Expired) => {
                sql.push(" AND k.revoked_at IS NULL AND k.expires_at <= ")
                    .push_bind(now.as_millis());
            }
            Some(KeyState::Active) => {
                sql.push(" AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > ")
                    .push_bind(now.as_millis())
                    .push(") AND (k.uses_remaining IS NULL OR k.uses_remaining > 0)");
            }
            Some(KeyState::Exhausted) => {
                sql.push(" AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > ")
                    .push_bind(now.as_millis())
                    .push(") AND k.uses_remaining = 0");
            }
        }
        if let Some(cursor) = query.after {
            sql.push(" AND (k.created_at < ")
                .push_bind(cursor.created_at.as_millis())
                .push(" OR (k.created_at = ")
                .push_bind(cursor.created_at.as_millis())
                .push(" AND k.id < ")
                .push_bind(cursor.id.to_string())
                .push("))");
        }
        // One extra row tells whether another page follows.
        sql.push(" ORDER BY k.created_at DESC, k.id DESC LIMIT ")
            .push_bind(i64::from(query.limit) + 1);

        let mut conn = self.pool.acquire().await?;
        let mut rows = sql.build().fetch_all(&mut *conn).await?;
        let more = rows.len() > query.limit as usize;
        rows.truncate(query.limit as usize);
        let keys: Vec<KeyRecord> = with_details(&mut conn, rows, false)
            .await?
            .into_iter()
            .map(|(record, _)| record)
            .collect();
        let next = more.then(|| keys.last()).flatten().map(|last| PageCursor {
            created_at: last.created_at,
            id: last.id,
        });
        Ok(KeyPage { keys, next })
    }

    /// Replaces key `id` by a successor with the same settings and the new
    /// secret whose digest is given (see [`KeyRecord::successor_settings`]). The old
    /// key expires at `now + grace`, or is revoked at once when `grace` is
    /// zero; both rows link to each other.
    ///
    /// # Errors
    /// [`StoreError::KeyNotFound`], or [`StoreError::NotRotatable`] for a
    /// revoked, expired or already rotated key.
    pub async fn rotate_key(
        &self,
        id: KeyId,
        successor: (KeyId, KeyDigest),
        grace: Duration,
        actor: Actor,
        now: Timestamp,
    ) -> Result<Rotation, StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        self.lock_key(&mut tx, id).await?;
        let mut previous = fetch_key(&mut tx, id).await?;
        let refusal = match previous.state(now) {
            KeyState::Revoked => Some("it is revoked"),
            KeyState::Expired => Some("it has expired"),
            KeyState::Exhausted => Some("its uses are spent"),
            KeyState::Active if previous.rotated_to.is_some() => Some("it was already rotated"),
            KeyState::Active => None,
        };
        if let Some(why) = refusal {
            return Err(StoreError::NotRotatable { id, why });
        }

        let (successor_id, digest) = successor;
        let new_key = NewKey {
            id: successor_id,
            digest,
            settings: previous.successor_settings(now),
            created_by: actor.key_id(),
        };
        let successor = insert_key(&mut tx, new_key, Some(id), now).await?;
        previous.rotated_to = Some(successor.id);
        if previous.uses_remaining.is_some() {
            // The remaining uses move to the successor: a rotation never
            // raises a cap, so the old key stops now, grace or not.
            previous.uses_remaining = Some(0);
        }
        if grace.is_zero() {
            previous.revoked_at = Some(now);
            previous.revoke_reason = Some("rotated".to_owned());
        } else {
            let grace_end = now.saturating_add(grace);
            previous.settings.expires_at = Some(match previous.settings.expires_at {
                Some(earlier) if earlier < grace_end => earlier,
                _ => grace_end,
            });
        }
        sqlx::query(
            "UPDATE api_keys SET rotated_to = $1, expires_at = $2, revoked_at = $3, revoke_reason = $4, uses_remaining = $5
             WHERE id = $6",
        )
        .bind(successor.id.to_string())
        .bind(previous.settings.expires_at.map(Timestamp::as_millis))
        .bind(previous.revoked_at.map(Timestamp::as_millis))
        .bind(previous.revoke_reason.clone())
        .bind(previous.uses_remaining.map(count_to_i64))
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        let reason = format!(
            "successor {}, grace {}",
            successor.id,
            humantime::format_duration(grace)
        );
        append_audit(
            &mut tx,
            now,
            actor,
            AuditAction::Rotate,
            Some(&id.to_string()),
            Some(&reason),
        )
        .await?;
        // The successor's own history starts with how it was made.
        append_audit(
            &mut tx,
            now,
            actor,
            AuditAction::Mint,
            Some(&successor.id.to_string()),
            Some(&format!("rotation of {id}")),
        )
        .await?;
        self.notify(&mut tx, [Topic::Keys(vec![id, successor.id])])
            .await?;
        tx.commit().await?;
        Ok(Rotation {
            previous,
            successor,
        })
    }

    /// Revokes key `id` at `now`. Idempotent: a revoked key stays revoked at
    /// its first revocation time and no audit record is added.
    ///
    /// # Errors
    /// [`StoreError::KeyNotFound`] for an unknown id.
    pub async fn revoke_key(
        &self,
        id: KeyId,
        reason: &str,
        actor: Actor,
        now: Timestamp,
    ) -> Result<Revocation, StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        let mut key = fetch_key(&mut tx, id).await?;
        if key.revoked_at.is_some() {
            return Ok(Revocation {
                key,
                already_revoked: true,
            });
        }
        let reason = (!reason.is_empty()).then_some(reason);
        mark_revoked(&mut tx, id, reason, actor, now).await?;
        self.notify(&mut tx, [Topic::Keys(vec![id])]).await?;
        tx.commit().await?;
        key.revoked_at = Some(now);
        key.revoke_reason = reason.map(str::to_owned);
        Ok(Revocation {
            key,
            already_revoked: false,
        })
    }

    /// The unrevoked keys carrying all `labels` (and `owner`, if given).
    ///
    /// # Errors
    /// On a database failure.
    pub async fn unrevoked_matching(
        &self,
        labels: &BTreeMap<String, String>,
        owner: Option<&str>,
    ) -> Result<Vec<KeyId>, StoreError> {
        self.count();
        let mut conn = self.pool.acquire().await?;
        unrevoked_matching(&mut conn, labels, owner).await
    }

    /// Revokes every unrevoked key carrying all `labels` (and `owner`, if
    /// given), and among `only` when given (the keys a caller was checked
    /// against: another replica may have minted a matching key since), one
    /// audit record per key, in one transaction.
    ///
    /// # Errors
    /// On a database failure; nothing is revoked then.
    pub async fn revoke_matching(
        &self,
        labels: &BTreeMap<String, String>,
        owner: Option<&str>,
        only: Option<&[KeyId]>,
        reason: &str,
        actor: Actor,
        now: Timestamp,
    ) -> Result<Vec<KeyId>, StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        let mut ids = unrevoked_matching(&mut tx, labels, owner).await?;
        if let Some(only) = only {
            ids.retain(|id| only.contains(id));
        }
        let reason = (!reason.is_empty()).then_some(reason);
        for id in &ids {
            mark_revoked(&mut tx, *id, reason, actor, now).await?;
        }
        self.notify(&mut tx, [Topic::Keys(ids.clone())]).await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// Every role, by name.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn list_roles(&self) -> Result<Vec<Role>, StoreError> {
        self.count();
        let mut conn = self.pool.acquire().await?;
        load_roles(&mut conn).await
    }

    /// Creates `role` and its audit record.
    ///
    /// # Errors
    /// [`StoreError::RoleExists`] for a taken name.
    pub async fn create_role(&self, role: &Role, actor: Actor) -> Result<(), StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        if !insert_role(&mut tx, role).await? {
            return Err(StoreError::RoleExists(role.name.clone()));
        }
        let detail = permission_list(&role.permissions);
        append_audit(
            &mut tx,
            role.created_at,
            actor,
            AuditAction::RoleCreate,
            Some(role.name.as_str()),
            Some(&detail),
        )
        .await?;
        self.notify(&mut tx, [Topic::Role(role.name.clone())])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Applies `update` to role `name` and returns the role as it is now.
    ///
    /// # Errors
    /// [`StoreError::RoleNotFound`], or [`StoreError::BuiltinRole`].
    pub async fn update_role(
        &self,
        name: &RoleName,
        update: &RoleUpdate,
        actor: Actor,
        now: Timestamp,
    ) -> Result<Role, StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        let mut role = load_roles(&mut tx)
            .await?
            .into_iter()
            .find(|role| &role.name == name)
            .ok_or_else(|| StoreError::RoleNotFound(name.clone()))?;
        if role.builtin {
            return Err(StoreError::BuiltinRole(name.clone()));
        }
        let mut permissions: Vec<Permission> = role
            .permissions
            .iter()
            .filter(|p| !update.remove_permissions.contains(p))
            .chain(update.add_permissions.iter())
            .cloned()
            .collect();
        permissions.sort();
        permissions.dedup();
        role.permissions = permissions.into();
        if let Some(description) = &update.description {
            role.description.clone_from(description);
        }
        if let Some(max_ttl) = update.max_ttl {
            role.max_ttl = max_ttl;
        }
        if let Some(rate_limit) = update.rate_limit {
            role.rate_limit = rate_limit;
        }
        role.updated_at = now;
        sqlx::query(
            "UPDATE roles SET description = $1, max_ttl_ms = $2, updated_at = $3,
                              rate_requests = $4, rate_period_ms = $5, rate_burst = $6
             WHERE name = $7",
        )
        .bind(role.description.clone())
        .bind(role.max_ttl.map(duration_millis))
        .bind(now.as_millis())
        .bind(role.rate_limit.map(|l| i64::from(l.requests())))
        .bind(role.rate_limit.map(|l| duration_millis(l.per())))
        .bind(role.rate_limit.map(|l| i64::from(l.burst())))
        .bind(name.as_str().to_owned())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM role_permissions WHERE role = $1")
            .bind(name.as_str().to_owned())
            .execute(&mut *tx)
            .await?;
        insert_role_permissions(&mut tx, &role).await?;
        let detail = permission_list(&role.permissions);
        append_audit(
            &mut tx,
            now,
            actor,
            AuditAction::RoleUpdate,
            Some(name.as_str()),
            Some(&detail),
        )
        .await?;
        self.notify(&mut tx, [Topic::Role(name.clone())]).await?;
        tx.commit().await?;
        Ok(role)
    }

    /// Deletes role `name`, which no key may hold (revoked keys included:
    /// their records keep naming the roles they had).
    ///
    /// # Errors
    /// [`StoreError::RoleNotFound`], [`StoreError::BuiltinRole`] or
    /// [`StoreError::RoleInUse`] with how many keys hold it.
    pub async fn delete_role(
        &self,
        name: &RoleName,
        actor: Actor,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        let builtin: Option<i64> = sqlx::query("SELECT builtin FROM roles WHERE name = $1")
            .bind(name.as_str().to_owned())
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.try_get("builtin"))
            .transpose()?;
        match builtin {
            None => return Err(StoreError::RoleNotFound(name.clone())),
            Some(1) => return Err(StoreError::BuiltinRole(name.clone())),
            Some(_) => {}
        }
        let holders = sqlx::query(
            "SELECT COUNT(*) AS keys, COUNT(*) FILTER (WHERE k.revoked_at IS NULL) AS active
             FROM key_roles r JOIN api_keys k ON k.id = r.key_id WHERE r.role = $1",
        )
        .bind(name.as_str().to_owned())
        .fetch_one(&mut *tx)
        .await?;
        let keys: i64 = holders.try_get("keys")?;
        if keys > 0 {
            return Err(StoreError::RoleInUse {
                name: name.clone(),
                keys,
                active: holders.try_get("active")?,
            });
        }
        sqlx::query("DELETE FROM roles WHERE name = $1")
            .bind(name.as_str().to_owned())
            .execute(&mut *tx)
            .await?;
        append_audit(
            &mut tx,
            now,
            actor,
            AuditAction::RoleDelete,
            Some(name.as_str()),
            None,
        )
        .await?;
        self.notify(&mut tx, [Topic::Role(name.clone())]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A page of audit records, newest first.
    ///
    /// # Errors
    /// On a database failure or a row keyward could not have written.
    pub async fn list_audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        self.count();
        let mut sql = Sql::new("SELECT * FROM audit_log WHERE 1 = 1");
        if let Some(since) = query.since {
            sql.push(" AND at >= ").push_bind(since.as_millis());
        }
        if let Some(until) = query.until {
            sql.push(" AND at < ").push_bind(until.as_millis());
        }
        if let Some(target) = &query.target {
            sql.push(" AND target = ").push_bind(target.clone());
        }
        if let Some(actor) = query.actor {
            sql.push(" AND actor = ").push_bind(actor.to_string());
        }
        if let Some(action) = &query.action {
            sql.push(" AND action = ").push_bind(action.clone());
        }
        if let Some(before) = query.before_seq {
            sql.push(" AND seq < ").push_bind(before);
        }
        sql.push(" ORDER BY seq DESC LIMIT ")
            .push_bind(i64::from(query.limit) + 1);
        let mut rows = sql.build().fetch_all(&self.pool).await?;
        let more = rows.len() > query.limit as usize;
        rows.truncate(query.limit as usize);
        let records: Vec<AuditRecord> = rows
            .iter()
            .map(|row| {
                Ok(AuditRecord {
                    seq: row.try_get("seq")?,
                    at: Timestamp::from_millis(row.try_get("at")?),
                    actor: row
                        .try_get::<Option<String>, _>("actor")?
                        .map(|actor| {
                            actor.parse().map_err(|_| StoreError::Corrupt {
                                table: "audit_log",
                                what: "actor",
                            })
                        })
                        .transpose()?,
                    action: row.try_get("action")?,
                    target: row.try_get("target")?,
                    reason: row.try_get("reason")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        let next_before_seq = more.then(|| records.last().map(|r| r.seq)).flatten();
        Ok(AuditPage {
            records,
            next_before_seq,
        })
    }

    /// Listens to the change feed, on a connection of its own.
    ///
    /// # Errors
    /// [`StoreError::NoFeed`] on SQLite, where this server is the only
    /// writer; otherwise when PostgreSQL cannot be reached within `timeout`.
    pub async fn subscribe(&self, timeout: Duration) -> Result<feed::Subscription, StoreError> {
        let url = self.postgres_url.as_deref().ok_or(StoreError::NoFeed)?;
        feed::Subscription::connect(url, timeout).await
    }

    /// What the index must do to reflect `changed` as the database holds
    /// it now: keys that can validate are (re)loaded, every other named key
    /// is removed; each role is (re)loaded or removed.
    ///
    /// # Errors
    /// On a database failure or a row keyward could not have written.
    pub async fn changes_for(
        &self,
        changed: &Changed,
        now: Timestamp,
    ) -> Result<Vec<Change>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut changes = Vec::with_capacity(changed.keys.len() + changed.roles.len());
        if !changed.keys.is_empty() {
            let texts: Vec<String> = changed.keys.iter().map(ToString::to_string).collect();
            let rows = fetch_for_ids(&mut conn, "SELECT * FROM api_keys", "id", &texts).await?;
            let mut live: HashMap<KeyId, Arc<IndexedKey>> = with_details(&mut conn, rows, true)
                .await?
                .into_iter()
                .filter(|(record, _)| record.state(now) == KeyState::Active)
                .map(|(record, digest)| {
                    let digest = digest.expect("digest requested");
                    (record.id, Arc::new(IndexedKey::new(&record, digest)))
                })
                .collect();
            changes.extend(changed.keys.iter().map(|id| match live.remove(id) {
                Some(key) => Change::KeyUpserted(key),
                None => Change::KeyRemoved(*id),
            }));
        }
        if !changed.roles.is_empty() {
            let mut current: HashMap<RoleName, Role> = load_roles(&mut conn)
                .await?
                .into_iter()
                .filter(|role| changed.roles.contains(&role.name))
                .map(|role| (role.name.clone(), role))
                .collect();
            changes.extend(changed.roles.iter().map(|name| match current.remove(name) {
                Some(role) => Change::RoleUpserted(role),
                None => Change::RoleRemoved(name.clone()),
            }));
        }
        Ok(changes)
    }

    /// Spends one use of capped key `id`, durably, with a conditional update
    /// (never read-modify-write), so concurrent validations never exceed the
    /// cap. Returns the uses left, or `None` when none were left.
    ///
    /// # Errors
    /// On a database failure; the use is then not granted.
    pub async fn consume_use(&self, id: KeyId) -> Result<Option<u64>, StoreError> {
        self.count();
        let row = sqlx::query(
            "UPDATE api_keys SET uses_remaining = uses_remaining - 1
             WHERE id = $1 AND uses_remaining > 0 AND revoked_at IS NULL
             RETURNING uses_remaining",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok(row.try_get::<i64, _>("uses_remaining")?.unsigned_abs()))
            .transpose()
    }

    /// Adds batched usage to the keys' records, in one transaction.
    ///
    /// # Errors
    /// On a database failure; nothing is written then.
    pub async fn record_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        if deltas.is_empty() {
            return Ok(());
        }
        self.count();
        let mut tx = self.begin_write().await?;
        for delta in deltas {
            sqlx::query(
                "UPDATE api_keys SET use_count = use_count + $1,
                                     last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < $2
                                                         THEN $2 ELSE last_used_at END
                 WHERE id = $3",
            )
            .bind(count_to_i64(delta.uses))
            .bind(delta.last_used_at.as_millis())
            .bind(delta.key.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Sets (or with `None` removes) key `id`'s own rate limit.
    ///
    /// # Errors
    /// [`StoreError::KeyNotFound`] for an unknown id.
    pub async fn update_rate_limit(
        &self,
        id: KeyId,
        rate_limit: Option<RateLimit>,
        actor: Actor,
        now: Timestamp,
    ) -> Result<KeyRecord, StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        let mut key = fetch_key(&mut tx, id).await?;
        sqlx::query("UPDATE api_keys SET rate_requests = $1, rate_period_ms = $2, rate_burst = $3 WHERE id = $4")
            .bind(rate_limit.map(|l| i64::from(l.requests())))
            .bind(rate_limit.map(|l| duration_millis(l.per())))
            .bind(rate_limit.map(|l| i64::from(l.burst())))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        let detail = match rate_limit {
            Some(limit) => format!("rate limit {limit}"),
            None => "rate limit removed".to_owned(),
        };
        append_audit(
            &mut tx,
            now,
            actor,
            AuditAction::Update,
            Some(&id.to_string()),
            Some(&detail),
        )
        .await?;
        self.notify(&mut tx, [Topic::Keys(vec![id])]).await?;
        tx.commit().await?;
        key.settings.rate_limit = rate_limit;
        Ok(key)
    }
}

async fn unrevoked_matching(
    conn: &mut AnyConnection,
    labels: &BTreeMap<String, String>,
    owner: Option<&str>,
) -> Result<Vec<KeyId>, StoreError> {
    let mut sql = Sql::new("SELECT k.id FROM api_keys k WHERE k.revoked_at IS NULL");
    push_label_filters(&mut sql, labels);
    if let Some(owner) = owner {
        sql.push(" AND k.owner = ").push_bind(owner.to_owned());
    }
    sql.push(" ORDER BY k.id");
    sql.build()
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| parse_column(row, "id", "api_keys"))
        .collect()
}

/// Revokes key `id` and records it: the one way a key is revoked.
async fn mark_revoked(
    conn: &mut AnyConnection,
    id: KeyId,
    reason: Option<&str>,
    actor: Actor,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE api_keys SET revoked_at = $1, revoke_reason = $2 WHERE id = $3")
        .bind(now.as_millis())
        .bind(reason.map(str::to_owned))
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    append_audit(
        conn,
        now,
        actor,
        AuditAction::Revoke,
        Some(&id.to_string()),
        reason,
    )
    .await
}

/// Dynamic SQL with numbered placeholders (`$1`, `$2`, …), which SQLite and
/// PostgreSQL both accept. (sqlx's `QueryBuilder` writes `?` for `Any`.)
struct Sql {
    text: String,
    arguments: AnyArguments,
}

impl Sql {
    fn new(text: &'static str) -> Self {
        Self {
            text: text.to_owned(),
            arguments: AnyArguments::default(),
        }
    }

    fn push(&mut self, text: &'static str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    fn push_bind<T>(&mut self, value: T) -> &mut Self
    where
        T: for<'q> Encode<'q, Any> + Type<Any>,
    {
        self.arguments
            .add(value)
            .expect("encoding to Any cannot fail");
        write!(self.text, "${}", self.arguments.len()).expect("writing to a String cannot fail");
        self
    }

    /// The query, ready to run. Only `&'static str` fragments went into the
    /// text; every value is a bound parameter.
    fn build(self) -> sqlx::query::Query<'static, Any, AnyArguments> {
        sqlx::query_with(AssertSqlSafe(self.text), self.arguments)
    }
}

/// Adds `AND` clauses matching keys (aliased `k`) that carry every label.
fn push_label_filters(sql: &mut Sql, labels: &BTreeMap<String, String>) {
    for (name, value) in labels {
        sql.push(" AND EXISTS (SELECT 1 FROM key_labels l WHERE l.key_id = k.id AND l.name = ")
            .push_bind(name.clone())
            .push(" AND l.value = ")
            .push_bind(value.clone())
            .push(")");
    }
}

/// `permissions: a, b` for audit records of role changes.
fn permission_list(permissions: &[Permission]) -> String {
    let names: Vec<&str> = permissions.iter().map(Permission::as_str).collect();
    format!("permissions: {}", names.join(", "))
}

/// The file behind `sqlite://PATH` (also `sqlite:PATH`).
fn sqlite_path(database_url: &str) -> Result<PathBuf, StoreError> {
    let rest = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
        .ok_or(StoreError::UnsupportedUrl)?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() {
        return Err(StoreError::UnsupportedUrl);
    }
    Ok(PathBuf::from(path))
}

/// `sqlite://PATH` for sqlx, which percent-decodes the path: every byte
/// but unreserved ones and `/` is encoded, so the file opened is the file
/// created, whatever its name holds (` `, `%`, `#`).
fn sqlite_url(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut url = String::from("sqlite://");
    for &byte in path.as_os_str().as_bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            url.push(char::from(byte));
        } else {
            write!(url, "%{byte:02X}").expect("writing to a String cannot fail");
        }
    }
    url
}

/// Creates the database file readable by its owner only, before SQLite
/// opens it (SQLite gives its WAL and shared-memory files the same mode).
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|source| StoreError::CreateFile {
            path: path.to_owned(),
            source,
        })
}

/// Inserts `role`; `Ok(false)` when a role of that name exists.
async fn insert_role(conn: &mut AnyConnection, role: &Role) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO roles (name, description, builtin, max_ttl_ms, created_at, updated_at,
                            rate_requests, rate_period_ms, rate_burst)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (name) DO NOTHING",
    )
    .bind(role.name.as_str().to_owned())
    .bind(role.description.clone())
    .bind(i64::from(role.builtin))
    .bind(role.max_ttl.map(duration_millis))
    .bind(role.created_at.as_millis())
    .bind(role.updated_at.as_millis())
    .bind(role.rate_limit.map(|l| i64::from(l.requests())))
    .bind(role.rate_limit.map(|l| duration_millis(l.per())))
    .bind(role.rate_limit.map(|l| i64::from(l.burst())))
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    insert_role_permissions(conn, role).await?;
    Ok(true)
}

async fn insert_role_permissions(conn: &mut AnyConnection, role: &Role) -> Result<(), StoreError> {
    for permission in role.permissions.iter() {
        sqlx::query("INSERT INTO role_permissions (role, permission) VALUES ($1, $2)")
            .bind(role.name.as_str().to_owned())
            .bind(permission.as_str().to_owned())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

fn duration_millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn count_to_i64(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// The rate limit stored in `rate_requests`, `rate_period_ms`, `rate_burst`.
fn rate_limit_columns(row: &AnyRow, table: &'static str) -> Result<Option<RateLimit>, StoreError> {
    let requests: Option<i64> = row.try_get("rate_requests")?;
    let period: Option<i64> = row.try_get("rate_period_ms")?;
    let burst: Option<i64> = row.try_get("rate_burst")?;
    let corrupt = || StoreError::Corrupt {
        table,
        what: "rate limit",
    };
    match (requests, period, burst) {
        (None, None, None) => Ok(None),
        (Some(requests), Some(period), Some(burst)) => {
            let requests = u32::try_from(requests).map_err(|_| corrupt())?;
            let burst = u32::try_from(burst).map_err(|_| corrupt())?;
            let per = Duration::from_millis(u64::try_from(period).map_err(|_| corrupt())?);
            RateLimit::new(requests, per, burst)
                .map(Some)
                .map_err(|_| corrupt())
        }
        _ => Err(corrupt()),
    }
}

fn optional_count(row: &AnyRow, column: &str) -> Result<Option<u64>, StoreError> {
    Ok(row
        .try_get::<Option<i64>, _>(column)?
        .map(i64::unsigned_abs))
}

async fn insert_key(
    conn: &mut AnyConnection,
    key: NewKey,
    rotated_from: Option<KeyId>,
    now: Timestamp,
) -> Result<KeyRecord, StoreError> {
    let id = key.id.to_string();
    let inserted = sqlx::query(
        "INSERT INTO api_keys (id, prefix, digest, owner, description, created_at, created_by, expires_at, rotated_from,
                               rate_requests, rate_period_ms, rate_burst, max_uses, uses_remaining)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id.clone())
    .bind(key.settings.prefix.as_str().to_owned())
    .bind(key.digest.as_bytes().to_vec())
    .bind(key.settings.owner.clone())
    .bind(key.settings.description.clone())
    .bind(now.as_millis())
    .bind(key.created_by.map(|k| k.to_string()))
    .bind(key.settings.expires_at.map(Timestamp::as_millis))
    .bind(rotated_from.map(|k| k.to_string()))
    .bind(key.settings.rate_limit.map(|l| i64::from(l.requests())))
    .bind(key.settings.rate_limit.map(|l| duration_millis(l.per())))
    .bind(key.settings.rate_limit.map(|l| i64::from(l.burst())))
    .bind(key.settings.max_uses.map(count_to_i64))
    .bind(key.settings.max_uses.map(count_to_i64))
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(StoreError::IdCollision(key.id));
    }
    let children = [
        (
            "INSERT INTO key_roles (key_id, role) VALUES ($1, $2)",
            key.settings
                .roles
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
        ),
        (
            "INSERT INTO key_permissions (key_id, permission) VALUES ($1, $2)",
            key.settings
                .permissions
                .iter()
                .map(ToString::to_string)
                .collect(),
        ),
        (
            "INSERT INTO key_cidrs (key_id, cidr) VALUES ($1, $2)",
            key.settings
                .allowed_cidrs
                .iter()
                .map(ToString::to_string)
                .collect(),
        ),
    ];
    for (insert, values) in children {
        for value in values {
            sqlx::query(insert)
                .bind(id.clone())
                .bind(value)
                .execute(&mut *conn)
                .await?;
        }
    }
    for (name, value) in key.settings.labels.as_map() {
        sqlx::query("INSERT INTO key_labels (key_id, name, value) VALUES ($1, $2, $3)")
            .bind(id.clone())
            .bind(name.clone())
            .bind(value.clone())
            .execute(&mut *conn)
            .await?;
    }
    let mut record = KeyRecord::new(key.id, key.settings, now, key.created_by);
    record.rotated_from = rotated_from;
    Ok(record)
}

async fn append_audit(
    conn: &mut AnyConnection,
    at: Timestamp,
    actor: Actor,
    action: AuditAction,
    target: Option<&str>,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, target, reason) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(at.as_millis())
    .bind(actor.key_id().map(|id| id.to_string()))
    .bind(action.as_str())
    .bind(target.map(str::to_owned))
    .bind(reason.map(str::to_owned))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn fetch_key(conn: &mut AnyConnection, id: KeyId) -> Result<KeyRecord, StoreError> {
    let row = sqlx::query("SELECT * FROM api_keys WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::KeyNotFound(id))?;
    let mut records = with_details(conn, vec![row], false).await?;
    Ok(records.pop().expect("one row in, one record out").0)
}

/// Turns `api_keys` rows into records, loading their roles, permissions,
/// CIDRs and labels with one query each. Keeps the order of `rows`.
async fn with_details(
    conn: &mut AnyConnection,
    rows: Vec<AnyRow>,
    with_digest: bool,
) -> Result<Vec<(KeyRecord, Option<KeyDigest>)>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = rows
        .iter()
        .map(|row| row.try_get::<String, _>("id"))
        .collect::<Result<_, _>>()?;
    let mut roles: HashMap<String, Vec<RoleName>> = group_by_key(
        fetch_for_ids(
            conn,
            "SELECT key_id, role AS item FROM key_roles",
            "key_id",
            &ids,
        )
        .await?,
        "key_roles",
    )?;
    let mut permissions: HashMap<String, Vec<Permission>> = group_by_key(
        fetch_for_ids(
            conn,
            "SELECT key_id, permission AS item FROM key_permissions",
            "key_id",
            &ids,
        )
        .await?,
        "key_permissions",
    )?;
    let mut cidrs: HashMap<String, Vec<Cidr>> = group_by_key(
        fetch_for_ids(
            conn,
            "SELECT key_id, cidr AS item FROM key_cidrs",
            "key_id",
            &ids,
        )
        .await?,
        "key_cidrs",
    )?;
    let mut labels: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    for row in fetch_for_ids(
        conn,
        "SELECT key_id, name, value FROM key_labels",
        "key_id",
        &ids,
    )
    .await?
    {
        labels
            .entry(row.try_get("key_id")?)
            .or_default()
            .insert(row.try_get("name")?, row.try_get("value")?);
    }
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("id")?;
            let labels = Labels::new(labels.remove(&id).unwrap_or_default()).map_err(|_| {
                StoreError::Corrupt {
                    table: "key_labels",
                    what: "label",
                }
            })?;
            let mut record = key_record(row, roles.remove(&id).unwrap_or_default(), labels)?;
            record.settings.permissions = permissions.remove(&id).unwrap_or_default();
            record.settings.allowed_cidrs = cidrs.remove(&id).unwrap_or_default();
            let digest = if with_digest {
                Some(key_digest(row)?)
            } else {
                None
            };
            Ok((record, digest))
        })
        .collect()
}

/// Groups `(key_id, item)` rows by key id, parsing each item.
fn group_by_key<T: FromStr>(
    rows: Vec<AnyRow>,
    table: &'static str,
) -> Result<HashMap<String, Vec<T>>, StoreError> {
    let mut grouped: HashMap<String, Vec<T>> = HashMap::new();
    for row in rows {
        let item = parse_column(&row, "item", table)?;
        grouped
            .entry(row.try_get("key_id")?)
            .or_default()
            .push(item);
    }
    Ok(grouped)
}

/// Runs `select` restricted to `column IN ids`, in chunks that stay below
/// both databases' bound-parameter limits.
async fn fetch_for_ids(
    conn: &mut AnyConnection,
    select: &'static str,
    column: &'static str,
    ids: &[String],
) -> Result<Vec<AnyRow>, StoreError> {
    let mut rows = Vec::new();
    for chunk in ids.chunks(10_000) {
        let mut sql = Sql::new(select);
        sql.push(" WHERE ").push(column).push(" IN (");
        for (position, id) in chunk.iter().enumerate() {
            if position > 0 {
                sql.push(", ");
            }
            sql.push_bind(id.clone());
        }
        sql.push(")");
        rows.extend(sql.build().fetch_all(&mut *conn).await?);
    }
    Ok(rows)
}

async fn load_roles(conn: &mut AnyConnection) -> Result<Vec<Role>, StoreError> {
    let mut permissions: HashMap<String, Vec<Permission>> = HashMap::new();
    for row in sqlx::query("SELECT role, permission FROM role_permissions")
        .fetch_all(&mut *conn)
        .await?
    {
        let permission = parse_column(&row, "permission", "role_permissions")?;
        permissions
            .entry(row.try_get("role")?)
            .or_default()
            .push(permission);
    }
    sqlx::query("SELECT * FROM roles ORDER BY name")
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| {
            let name: String = row.try_get("name")?;
            Ok(Role {
                permissions: permissions.remove(&name).unwrap_or_default().into(),
                name: parse_column(row, "name", "roles")?,
                description: row.try_get("description")?,
                max_ttl: row
                    .try_get::<Option<i64>, _>("max_ttl_ms")?
                    .map(|ms| Duration::from_millis(ms.unsigned_abs())),
                rate_limit: rate_limit_columns(row, "roles")?,
                builtin: row.try_get::<i64, _>("builtin")? != 0,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
            })
        })
        .collect()
}

fn key_record(row: &AnyRow, roles: Vec<RoleName>, labels: Labels) -> Result<KeyRecord, StoreError> {
    let timestamp = |column: &str| -> Result<Option<Timestamp>, StoreError> {
        Ok(row
            .try_get::<Option<i64>, _>(column)?
            .map(Timestamp::from_millis))
    };
    let key_id = |column: &'static str| -> Result<Option<KeyId>, StoreError> {
        row.try_get::<Option<String>, _>(column)?
            .map(|text| {
                text.parse().map_err(|_| StoreError::Corrupt {
                    table: "api_keys",
                    what: column,
                })
            })
            .transpose()
    };
    Ok(KeyRecord {
        id: parse_column(row, "id", "api_keys")?,
        settings: KeySettings {
            prefix: parse_column::<Prefix>(row, "prefix", "api_keys")?,
            roles,
            permissions: Vec::new(),
            allowed_cidrs: Vec::new(),
            labels,
            owner: row.try_get("owner")?,
            description: row.try_get("description")?,
            expires_at: timestamp("expires_at")?,
            rate_limit: rate_limit_columns(row, "api_keys")?,
            max_uses: optional_count(row, "max_uses")?,
        },
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        created_by: key_id("created_by")?,
        revoked_at: timestamp("revoked_at")?,
        revoke_reason: row.try_get("revoke_reason")?,
        rotated_from: key_id("rotated_from")?,
        rotated_to: key_id("rotated_to")?,
        uses_remaining: optional_count(row, "uses_remaining")?,
        last_used_at: timestamp("last_used_at")?,
        use_count: row.try_get::<i64, _>("use_count")?.unsigned_abs(),
    })
}

fn key_digest(row: &AnyRow) -> Result<KeyDigest, StoreError> {
    let bytes: Vec<u8> = row.try_get("digest")?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        table: "api_keys",
        what: "digest",
    })?;
    Ok(KeyDigest::from_bytes(bytes))
}

fn parse_column<T: FromStr>(
    row: &AnyRow,
    column: &'static str,
    table: &'static str,
) -> Result<T, StoreError> {
    row.try_get::<String, _>(column)?
        .parse()
        .map_err(|_| StoreError::Corrupt {
            table,
            what: column,
        })
}

/// Shared by tests of every layer that needs a real store.
#[cfg(test)]
pub(crate) async fn open_temporary() -> (std::sync::Arc<Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keyward.db").display());
    (std::sync::Arc::new(Store::open(&url).await.unwrap()), dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls() {
        assert_eq!(
            sqlite_path("sqlite://keyward.db").unwrap(),
            PathBuf::from("keyward.db")
        );
        assert_eq!(
            sqlite_path("sqlite:///var/lib/k.db").unwrap(),
            PathBuf::from("/var/lib/k.db")
        );
        assert_eq!(
            sqlite_path("sqlite:k.db?mode=rwc").unwrap(),
            PathBuf::from("k.db")
        );
        assert!(matches!(
            sqlite_path("postgres://x"),
            Err(StoreError::UnsupportedUrl)
        ));
        assert!(matches!(
            sqlite_path("sqlite://"),
            Err(StoreError::UnsupportedUrl)
        ));
    }

    #[tokio::test]
    async fn odd_file_names_open_the_file_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key ward%20#1.db");
        let store = Store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        store.close().await;
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert!(
            files.iter().any(|name| name == "key ward%20#1.db"),
            "{files:?}"
        );
        assert!(
            std::fs::metadata(&path).unwrap().len() > 0,
            "migrated in place"
        );
    }

    #[tokio::test]
    async fn database_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let (_store, dir) = open_temporary().await;
        let mode = std::fs::metadata(dir.path().join("keyward.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn unwritable_path_is_named() {
        let err = Store::open("sqlite:///dev/null/keyward.db")
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("/dev/null/keyward.db"), "{message}");
    }

    /// A fresh PostgreSQL store, or `None` (skipped, reason printed) when
    /// PostgreSQL is unreachable outside CI.
    async fn open_postgres() -> Option<(Arc<Store>, crate::testing::ScratchDatabase)> {
        let database = crate::testing::ScratchDatabase::create().await?;
        let store = Store::open(database.url()).await.unwrap();
        Some((Arc::new(store), database))
    }

    async fn audit_log_is_append_only(store: &Store) {
        sqlx::query("INSERT INTO audit_log (at, action) VALUES (1, 'key.mint')")
            .execute(&store.pool)
            .await
            .unwrap();
        for sql in ["UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log"] {
            let err = sqlx::query(sql).execute(&store.pool).await.unwrap_err();
            assert!(err.to_string().contains("append-only"), "{err}");
        }
    }

    #[tokio::test]
    async fn sqlite_audit_log_is_append_only() {
        let (store, _dir) = open_temporary().await;
        audit_log_is_append_only(&store).await;
    }

    #[tokio::test]
    async fn postgres_audit_log_is_append_only() {
        if let Some((store, _database)) = open_postgres().await {
            audit_log_is_append_only(&store).await;
        }
    }

    #[tokio::test]
    async fn sqlite_has_no_change_feed() {
        let (store, _dir) = open_temporary().await;
        let refused = store.subscribe(Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(refused, StoreError::NoFeed), "{refused}");
    }

    #[tokio::test]
    async fn sqlite_writes_are_durable_and_wal() {
        let (store, _dir) = open_temporary().await;
        let mut conn = store.pool.acquire().await.unwrap();
        for (pragma, expected) in [
            ("PRAGMA journal_mode", "wal"),
            ("PRAGMA synchronous", "2"),
            ("PRAGMA foreign_keys", "1"),
        ] {
            let row = sqlx::query(pragma).fetch_one(&mut *conn).await.unwrap();
            let value: String = row
                .try_get::<String, _>(0)
                .or_else(|_| row.try_get::<i64, _>(0).map(|n| n.to_string()))
                .unwrap();
            assert_eq!(value, expected, "{pragma}");
        }
    }

    #[tokio::test]
    async fn database_urls_are_shown_without_their_password() {
        let location = Location::parse("postgres://kw:hunter2@db.internal:6543/keys").unwrap();
        assert_eq!(location.shown(), "postgres://db.internal:6543/keys");
        let err = Location::parse("postgres://kw:hunter2@db.internal:notaport/keys").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = Store::open("postgres://kw:hunter2@127.0.0.1:1/keys")
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("127.0.0.1:1"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    /// What another replica's notification makes of the database's rows.
    async fn changes_follow_the_database(store: &Store) {
        let now = Timestamp::from_millis(1_000_000);
        let new_key = |n: u64| NewKey {
            id: KeyId::from_u64(n),
            digest: KeyDigest::from_bytes([n as u8; 32]),
            settings: KeySettings::default(),
            created_by: None,
        };
        let (live, revoked, unknown) = (KeyId::from_u64(1), KeyId::from_u64(2), KeyId::from_u64(3));
        store
            .insert_key(new_key(1), Actor::Local, now)
            .await
            .unwrap();
        store
            .insert_key(new_key(2), Actor::Local, now)
            .await
            .unwrap();
        store
            .revoke_key(revoked, "", Actor::Local, now)
            .await
            .unwrap();

        let changes = store
            .changes_for(&Topic::Keys(vec![live, revoked, unknown]).into(), now)
            .await
            .unwrap();
        assert!(
            matches!(&changes[0], Change::KeyUpserted(key) if key.id == live && key.digest.as_bytes() == &[1; 32])
        );
        assert!(matches!(changes[1], Change::KeyRemoved(id) if id == revoked));
        assert!(matches!(changes[2], Change::KeyRemoved(id) if id == unknown));

        let name: RoleName = "deployer".parse().unwrap();
        let changes = store
            .changes_for(&Topic::Role(name.clone()).into(), now)
            .await
            .unwrap();
        assert!(matches!(&changes[..], [Change::RoleRemoved(gone)] if *gone == name));
        let role = Role {
            name: name.clone(),
            description: String::new(),
            permissions: ["deploy:write".parse().unwrap()].into(),
            max_ttl: None,
            rate_limit: None,
            builtin: false,
            created_at: now,
            updated_at: now,
        };
        store.create_role(&role, Actor::Local).await.unwrap();
        let changes = store
            .changes_for(&Topic::Role(name.clone()).into(), now)
            .await
            .unwrap();
        assert!(matches!(
            &changes[..],
            [Change::RoleUpserted(found)] if found.name == role.name && found.permissions == role.permissions
        ));

        // Many notifications, one batch: each key and role once.
        let mut changed = Changed::from(Topic::Keys(vec![revoked, live]));
        changed.add(Topic::Role(name.clone()));
        changed.add(Topic::Keys(vec![live]));
        let changes = store.changes_for(&changed, now).await.unwrap();
        assert!(matches!(
            &changes[..],
            [Change::KeyUpserted(key), Change::KeyRemoved(gone), Change::RoleUpserted(found)]
                if key.id == live && *gone == revoked && found.name == name
        ));
    }

    #[tokio::test]
    async fn sqlite_changes_follow_the_database() {
        let (store, _dir) = open_temporary().await;
        changes_follow_the_database(&store).await;
    }

    #[tokio::test]
    async fn postgres_changes_follow_the_database() {
        if let Some((store, _database)) = open_postgres().await {
            changes_follow_the_database(&store).await;
        }
    }

    /// Validations spend uses while the key is rotated: the uses spent and
    /// the uses handed to the successor never add up to more than the cap.
    async fn a_rotation_never_raises_a_cap_under_concurrent_use(store: Arc<Store>) {
        const CAP: u64 = 40;
        let now = Timestamp::from_millis(1_000_000);
        let id = KeyId::from_u64(11);
        let key = NewKey {
            id,
            digest: KeyDigest::from_bytes([11; 32]),
            settings: KeySettings {
                max_uses: Some(CAP),
                ..KeySettings::default()
            },
            created_by: None,
        };
        store.insert_key(key, Actor::Local, now).await.unwrap();
        let spenders: Vec<_> = (0..CAP)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.consume_use(id).await.unwrap().is_some() })
            })
            .collect();
        let successor = (KeyId::from_u64(12), KeyDigest::from_bytes([12; 32]));
        let rotation = store
            .rotate_key(id, successor, Duration::ZERO, Actor::Local, now)
            .await
            .unwrap();
        let mut spent = 0;
        for spender in spenders {
            spent += u64::from(spender.await.unwrap());
        }
        let handed_on = store
            .get_key(rotation.successor.id)
            .await
            .unwrap()
            .uses_remaining
            .unwrap();
        assert_eq!(
            spent + handed_on,
            CAP,
            "spent {spent}, handed on {handed_on}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_a_rotation_never_raises_a_cap_under_concurrent_use() {
        let (store, _dir) = open_temporary().await;
        a_rotation_never_raises_a_cap_under_concurrent_use(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_rotation_never_raises_a_cap_under_concurrent_use() {
        if let Some((store, _database)) = open_postgres().await {
            a_rotation_never_raises_a_cap_under_concurrent_use(store).await;
        }
    }

    #[tokio::test]
    async fn postgres_writes_notify_the_feed_on_commit() {
        let Some((store, _database)) = open_postgres().await else {
            return;
        };
        let mut subscription = store.subscribe(Duration::from_secs(5)).await.unwrap();
        let now = Timestamp::from_millis(1_000_000);
        let id = KeyId::from_u64(7);
        let key = NewKey {
            id,
            digest: KeyDigest::from_bytes([7; 32]),
            settings: KeySettings::default(),
            created_by: None,
        };
        store.insert_key(key, Actor::Local, now).await.unwrap();
        store
            .revoke_key(id, "leaked", Actor::Local, now)
            .await
            .unwrap();
        for _ in 0..2 {
            let topic = tokio::time::timeout(Duration::from_secs(5), subscription.next())
                .await
                .expect("a notification within 5 s")
                .unwrap();
            assert_eq!(topic, Some(Topic::Keys(vec![id])));
        }
        // Revoking again changes nothing, so it tells nobody.
        let again = store.revoke_key(id, "", Actor::Local, now).await.unwrap();
        assert!(again.already_revoked);
        subscription.ping(Duration::from_secs(5)).await.unwrap();
        let mut received = Changed::default();
        subscription.take_received(&mut received).unwrap();
        assert!(received.is_empty(), "{received:?}");

        // What arrives before a ping's reply is buffered and taken at once.
        let other = KeyId::from_u64(8);
        let key = NewKey {
            id: other,
            digest: KeyDigest::from_bytes([8; 32]),
            settings: KeySettings::default(),
            created_by: None,
        };
        store.insert_key(key, Actor::Local, now).await.unwrap();
        store
            .revoke_key(other, "", Actor::Local, now)
            .await
            .unwrap();
        subscription.ping(Duration::from_secs(5)).await.unwrap();
        subscription.take_received(&mut received).unwrap();
        assert_eq!(received, Changed::from(Topic::Keys(vec![other])));
    }
}

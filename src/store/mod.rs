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
//! in-memory index at start and returns [`Change`](crate::model::Change)s for every write.
//!
//! The queries are written once, for sqlx's `Any` driver, in the SQL both
//! databases accept: numbered placeholders (`$1`), `ON CONFLICT`,
//! `RETURNING`, aggregate `FILTER`. What does differ is in [`Backend`].
//!
//! # Layout
//!
//! | file | what |
//! | --- | --- |
//! | `mod.rs` | the [`Store`]: opening, the pool, write transactions, notifying the feed |
//! | `keys.rs` | keys: mint, read, list, rotate, revoke, uses |
//! | `import.rs` | many keys per transaction: imports, and the group commit of queued mints |
//! | `roles.rs` | roles: create, update, delete |
//! | `trust.rs` | trust policies, and keys minted by an OIDC exchange with the token's replay record |
//! | `audit.rs` | the audit log: appending, reading pages |
//! | `sync.rs` | initialisation, the index's snapshot, following the feed |
//! | [`feed`] | the change feed between replicas (PostgreSQL) |
//! | `rows.rs`, `sql.rs` | row mapping, and dynamic SQL with numbered placeholders |
//! | `location.rs`, `error.rs` | database URLs (never shown with a password), [`StoreError`] |

/// Runs each listed store test, an `async fn name(store: Arc<Store>)`, once
/// per database, as tests `name::sqlite` and `name::postgres`, each on a
/// fresh database: the store promises the same on both, so its tests are
/// written once. PostgreSQL runs are skipped, with the reason printed, when
/// it is unreachable (they fail instead under `CI=true`). Prefix the list
/// with `multi_thread:` for tests that need two workers. Defined before the
/// submodules, so their tests can use it.
#[cfg(test)]
macro_rules! on_both_stores {
    (multi_thread: $($test:ident),+ $(,)?) => {
        $($crate::store::on_both_stores!(@one $test, #[tokio::test(flavor = "multi_thread", worker_threads = 2)]);)+
    };
    ($($test:ident),+ $(,)?) => {
        $($crate::store::on_both_stores!(@one $test, #[tokio::test]);)+
    };
    (@one $test:ident, #[$runtime:meta]) => {
        mod $test {
            #[$runtime]
            async fn sqlite() {
                let (store, _dir) = $crate::store::open_temporary().await;
                super::$test(store).await;
            }

            #[$runtime]
            async fn postgres() {
                if let Some((store, _database)) = $crate::store::open_postgres().await {
                    super::$test(store).await;
                }
            }
        }
    };
}

/// For tests of other layers over a real store (the lifecycle's).
#[cfg(test)]
pub(crate) use on_both_stores;

mod audit;
mod error;
pub mod feed;
mod import;
mod keys;
mod location;
mod roles;
mod rows;
mod sql;
mod sync;
mod trust;

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use sqlx::{
    Any, AnyConnection, AnyPool, AssertSqlSafe, Executor, Transaction, any::AnyPoolOptions,
};

use crate::key::KeyId;

pub use self::{
    error::StoreError,
    import::Grouped,
    keys::{NewKey, Revocation, Rotation},
    location::redacted_url,
    sync::Snapshot,
    trust::Replay,
};
use self::{
    feed::Topic,
    location::{Location, create_private_file, sqlite_url},
};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The key of the PostgreSQL advisory lock that serialises writes across
/// replicas (the ASCII of "keyward").
const WRITE_LOCK: i64 = 0x006b_6579_7761_7264;

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

    /// The database this store runs on, for logs and diagnostics. Code that
    /// behaves differently on one database asks for the capability it needs
    /// instead, such as [`Store::has_change_feed`].
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether other replicas may share this database (PostgreSQL). Their
    /// writes then reach this replica's index only through the
    /// [change feed](feed), so the index may lag, and the database, not the
    /// index, is the authority on what is current. On SQLite this server is
    /// the only writer and its index sees every write as it commits.
    pub fn has_change_feed(&self) -> bool {
        match self.backend {
            Backend::Sqlite => false,
            Backend::Postgres => true,
        }
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
        // Sent on commit, and kept in the change log for a replica that was
        // not listening at that moment.
        for payload in topics.into_iter().flat_map(feed::Topic::payloads) {
            sqlx::query("INSERT INTO change_log (payload) SELECT $2 FROM pg_notify($1, $2)")
                .bind(feed::CHANNEL)
                .bind(payload)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}

/// Shared by tests of every layer that needs a real store.
#[cfg(test)]
pub(crate) async fn open_temporary() -> (std::sync::Arc<Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keyward.db").display());
    (std::sync::Arc::new(Store::open(&url).await.unwrap()), dir)
}

/// A fresh PostgreSQL store, or `None` (skipped, reason printed) when
/// PostgreSQL is unreachable outside CI.
#[cfg(test)]
pub(crate) async fn open_postgres()
-> Option<(std::sync::Arc<Store>, crate::testing::ScratchDatabase)> {
    let database = crate::testing::ScratchDatabase::create().await?;
    let store = Store::open(database.url()).await.unwrap();
    Some((std::sync::Arc::new(store), database))
}

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::*;

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

    /// A database file others may read (a restore from a backup, a copy
    /// made with the wrong umask) is tightened when the server opens it.
    #[tokio::test]
    async fn a_loose_database_file_is_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyward.db");
        let wal = dir.path().join("keyward.db-wal");
        for file in [&path, &wal] {
            std::fs::write(file, b"").unwrap();
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let store = Store::open(&location::sqlite_url(&path)).await.unwrap();
        // While open: SQLite removes the WAL file when it closes.
        for file in [&path, &wal] {
            let mode = std::fs::metadata(file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        }
        store.close().await;
    }

    #[tokio::test]
    async fn unwritable_path_is_named() {
        let err = Store::open("sqlite:///dev/null/keyward.db")
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("/dev/null/keyward.db"), "{message}");
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
}

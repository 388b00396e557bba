//! Scratch PostgreSQL databases: each test gets a database of its own,
//! created on the server given by `KEYWARD_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and dropped when the test
//! ends. When that server cannot be reached the tests are skipped with a
//! printed reason, except under `CI` (set to anything but empty, `0` or
//! `false`), where they fail: CI must never go green by skipping them.
//!
//! A run that is killed leaves its databases behind; the first database a
//! later test process creates sweeps those (see [`sweep_abandoned`]).

use super::running_in_ci;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sqlx::{Connection, Executor, PgConnection};

/// The server test databases are created on, by default.
const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Every scratch database's name starts with this.
const PREFIX: &str = "keyward_test_";

/// Age after which a scratch database no one is connected to counts as left
/// behind by a killed run: far longer than any test or benchmark runs.
const ABANDONED_AFTER_SECS: i64 = 60 * 60;

/// Whether PostgreSQL can be reached for tests; prints why not.
///
/// # Panics
/// When it cannot be reached and `CI=true`.
pub async fn postgres_reachable() -> bool {
    admin_connection().await.is_some()
}

async fn admin_connection() -> Option<(PgConnection, String)> {
    let admin_url =
        std::env::var("KEYWARD_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
    match PgConnection::connect(&admin_url).await {
        Ok(admin) => Some((admin, admin_url)),
        Err(error) if running_in_ci() => {
            panic!("CI=true and PostgreSQL is unreachable at {admin_url}: {error}")
        }
        Err(error) => {
            eprintln!(
                "skipped: PostgreSQL is unreachable at {admin_url} ({error}); \
                 set KEYWARD_TEST_POSTGRES to test against it"
            );
            None
        }
    }
}

/// A PostgreSQL database that exists for one test.
#[derive(Debug)]
pub struct ScratchDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl ScratchDatabase {
    /// Creates an empty database; `None` (with the reason printed) when
    /// PostgreSQL cannot be reached outside CI. The first call in a process
    /// also sweeps databases left behind by killed runs.
    ///
    /// # Panics
    /// When PostgreSQL cannot be reached and `CI=true`.
    pub async fn create() -> Option<Self> {
        static SWEPT: AtomicBool = AtomicBool::new(false);
        let (mut admin, admin_url) = admin_connection().await?;
        // The server's clock, not ours: names made on different machines
        // sharing one server compare on one clock.
        let now: i64 = sqlx::query_scalar("SELECT CAST(EXTRACT(EPOCH FROM now()) AS BIGINT)")
            .fetch_one(&mut admin)
            .await
            .expect("PostgreSQL tells the time");
        if !SWEPT.swap(true, Ordering::Relaxed) {
            sweep_abandoned(&mut admin, now).await;
        }
        let name = unique_name(now);
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("can create a test database");
        // Same server, user and parameters; the new database's name.
        let (address, parameters) = admin_url.split_once('?').unwrap_or((&admin_url, ""));
        let (base, _) = address
            .rsplit_once('/')
            .expect("the admin URL names a database");
        let parameters = if parameters.is_empty() {
            String::new()
        } else {
            format!("?{parameters}")
        };
        Some(Self {
            url: format!("{base}/{name}{parameters}"),
            name,
            admin_url,
        })
    }

    /// The URL of this database.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ScratchDatabase {
    /// Drops the database, closing any connection a test left open. Runs on
    /// a thread of its own, so it works inside or outside an async runtime.
    fn drop(&mut self) {
        let (name, admin_url) = (self.name.clone(), self.admin_url.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await?;
                admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .await?;
                Ok::<_, sqlx::Error>(())
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// `keyward_test_<created>_<pid>_<counter>_<random>`, `<created>` being
/// `now` (seconds since the epoch): unique across concurrent test binaries
/// and within one, and dated for [`sweep_abandoned`].
fn unique_name(now: i64) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{PREFIX}{now}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        getrandom::u32().expect("OS random source")
    )
}

/// When a database named by [`unique_name`] was created; `None` for any
/// other name, including the undated `keyward_test_<pid>_<n>_<random>` of
/// earlier versions, which may belong to a run of such a version right now.
fn created_at(name: &str) -> Option<i64> {
    let parts: Vec<&str> = name.strip_prefix(PREFIX)?.split('_').collect();
    let [created, _pid, _counter, _random] = parts.as_slice() else {
        return None;
    };
    if !parts
        .iter()
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    created.parse().ok()
}

/// Drops the scratch databases a killed run left behind: those created more
/// than [`ABANDONED_AFTER_SECS`] before `now` that no one is connected to.
/// A running test is connected to its database while its server runs, and
/// the drop goes without `FORCE`, so PostgreSQL refuses it for a database
/// someone connected to in the meantime. Failures are ignored: another
/// process may be sweeping the same ones.
async fn sweep_abandoned(admin: &mut PgConnection, now: i64) {
    let candidates: Vec<String> = match sqlx::query_scalar(
        "SELECT datname FROM pg_database d \
         WHERE starts_with(datname, 'keyward_test_') \
         AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datid = d.oid)",
    )
    .fetch_all(&mut *admin)
    .await
    {
        Ok(names) => names,
        Err(error) => {
            eprintln!("cannot look for abandoned test databases: {error}");
            return;
        }
    };
    for name in candidates {
        if created_at(&name).is_some_and(|created| now - created > ABANDONED_AFTER_SECS) {
            // The name is only digits and underscores after the prefix.
            let _ = admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name}"
                )))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_creation_time() {
        let name = unique_name(1_764_000_000);
        assert!(name.starts_with("keyward_test_1764000000_"), "{name}");
        assert_eq!(created_at(&name), Some(1_764_000_000));
        for other in [
            "keyward_test_4242_0_123456",
            "keyward_test_1764000000_4242_0_",
            "keyward_test_1764000000_4242_0_12_3",
            "keyward_test_1764000000_42x2_0_123",
            "keyward_1764000000_4242_0_123",
            "postgres",
        ] {
            assert_eq!(created_at(other), None, "{other}");
        }
    }

    /// Creates `name` and returns a connection string for it.
    async fn create_named(admin: &mut PgConnection, admin_url: &str, name: &str) -> String {
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        let (base, _) = admin_url
            .split_once('?')
            .unwrap_or((admin_url, ""))
            .0
            .rsplit_once('/')
            .unwrap();
        format!("{base}/{name}")
    }

    async fn exists(admin: &mut PgConnection, name: &str) -> bool {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_one(&mut *admin)
            .await
            .unwrap()
            == 1
    }

    #[tokio::test]
    async fn the_sweep_drops_old_unused_databases_only() {
        let Some((mut admin, admin_url)) = admin_connection().await else {
            return;
        };
        let now: i64 = sqlx::query_scalar("SELECT CAST(EXTRACT(EPOCH FROM now()) AS BIGINT)")
            .fetch_one(&mut admin)
            .await
            .unwrap();
        let old = now - ABANDONED_AFTER_SECS - 60;
        let abandoned = unique_name(old);
        let in_use = unique_name(old);
        let recent = unique_name(now - 60);
        create_named(&mut admin, &admin_url, &abandoned).await;
        let in_use_url = create_named(&mut admin, &admin_url, &in_use).await;
        create_named(&mut admin, &admin_url, &recent).await;
        let user = PgConnection::connect(&in_use_url).await.unwrap();

        sweep_abandoned(&mut admin, now).await;

        assert!(!exists(&mut admin, &abandoned).await);
        assert!(exists(&mut admin, &in_use).await, "a database in use stays");
        assert!(exists(&mut admin, &recent).await, "a recent database stays");
        user.close().await.unwrap();
        for name in [in_use, recent] {
            admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await
                .unwrap();
        }
    }
}

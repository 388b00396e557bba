//! Support for tests of keyward against PostgreSQL, shared by the unit tests
//! and the integration tests. Not part of the API.
//!
//! Each test gets a database of its own, created from the server given by
//! `KEYWARD_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! and dropped when the test ends. When that server cannot be reached the
//! tests are skipped with a printed reason, except under `CI` (set to
//! anything but empty, `0` or `false`), where they fail: CI must never go
//! green by skipping them.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{Connection, Executor, PgConnection};

/// The server test databases are created on, by default.
const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

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

/// `CI` set to anything but empty, `0` or `false`.
fn running_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|ci| !matches!(ci.as_str(), "" | "0" | "false"))
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
    /// PostgreSQL cannot be reached outside CI.
    ///
    /// # Panics
    /// When PostgreSQL cannot be reached and `CI=true`.
    pub async fn create() -> Option<Self> {
        let (mut admin, admin_url) = admin_connection().await?;
        let name = unique_name();
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

/// `keyward_test_<pid>_<counter>_<random>`: unique across concurrent test
/// binaries and within one.
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "keyward_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        getrandom::u32().expect("OS random source")
    )
}

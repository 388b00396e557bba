//! Support for keyward's own tests and benchmarks: the unit tests, `tests/`,
//! `cli/tests/` and `benches/` all start servers and databases through it.
//! Not part of the API: hidden from the docs, and compiled only with the
//! `testing` feature, which the workspace's dev-dependencies turn on, so a
//! plain `cargo build` compiles neither this module nor `tempfile`.
//!
//! | item | what |
//! | --- | --- |
//! | [`TestApp`] | the real server on port 0 with a fresh database (SQLite or PostgreSQL), clients and request helpers; replicas, restarts |
//! | [`on_both_stores!`] | a test written once as `async fn name(backend: Backend)`, run on each store |
//! | [`ScratchDatabase`] | a PostgreSQL database for one test; ones left by a killed run are swept |
//! | [`forge`] | a well-formed key with a chosen id and another key's secret |
//! | [`oidc`] | a fake OpenID Connect issuer (discovery, JWKS, keys made at run time) signing good and forged tokens |
//! | [`tls`] | CAs and certificates made at run time for the TLS tests |

mod app;
pub mod oidc;
mod postgres;
pub mod tls;

pub use app::{Backend, Builder, TestApp, TestDatabase, authed, denial, spawn_app, spawn_with};
pub use postgres::{ScratchDatabase, postgres_reachable};

use crate::key::KeyId;

/// `CI` set to anything but empty, `0` or `false`: tests that need something
/// outside the repository (PostgreSQL, Python's grpcio) fail rather than
/// skip when it is missing, so CI never goes green by skipping them.
#[must_use]
pub fn running_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|ci| !matches!(ci.as_str(), "" | "0" | "false"))
}

/// A well-formed key (valid checksum) with key id `id` and the secret of
/// `donor`: "right id, wrong secret" when `id` is another key's, "unknown id"
/// when no key has it. Made with the key module's own encoding.
#[must_use]
pub fn forge(id: KeyId, donor: &str) -> String {
    crate::key::forge(id, donor)
}

/// Runs each listed test, an `async fn(Backend)`, once per store, as tests
/// `NAME::sqlite` and `NAME::postgres`. PostgreSQL runs are skipped, with the
/// reason printed, when it is unreachable (they fail instead under `CI=true`).
/// Prefix the list with `multi_thread:` for tests that need two workers.
///
/// The crate using it needs `tokio` with the `macros` and `rt` features (and
/// `rt-multi-thread` for `multi_thread:`).
#[doc(hidden)]
#[macro_export]
macro_rules! __on_both_stores {
    (multi_thread: $($test:ident),+ $(,)?) => {
        $($crate::testing::on_both_stores!(@one $test, #[tokio::test(flavor = "multi_thread", worker_threads = 2)]);)+
    };
    ($($test:ident),+ $(,)?) => {
        $($crate::testing::on_both_stores!(@one $test, #[tokio::test]);)+
    };
    (@one $test:ident, #[$runtime:meta]) => {
        mod $test {
            #[$runtime]
            async fn sqlite() {
                super::$test($crate::testing::Backend::Sqlite).await;
            }

            #[$runtime]
            async fn postgres() {
                if $crate::testing::postgres_reachable().await {
                    super::$test($crate::testing::Backend::Postgres).await;
                }
            }
        }
    };
}

#[doc(inline)]
pub use crate::__on_both_stores as on_both_stores;

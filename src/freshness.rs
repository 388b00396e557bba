//! How current the key index is known to be: the one question the data
//! plane asks before it answers from the index.
//!
//! A single server (SQLite) is always current: every write goes through it.
//! A replica on a shared PostgreSQL database is current only as of the last
//! moment its change feed confirmed that it had received everything
//! committed; [`crate::replica`] confirms, and Validate checks. Kept apart
//! from both so that the data plane depends on a clock and a limit, not on
//! the machinery that follows the feed.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::time::Instant;

/// When the index was last known to hold everything committed to the
/// database. Shared by the feed (which confirms) and Validate (which checks).
#[derive(Debug)]
pub struct Freshness {
    origin: Instant,
    /// Milliseconds after `origin` of the last confirmation.
    confirmed: AtomicU64,
    max_staleness: Duration,
}

/// The index is older than the replica may trust.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "this replica has not been able to confirm its key index with the database for {}s (the limit is {}s)",
    .age.as_secs(),
    .limit.as_secs()
)]
pub struct Stale {
    /// How long since the index was last confirmed current.
    pub age: Duration,
    /// `--max-staleness`: the most this replica may trust.
    pub limit: Duration,
}

impl Freshness {
    /// Confirmed current as of `as_of` (a moment just before the index was
    /// loaded).
    #[must_use]
    pub fn new(max_staleness: Duration, as_of: Instant) -> Self {
        Self {
            origin: as_of,
            confirmed: AtomicU64::new(0),
            max_staleness,
        }
    }

    /// The index holds everything committed up to `as_of`.
    pub fn confirm(&self, as_of: Instant) {
        let at = millis(as_of.saturating_duration_since(self.origin));
        self.confirmed.fetch_max(at, Ordering::AcqRel);
    }

    /// How long since the index was last confirmed current.
    pub fn age(&self) -> Duration {
        let confirmed = Duration::from_millis(self.confirmed.load(Ordering::Acquire));
        self.origin.elapsed().saturating_sub(confirmed)
    }

    /// The most the index may age before Validate refuses to answer from it.
    #[must_use]
    pub fn max_staleness(&self) -> Duration {
        self.max_staleness
    }

    /// Whether the index may still be trusted.
    ///
    /// # Errors
    /// [`Stale`] once it is older than the limit.
    pub fn check(&self) -> Result<(), Stale> {
        let age = self.age();
        if age > self.max_staleness {
            Err(Stale {
                age,
                limit: self.max_staleness,
            })
        } else {
            Ok(())
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn freshness_expires_after_the_limit_and_confirmation_renews_it() {
        let freshness = Freshness::new(Duration::from_secs(10), Instant::now());
        assert!(freshness.check().is_ok());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(freshness.check().is_ok());
        let as_of = Instant::now();
        tokio::time::advance(Duration::from_secs(2)).await;
        let stale = freshness.check().unwrap_err();
        assert_eq!(stale.age, Duration::from_secs(11));
        assert!(
            stale.to_string().contains("for 11s (the limit is 10s)"),
            "{stale}"
        );

        freshness.confirm(as_of);
        assert_eq!(freshness.age(), Duration::from_secs(2));
        assert!(freshness.check().is_ok());
        // An older confirmation never moves it back.
        freshness.confirm(as_of - Duration::from_secs(5));
        assert_eq!(freshness.age(), Duration::from_secs(2));
    }
}

//! Per-key rate limiting with GCRA (governor).
//!
//! Keys with the same limit share one keyed limiter, so there are as many
//! limiters as distinct limits (a handful), each holding state only for keys
//! used recently. A timer calls [`RateLimiters::reclaim_idle`], which drops
//! the state of keys whose bucket has refilled: a million keys used once
//! leave nothing behind after their window.
//!
//! Time comes from the injected [`Clock`]'s monotonic reading, so tests move
//! it instead of sleeping, and a wall-clock step cannot refill or drain buckets.

use std::{
    collections::HashMap,
    fmt,
    num::NonZeroU32,
    str::FromStr,
    sync::{Arc, RwLock},
    time::Duration,
};

use governor::{
    Quota,
    middleware::{NoOpMiddleware, StateInformationMiddleware},
    state::keyed::DashMapStateStore,
};

use crate::{
    clock::Clock,
    key::{HotPathHasher, KeyId},
};

/// Longest window a rate limit may have.
pub const MAX_PERIOD: Duration = Duration::from_hours(24);

/// Why a rate limit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRateLimit {
    /// A limit of zero requests would refuse everything; revoke the key instead.
    #[error("requests must be at least 1")]
    ZeroRequests,
    /// A burst of zero would never admit a call.
    #[error("burst must be at least 1")]
    ZeroBurst,
    /// The period is zero, or longer than a day.
    #[error("the period must be a whole number of milliseconds, from 1ms to 24h")]
    BadPeriod,
    /// Text that is not `N/s`, `N/m` or `N/h`.
    #[error("expected N/s, N/m or N/h with N a whole number of at least 1, e.g. 100/s")]
    Malformed,
}

/// `requests` per `per`, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    requests: NonZeroU32,
    per: Duration,
    burst: NonZeroU32,
}

impl RateLimit {
    /// Checks a limit.
    ///
    /// # Errors
    /// [`InvalidRateLimit`] for zero requests or burst, or a period that is
    /// zero or longer than [`MAX_PERIOD`].
    pub fn new(requests: u32, per: Duration, burst: u32) -> Result<Self, InvalidRateLimit> {
        let requests = NonZeroU32::new(requests).ok_or(InvalidRateLimit::ZeroRequests)?;
        let burst = NonZeroU32::new(burst).ok_or(InvalidRateLimit::ZeroBurst)?;
        // Stored as whole milliseconds: anything finer would change after a
        // restart.
        if per < Duration::from_millis(1)
            || per > MAX_PERIOD
            || !per.subsec_nanos().is_multiple_of(1_000_000)
        {
            return Err(InvalidRateLimit::BadPeriod);
        }
        Ok(Self {
            requests,
            per,
            burst,
        })
    }

    /// Calls allowed per [`RateLimit::per`].
    #[must_use]
    pub fn requests(&self) -> u32 {
        self.requests.get()
    }

    /// The period the requests are counted over.
    #[must_use]
    pub fn per(&self) -> Duration {
        self.per
    }

    /// Calls that may come at once after a quiet spell.
    #[must_use]
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// Requests per second, to compare limits: lower is stricter.
    #[must_use]
    pub fn per_second(&self) -> f64 {
        f64::from(self.requests.get()) / self.per.as_secs_f64()
    }

    fn quota(&self) -> Quota {
        let interval = (self.per / self.requests.get()).max(Duration::from_nanos(1));
        Quota::with_period(interval)
            .expect("interval is positive")
            .allow_burst(self.burst)
    }
}

/// `N/s`, `N/m` or `N/h`, with a burst of N.
impl FromStr for RateLimit {
    type Err = InvalidRateLimit;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (count, unit) = s.split_once('/').ok_or(InvalidRateLimit::Malformed)?;
        let per = match unit {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_mins(1),
            "h" => Duration::from_hours(1),
            _ => return Err(InvalidRateLimit::Malformed),
        };
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidRateLimit::Malformed);
        }
        let requests: u32 = count.parse().map_err(|_| InvalidRateLimit::Malformed)?;
        Self::new(requests, per, requests)
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} (burst {})",
            self.requests,
            humantime::format_duration(self.per),
            self.burst
        )
    }
}

/// Whether a call may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The call may go ahead.
    Allowed {
        /// Calls that could follow at once: reported to the caller.
        remaining_burst: u32,
    },
    /// Over the limit: refused.
    Limited {
        /// When the next call would be allowed.
        retry_after: Duration,
    },
}

/// governor's view of our clock: its monotonic reading.
#[derive(Clone)]
struct MonotonicClock(Arc<dyn Clock>);

impl governor::clock::Clock for MonotonicClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.0.monotonic()
    }
}

type KeyedLimiter = governor::RateLimiter<
    KeyId,
    DashMapStateStore<KeyId, HotPathHasher>,
    MonotonicClock,
    StateInformationMiddleware,
>;

/// One keyed limiter per distinct limit.
pub struct RateLimiters {
    limiters: RwLock<HashMap<RateLimit, KeyedLimiter, HotPathHasher>>,
    clock: MonotonicClock,
}

impl RateLimiters {
    /// Limiters reading time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            limiters: RwLock::default(),
            clock: MonotonicClock(clock),
        }
    }

    /// Spends one call of `key`'s quota under `limit`, if there is one left.
    pub fn check(&self, key: KeyId, limit: &RateLimit) -> Admission {
        {
            // The common case: the limiter exists; check under the read lock
            // without touching its reference count.
            let limiters = self
                .limiters
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(limiter) = limiters.get(limit) {
                return self.admit(limiter, key);
            }
        }
        let mut limiters = self
            .limiters
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let limiter = limiters.entry(*limit).or_insert_with(|| {
            governor::RateLimiter::<KeyId, _, _, NoOpMiddleware<Duration>>::new(
                limit.quota(),
                DashMapStateStore::with_hasher(HotPathHasher::default()),
                self.clock.clone(),
            )
            .with_middleware::<StateInformationMiddleware>()
        });
        self.admit(limiter, key)
    }

    fn admit(&self, limiter: &KeyedLimiter, key: KeyId) -> Admission {
        match limiter.check_key(&key) {
            Ok(snapshot) => Admission::Allowed {
                remaining_burst: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => Admission::Limited {
                retry_after: not_until.wait_time_from(governor::clock::Clock::now(&self.clock)),
            },
        }
    }

    /// Drops the state of keys whose bucket is full again (they would be
    /// admitted exactly as a key never seen) and returns how many keys still
    /// hold state.
    pub fn reclaim_idle(&self) -> usize {
        // Sweeping a limiter's keys needs only a shared reference, so
        // validations go on meanwhile; the write lock is taken just to drop
        // limiters no key used lately (so many distinct limits over time do
        // not pile up).
        let kept: usize = {
            let limiters = self
                .limiters
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            limiters
                .values()
                .map(|limiter| {
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                    limiter.len()
                })
                .sum()
        };
        self.limiters
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, limiter| !limiter.is_empty());
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn id(n: u64) -> KeyId {
        KeyId::from_u64(n)
    }

    #[test]
    fn parsing() {
        assert_eq!("5/s".parse(), RateLimit::new(5, Duration::from_secs(1), 5));
        assert_eq!(
            "100/m".parse(),
            RateLimit::new(100, Duration::from_mins(1), 100)
        );
        assert_eq!("1/h".parse(), RateLimit::new(1, Duration::from_hours(1), 1));
        for (bad, error) in [
            ("0/s", InvalidRateLimit::ZeroRequests),
            ("-1/s", InvalidRateLimit::Malformed),
            ("5/fortnight", InvalidRateLimit::Malformed),
            ("5", InvalidRateLimit::Malformed),
            ("/s", InvalidRateLimit::Malformed),
            ("1.5/s", InvalidRateLimit::Malformed),
            ("99999999999/s", InvalidRateLimit::Malformed),
        ] {
            assert_eq!(bad.parse::<RateLimit>(), Err(error), "{bad}");
        }
        assert_eq!(
            RateLimit::new(1, Duration::from_secs(1), 0),
            Err(InvalidRateLimit::ZeroBurst)
        );
        assert_eq!(
            RateLimit::new(1, Duration::ZERO, 1),
            Err(InvalidRateLimit::BadPeriod)
        );
        assert_eq!(
            RateLimit::new(1, MAX_PERIOD * 2, 1),
            Err(InvalidRateLimit::BadPeriod)
        );
        // Stored in whole milliseconds: anything finer is refused, not
        // silently changed by the next restart.
        for finer in [Duration::from_micros(500), Duration::from_micros(1_500)] {
            assert_eq!(
                RateLimit::new(1, finer, 1),
                Err(InvalidRateLimit::BadPeriod),
                "{finer:?}"
            );
        }
        assert!(RateLimit::new(1, Duration::from_millis(1), 1).is_ok());
    }

    #[test]
    fn bursts_then_refills_per_key() {
        let clock = ManualClock::starting_now();
        let limiters = RateLimiters::new(Arc::new(clock.clone()));
        let limit = RateLimit::new(5, Duration::from_secs(1), 5).unwrap();
        let allowed = (0..40)
            .filter(|_| matches!(limiters.check(id(1), &limit), Admission::Allowed { .. }))
            .count();
        assert_eq!(allowed, 5);
        let Admission::Limited { retry_after } = limiters.check(id(1), &limit) else {
            panic!("over the limit");
        };
        assert_eq!(retry_after, Duration::from_millis(200));
        // Another key has its own bucket.
        assert_eq!(
            limiters.check(id(2), &limit),
            Admission::Allowed { remaining_burst: 4 }
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            limiters.check(id(1), &limit),
            Admission::Allowed { remaining_burst: 4 }
        );
    }

    #[test]
    fn idle_state_is_reclaimed() {
        let clock = ManualClock::starting_now();
        let limiters = RateLimiters::new(Arc::new(clock.clone()));
        let limit = RateLimit::new(10, Duration::from_secs(1), 10).unwrap();
        // A million distinct keys, each used once.
        for n in 0..1_000_000 {
            limiters.check(id(n), &limit);
        }
        assert_eq!(
            limiters.reclaim_idle(),
            1_000_000,
            "all still inside their window"
        );
        clock.advance(Duration::from_secs(1));
        limiters.check(id(7), &limit);
        assert_eq!(
            limiters.reclaim_idle(),
            1,
            "only the key used in this window is kept"
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(limiters.reclaim_idle(), 0);
        assert!(
            limiters.limiters.read().unwrap().is_empty(),
            "the idle limiter itself is gone"
        );
    }
}

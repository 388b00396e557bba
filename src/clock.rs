//! Time as a parameter. Expiry, grace periods and TTLs read "now" from a
//! [`Clock`], so tests move time forward instead of sleeping.

use std::{
    fmt,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// A point in time: milliseconds since the Unix epoch, UTC. Stored as a
/// plain integer so SQLite and PostgreSQL hold it the same way.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// Builds a timestamp from milliseconds since the epoch.
    #[must_use]
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the epoch.
    #[must_use]
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// `self + duration`, saturating far in the future instead of wrapping.
    #[must_use]
    pub fn saturating_add(self, duration: Duration) -> Self {
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(millis))
    }

    /// The time from `self` until `later`; zero when `later` is not later.
    #[must_use]
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(later.0.saturating_sub(self.0)).unwrap_or(0))
    }

    /// Converts a wall-clock time.
    #[must_use]
    pub fn from_system_time(time: SystemTime) -> Self {
        match time.duration_since(UNIX_EPOCH) {
            Ok(after) => Self(i64::try_from(after.as_millis()).unwrap_or(i64::MAX)),
            Err(before) => Self(-i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// Converts to a wall-clock time.
    #[must_use]
    pub fn to_system_time(self) -> SystemTime {
        let magnitude = Duration::from_millis(self.0.unsigned_abs());
        if self.0 >= 0 {
            UNIX_EPOCH + magnitude
        } else {
            UNIX_EPOCH - magnitude
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // humantime prints only 1970 to 9999: it panics before the epoch and
        // fails after. A request can carry any instant (an audit query's
        // `since`), so the others print as a number.
        const YEAR_10000: i64 = 253_402_300_800_000;
        if (0..YEAR_10000).contains(&self.0) {
            write!(
                f,
                "{}",
                humantime::format_rfc3339_millis(self.to_system_time())
            )
        } else {
            write!(f, "{}ms since the epoch", self.0)
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A source of "now".
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time: for expiry, grace periods, records.
    fn now(&self) -> Timestamp;

    /// Time elapsed since a fixed point, never going back: for rate limits,
    /// which a wall-clock step must not refill or drain.
    fn monotonic(&self) -> Duration;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }

    fn monotonic(&self) -> Duration {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed()
    }
}

/// A clock that moves only when told to, for tests of expiry, grace periods
/// and rate limits. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
    start: i64,
}

impl ManualClock {
    /// A clock stopped at the current wall-clock time.
    #[must_use]
    pub fn starting_now() -> Self {
        let start = SystemClock.now().as_millis();
        Self {
            now: Arc::new(AtomicI64::new(start)),
            start,
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let millis = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.now.fetch_add(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now.load(Ordering::SeqCst))
    }

    fn monotonic(&self) -> Duration {
        Timestamp(self.start).until(self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the property tests of the wire conversions: an audit query
    /// `since` the year 1 printed with `{:?}` panicked inside humantime.
    #[test]
    fn every_instant_prints() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_764_000_000_123, "2025-11-24T16:00:00.123Z"),
            (-1, "-1ms since the epoch"),
            (-62_135_596_800_000, "-62135596800000ms since the epoch"),
            (253_402_300_800_000, "253402300800000ms since the epoch"),
            (i64::MIN, "-9223372036854775808ms since the epoch"),
            (i64::MAX, "9223372036854775807ms since the epoch"),
        ];
        for (millis, printed) in cases {
            let at = Timestamp::from_millis(millis);
            assert_eq!(format!("{at:?}"), printed);
            assert_eq!(at.to_string(), printed);
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::starting_now();
        let start = clock.now();
        assert_eq!(clock.now(), start);
        clock.clone().advance(Duration::from_secs(90));
        assert_eq!(start.until(clock.now()), Duration::from_secs(90));
        assert_eq!(clock.now().until(start), Duration::ZERO);
    }

    #[test]
    fn system_time_round_trips() {
        for millis in [0, 1, -1, 1_764_000_000_123, -86_400_000] {
            let ts = Timestamp::from_millis(millis);
            assert_eq!(Timestamp::from_system_time(ts.to_system_time()), ts);
        }
        assert_eq!(
            Timestamp::from_millis(i64::MAX - 1).saturating_add(Duration::from_secs(5)),
            Timestamp::from_millis(i64::MAX)
        );
    }
}

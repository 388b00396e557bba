//! Usage tracking: when each key was last used and how often, counted in
//! memory on the hot path (two atomic operations) and written to the store
//! in batches, at most once per key per flush interval, and on shutdown.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::{clock::Timestamp, key::KeyId};

/// A key's usage since the last flush. Shared between successive index
/// entries of the same key, so replacing an entry loses no count.
#[derive(Debug, Default)]
pub struct KeyUsage {
    last_used_ms: AtomicI64,
    pending: AtomicU64,
}

/// Usage to add to a key's stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageDelta {
    /// The key used.
    pub key: KeyId,
    /// Successful validations since the last flush.
    pub uses: u64,
    /// The latest of them.
    pub last_used_at: Timestamp,
}

impl KeyUsage {
    /// Counts one successful validation at `now`.
    pub fn record(&self, now: Timestamp) {
        self.last_used_ms
            .fetch_max(now.as_millis(), Ordering::Relaxed);
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes what was counted since the last call, if anything.
    pub fn take(&self, key: KeyId) -> Option<UsageDelta> {
        let uses = self.pending.swap(0, Ordering::Relaxed);
        (uses > 0).then(|| UsageDelta {
            key,
            uses,
            last_used_at: Timestamp::from_millis(self.last_used_ms.load(Ordering::Relaxed)),
        })
    }

    /// Puts back a delta that could not be written, to go with the next flush.
    pub fn restore(&self, delta: &UsageDelta) {
        self.last_used_ms
            .fetch_max(delta.last_used_at.as_millis(), Ordering::Relaxed);
        self.pending.fetch_add(delta.uses, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_taken_once_and_can_be_restored() {
        let usage = KeyUsage::default();
        let key = KeyId::from_u64(1);
        assert_eq!(usage.take(key), None);
        usage.record(Timestamp::from_millis(20));
        usage.record(Timestamp::from_millis(10));
        let delta = usage.take(key).unwrap();
        assert_eq!(
            (delta.uses, delta.last_used_at),
            (2, Timestamp::from_millis(20))
        );
        assert_eq!(usage.take(key), None);
        usage.restore(&delta);
        usage.record(Timestamp::from_millis(30));
        let delta = usage.take(key).unwrap();
        assert_eq!(
            (delta.uses, delta.last_used_at),
            (3, Timestamp::from_millis(30))
        );
    }
}

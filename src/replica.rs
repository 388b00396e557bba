//! Keeping a replica's index current when many replicas share one
//! PostgreSQL database.
//!
//! Each replica listens to the store's [change feed](crate::store::feed) and
//! reloads what every notification names. Notifications sent while its
//! connection was down are lost, so after every (re)connect the replica
//! resyncs in full before it trusts its index again, and it resyncs on a
//! timer as well, to repair anything missed some other way.
//!
//! **Fail-static, then closed.** When the database cannot be reached, Validate
//! goes on answering from the index: a database outage does not take every
//! backend down with it. But a replica that cannot hear the feed also cannot
//! hear revocations, so this lasts only up to `max_staleness` after the last
//! moment the index was known to be current; after that, Validate fails with
//! `UNAVAILABLE` until the feed is back and the index resynced.

use std::{sync::Arc, time::Duration};

use tokio::time::{Instant, MissedTickBehavior};

use crate::{
    freshness::Freshness,
    lifecycle::Lifecycle,
    metrics::{DbOperation, Metrics, ResyncTrigger},
    store::{
        Store, StoreError,
        feed::{Changed, Subscription},
    },
};

/// Reconnection waits double from the first to the last.
const RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(1));

/// How a replica follows the change feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedSettings {
    /// After this long without confirming its index current, a replica
    /// refuses to validate.
    pub max_staleness: Duration,
    /// How often the index is reloaded in full.
    pub resync_interval: Duration,
    /// How long connecting to the feed may take.
    pub connect_timeout: Duration,
}

impl FeedSettings {
    /// How often the feed's connection is checked: often enough that a dead
    /// connection is noticed well within `max_staleness`.
    #[must_use]
    pub fn heartbeat(&self) -> Duration {
        (self.max_staleness / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

/// Follows the change feed for as long as the server runs: connects,
/// resyncs, applies changes, checks the connection; on any failure starts
/// over. For PostgreSQL stores (SQLite has no feed, and needs none).
/// Failures, resyncs and how long applying changes takes go to `metrics`.
pub async fn follow(
    store: Arc<Store>,
    lifecycle: Arc<Lifecycle>,
    freshness: Arc<Freshness>,
    settings: FeedSettings,
    metrics: Arc<Metrics>,
) {
    let mut backoff = RECONNECT_BACKOFF.0;
    let mut healthy = true;
    loop {
        let connected = match store.subscribe(settings.connect_timeout).await {
            Ok(subscription) => {
                // Listening from here on: a resync now misses nothing.
                let as_of = Instant::now();
                resync(&lifecycle, settings, &metrics, ResyncTrigger::Connect)
                    .await
                    .map(|keys| (subscription, as_of, keys))
            }
            Err(error) => Err(error),
        };
        let (mut subscription, as_of, keys) = match connected {
            Ok(connected) => connected,
            Err(error) => {
                metrics.database_error(DbOperation::ChangeFeed);
                if healthy {
                    tracing::warn!(%error, "change feed: cannot reach the database; Validate answers from the index until it is stale");
                    healthy = false;
                } else {
                    tracing::debug!(%error, "change feed: still cannot reach the database");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF.1);
                continue;
            }
        };
        freshness.confirm(as_of);
        healthy = true;
        tracing::info!(keys, "change feed: listening; index resynced");
        let error = listen(
            &mut subscription,
            &lifecycle,
            &freshness,
            settings,
            &metrics,
        )
        .await;
        metrics.database_error(DbOperation::ChangeFeed);
        tracing::warn!(%error, "change feed: connection lost; reconnecting");
        if as_of.elapsed() < RECONNECT_BACKOFF.1 {
            // A connection that keeps dropping would otherwise cost a full
            // resync each time.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RECONNECT_BACKOFF.1);
        } else {
            backoff = RECONNECT_BACKOFF.0;
        }
    }
}

/// Applies changes as they come, until the connection fails.
async fn listen(
    subscription: &mut Subscription,
    lifecycle: &Lifecycle,
    freshness: &Freshness,
    settings: FeedSettings,
    metrics: &Metrics,
) -> StoreError {
    let heartbeat_every = settings.heartbeat();
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut resync_timer = tokio::time::interval_at(
        Instant::now() + settings.resync_interval,
        settings.resync_interval,
    );
    resync_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let step = tokio::select! {
            topic = subscription.next() => match topic {
                Ok(Some(topic)) => apply_received(subscription, lifecycle, topic.into(), settings, metrics).await,
                Ok(None) => Err(StoreError::FeedClosed),
                Err(error) => Err(error),
            },
            _ = heartbeat.tick() => {
                let as_of = Instant::now();
                match subscription.ping(heartbeat_every * 2).await {
                    Ok(()) => apply_received(subscription, lifecycle, Changed::default(), settings, metrics)
                        .await
                        .map(|()| freshness.confirm(as_of)),
                    Err(error) => Err(error),
                }
            }
            _ = resync_timer.tick() => {
                let as_of = Instant::now();
                resync(lifecycle, settings, metrics, ResyncTrigger::Interval).await.map(|keys| {
                    tracing::debug!(keys, "change feed: periodic resync");
                    freshness.confirm(as_of);
                })
            }
        };
        if let Err(error) = step {
            return error;
        }
    }
}

/// Applies `changed` and every change received so far, as one batch in one
/// write turn. Confirmation after a heartbeat thus costs one turn however
/// many notifications a write load has queued, and a turn is taken fairly
/// (first come, first served) among the local writes.
async fn apply_received(
    subscription: &mut Subscription,
    lifecycle: &Lifecycle,
    mut changed: Changed,
    settings: FeedSettings,
    metrics: &Metrics,
) -> Result<(), StoreError> {
    let started = Instant::now();
    subscription.take_received(&mut changed)?;
    if changed.is_empty() {
        return Ok(());
    }
    let applied = within(settings.max_staleness, lifecycle.reload(&changed)).await?;
    metrics.feed_applied(started.elapsed());
    tracing::debug!(
        keys = changed.keys.len(),
        roles = changed.roles.len(),
        changes = applied,
        "change feed: applied"
    );
    Ok(())
}

async fn resync(
    lifecycle: &Lifecycle,
    settings: FeedSettings,
    metrics: &Metrics,
    trigger: ResyncTrigger,
) -> Result<usize, StoreError> {
    let started = Instant::now();
    let resynced = within(settings.max_staleness, lifecycle.resync()).await;
    metrics.resynced(trigger, resynced.is_ok(), started.elapsed());
    resynced
}

/// Gives up on a database operation after `limit`. A connection can hang
/// without failing (a network partition), and by `max_staleness` an answer
/// would come too late to keep the index fresh anyway; the feed then starts
/// over.
async fn within<T>(
    limit: Duration,
    operation: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, operation)
        .await
        .unwrap_or(Err(StoreError::Timeout(limit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_fits_well_within_the_staleness_limit() {
        let settings = |max_staleness| FeedSettings {
            max_staleness,
            resync_interval: Duration::from_mins(5),
            connect_timeout: Duration::from_secs(5),
        };
        assert_eq!(
            settings(Duration::from_mins(1)).heartbeat(),
            Duration::from_secs(1)
        );
        assert_eq!(
            settings(Duration::from_secs(2)).heartbeat(),
            Duration::from_millis(500)
        );
    }
}

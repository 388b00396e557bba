//! Keeping a replica's index current when many replicas share one
//! PostgreSQL database.
//!
//! Each replica listens to the store's [change feed](crate::store::feed) and
//! reloads what every notification names. Notifications sent while its
//! connection was down are lost from the feed but kept in the change log:
//! after a reconnect within [`CATCH_UP_WINDOW`] of its last heartbeat, the
//! replica reads from the log what it missed and reloads just that; after a
//! longer outage (or when the log cannot say) it resyncs in full before it
//! trusts its index again. It resyncs on a timer as well, to repair anything
//! missed some other way.
//!
//! **Resyncs do not stop the replica.** A resync loads the snapshot (seconds
//! at a million keys) without the write turn and while the feed goes on being
//! applied and heartbeats go on confirming the index, so local writes are not
//! held up and a slow load never makes the replica stale. The snapshot then
//! goes in place in one write turn, with everything written since the load
//! began reloaded on top: what the feed applied during the load, and what it
//! has delivered up to a round trip made in that turn.
//!
//! **Fail-static, then closed.** When the database cannot be reached, Validate
//! goes on answering from the index: a database outage does not take every
//! backend down with it. But a replica that cannot hear the feed also cannot
//! hear revocations, so this lasts only up to `max_staleness` after the last
//! moment the index was known to be current; after that, Validate fails with
//! `UNAVAILABLE` until the feed is back and the index resynced.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use tokio::time::{Instant, MissedTickBehavior};

use crate::{
    freshness::Freshness,
    index::Prepared,
    lifecycle::Lifecycle,
    metrics::{CatchUp, DbOperation, Metrics, ResyncTrigger},
    store::{
        Store, StoreError,
        feed::{Changed, Subscription, Watermark},
    },
};

/// How long a replica may have been without its feed and still catch up
/// from the change log, rather than reload everything: well within
/// [`CHANGE_LOG_RETENTION`](crate::store::feed::CHANGE_LOG_RETENTION).
pub const CATCH_UP_WINDOW: Duration = Duration::from_mins(10);

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
    /// How long loading a resync's snapshot may take before the feed starts
    /// over: far longer than a million keys take, as a slow load does no
    /// harm (the replica stays fresh meanwhile), but bounded, as a hung
    /// connection would stop resyncs for good.
    #[must_use]
    pub fn load_timeout(&self) -> Duration {
        self.resync_interval.max(self.max_staleness)
    }

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
///
/// `listening` is a subscription the server opened before it loaded its
/// index at start, with the moment the load began: the index holds
/// everything committed before then and the subscription everything after,
/// so the first connection needs no resync (at a million keys, a second
/// full load right after start).
pub async fn follow(
    store: Arc<Store>,
    lifecycle: Arc<Lifecycle>,
    freshness: Arc<Freshness>,
    settings: FeedSettings,
    metrics: Arc<Metrics>,
    mut listening: Option<(Subscription, Instant)>,
) {
    let mut backoff = RECONNECT_BACKOFF.0;
    let mut healthy = true;
    // The watermark of the last heartbeat known to be heard in full, and
    // when: where a reconnect catches up from.
    let mut heard: Option<(Watermark, Instant)> = None;
    loop {
        let caught_up = match heard {
            Some((since, at)) if listening.is_none() && at.elapsed() < CATCH_UP_WINDOW => {
                connect_and_catch_up(&store, &lifecycle, since, settings, &metrics).await
            }
            _ => None,
        };
        let connected = if let Some((subscription, as_of)) = listening.take() {
            Ok((subscription, as_of, Reached::Listening))
        } else if let Some((subscription, as_of, changes)) = caught_up {
            Ok((subscription, as_of, Reached::CaughtUp(changes)))
        } else {
            connect_and_resync(&store, &lifecycle, settings, &metrics)
                .await
                .map(|(subscription, as_of, keys)| (subscription, as_of, Reached::Resynced(keys)))
        };
        let (mut subscription, as_of, reached) = match connected {
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
        match reached {
            Reached::Listening => {
                tracing::info!("change feed: listening since before the index was loaded");
            }
            Reached::CaughtUp(changes) => {
                tracing::info!(
                    changes,
                    "change feed: listening; caught up from the change log"
                );
            }
            Reached::Resynced(keys) => {
                tracing::info!(keys, "change feed: listening; index resynced");
            }
        }
        let error = listen(
            &mut subscription,
            &lifecycle,
            &freshness,
            settings,
            &metrics,
            &mut heard,
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

/// How a replica came to listen with a current index.
enum Reached {
    /// It subscribed before the server loaded its index at start.
    Listening,
    /// It read what it missed from the change log: this many changes.
    CaughtUp(usize),
    /// It reloaded everything: this many keys.
    Resynced(usize),
}

/// Subscribes to the feed, then reads from the change log what was written
/// since `since` and applies it: listening from before the read, it misses
/// nothing. Returns what [`connect_and_resync`] does, with how many changes
/// were applied; `None` when the replica must resync instead (the database
/// failed, or it missed too much), counted either way.
async fn connect_and_catch_up(
    store: &Store,
    lifecycle: &Lifecycle,
    since: Watermark,
    settings: FeedSettings,
    metrics: &Metrics,
) -> Option<(Subscription, Instant, usize)> {
    let caught_up = async {
        let subscription = store.subscribe(settings.connect_timeout).await?;
        let as_of = Instant::now();
        let Some(missed) = within(settings.max_staleness, store.changed_since(since)).await? else {
            return Ok(None);
        };
        let applied = within(settings.max_staleness, lifecycle.reload(&missed)).await?;
        Ok::<_, StoreError>(Some((subscription, as_of, applied)))
    }
    .await;
    let outcome = match &caught_up {
        Ok(Some(_)) => CatchUp::Ok,
        Ok(None) => CatchUp::TooMuch,
        Err(error) => {
            tracing::debug!(%error, "change feed: cannot catch up from the change log");
            CatchUp::Error
        }
    };
    metrics.caught_up(outcome);
    caught_up.ok().flatten()
}

/// Subscribes to the feed, then resyncs: listening from before the load,
/// the resync misses nothing. Returns the subscription, the moment the
/// index is known current as of, and how many keys it holds.
async fn connect_and_resync(
    store: &Store,
    lifecycle: &Lifecycle,
    settings: FeedSettings,
    metrics: &Metrics,
) -> Result<(Subscription, Instant, usize), StoreError> {
    let mut subscription = store.subscribe(settings.connect_timeout).await?;
    let started = Instant::now();
    let resynced = match within(settings.load_timeout(), lifecycle.load_for_resync()).await {
        Ok(prepared) => {
            install(
                &mut subscription,
                lifecycle,
                prepared,
                Changed::default(),
                settings,
            )
            .await
        }
        Err(error) => Err(error),
    };
    metrics.resynced(ResyncTrigger::Connect, resynced.is_ok(), started.elapsed());
    resynced.map(|(as_of, keys)| (subscription, as_of, keys))
}

/// Applies changes as they come, until the connection fails.
async fn listen(
    subscription: &mut Subscription,
    lifecycle: &Lifecycle,
    freshness: &Freshness,
    settings: FeedSettings,
    metrics: &Metrics,
    heard: &mut Option<(Watermark, Instant)>,
) -> StoreError {
    let heartbeat_every = settings.heartbeat();
    // A heartbeat's watermark, until the next heartbeat shows that every
    // change older than it was heard.
    let mut pending: Option<Watermark> = None;
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut resync_timer = tokio::time::interval_at(
        Instant::now() + settings.resync_interval,
        settings.resync_interval,
    );
    resync_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // A periodic resync loads while the feed is applied and heartbeats
    // confirm the index as usual: however long the load takes, the replica
    // stays fresh. What the feed applies meanwhile is remembered, to be
    // reloaded on top of the snapshot when it is installed.
    let mut loading: Option<Loading<'_>> = None;
    let mut applied_during_load = Changed::default();
    let mut load_started = Instant::now();
    loop {
        let is_loading = loading.is_some();
        let step = tokio::select! {
            topic = subscription.next() => match topic {
                Ok(Some(topic)) => apply_received(subscription, lifecycle, topic.into(), settings, metrics)
                    .await
                    .map(|applied| if is_loading { applied_during_load.merge(&applied) }),
                Ok(None) => Err(StoreError::FeedClosed),
                Err(error) => Err(error),
            },
            _ = heartbeat.tick() => {
                let as_of = Instant::now();
                match subscription.ping(heartbeat_every * 2).await {
                    Ok(watermark) => apply_received(subscription, lifecycle, Changed::default(), settings, metrics)
                        .await
                        .map(|applied| {
                            if is_loading {
                                applied_during_load.merge(&applied);
                            }
                            freshness.confirm(as_of);
                            if let Some(older) = pending.replace(watermark) {
                                *heard = Some((older, as_of));
                            }
                        }),
                    Err(error) => Err(error),
                }
            }
            _ = resync_timer.tick(), if !is_loading => {
                load_started = Instant::now();
                applied_during_load = Changed::default();
                loading = Some(Box::pin(within(settings.load_timeout(), lifecycle.load_for_resync())));
                Ok(())
            }
            loaded = async { loading.as_mut().expect("polled only while loading").await }, if is_loading => {
                loading = None;
                let installed = match loaded {
                    Ok(prepared) => install(
                        subscription,
                        lifecycle,
                        prepared,
                        std::mem::take(&mut applied_during_load),
                        settings,
                    )
                    .await,
                    Err(error) => Err(error),
                };
                metrics.resynced(ResyncTrigger::Interval, installed.is_ok(), load_started.elapsed());
                installed.map(|(as_of, keys)| {
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

/// A resync's snapshot being loaded.
type Loading<'a> = Pin<Box<dyn Future<Output = Result<Prepared, StoreError>> + Send + 'a>>;

/// Puts a resync's `prepared` contents in place ([`Lifecycle::install_resync`]),
/// with what the feed applied during the load (`applied_during_load`,
/// carried over from the current index) and everything it has delivered up
/// to a round trip made now (read from the store) on top: every write
/// committed after the snapshot was taken is among them. Returns
/// the moment the index is known current as of, and how many keys it holds.
async fn install(
    subscription: &mut Subscription,
    lifecycle: &Lifecycle,
    prepared: Prepared,
    applied_during_load: Changed,
    settings: FeedSettings,
) -> Result<(Instant, usize), StoreError> {
    let mut as_of = Instant::now();
    let installing = lifecycle.install_resync(prepared, &applied_during_load, async || {
        as_of = Instant::now();
        subscription.ping(settings.heartbeat() * 2).await?;
        let mut received = Changed::default();
        subscription.take_received(&mut received)?;
        Ok(received)
    });
    let keys = within(settings.max_staleness, installing).await?;
    Ok((as_of, keys))
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
) -> Result<Changed, StoreError> {
    let started = Instant::now();
    subscription.take_received(&mut changed)?;
    if changed.is_empty() {
        return Ok(changed);
    }
    let applied = within(settings.max_staleness, lifecycle.reload(&changed)).await?;
    metrics.feed_applied(started.elapsed());
    tracing::debug!(
        keys = changed.keys.len(),
        roles = changed.roles.len(),
        changes = applied,
        "change feed: applied"
    );
    Ok(changed)
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

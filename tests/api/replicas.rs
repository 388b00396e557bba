//! Many replicas over one PostgreSQL database: what one replica changes,
//! every other one sees through the change feed, without a database round
//! trip per Validate. PostgreSQL only (SQLite is one server by design);
//! skipped with a printed reason when it is unreachable, failing under CI.

use std::{future::Future, time::Duration};

use keyward::{
    pb,
    server::Settings,
    testing::{Backend, TestApp, authed, denial, postgres_reachable, spawn_app, spawn_with},
};
use tonic::{Code, Status};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{metrics::Scrape, proxy::CuttableProxy};

/// Longest a change may take to reach another replica in these tests: the
/// product promises under a second; this leaves room for a loaded machine.
/// BENCHMARKS.md has the measured figures.
const DEADLINE: Duration = Duration::from_secs(5);

/// Polls `check` until it holds, failing after `DEADLINE`; returns how long
/// it took.
async fn eventually<F, Fut>(what: &str, check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(DEADLINE, what, check).await
}

/// [`eventually`] with a deadline of its own.
async fn eventually_within<F, Fut>(deadline: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    loop {
        if check().await {
            let took = start.elapsed();
            println!("{what}: {took:?}");
            return took;
        }
        assert!(
            start.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Mints a key holding `roles` on `a` and waits until `b` validates it.
async fn minted_on_a_seen_by_b(a: &TestApp, b: &TestApp, roles: &[&str]) -> (String, String) {
    let (id, key) = a.mint_with_roles(roles).await;
    eventually("mint on A seen by B", || async {
        b.validate(&key, &[]).await.valid
    })
    .await;
    (id, key)
}

/// Replica tests run on PostgreSQL only.
async fn two_replicas() -> Option<(TestApp, TestApp)> {
    if !postgres_reachable().await {
        return None;
    }
    let a = spawn_app(Backend::Postgres).await;
    let b = a.replica().await;
    Some((a, b))
}

#[tokio::test]
async fn keys_minted_and_revoked_on_one_replica_are_seen_by_another() {
    let Some((a, b)) = two_replicas().await else {
        return;
    };
    let (id, key) = minted_on_a_seen_by_b(&a, &b, &["validator"]).await;
    let response = b.validate(&key, &["keyward:validate"]).await;
    assert_eq!(response.key_id, id);

    a.revoke(&id, "leaked").await.unwrap();
    eventually("revocation on A seen by B", || async {
        denial(&b.validate(&key, &[]).await) == pb::Denial::Invalid
    })
    .await;
    // And the other way round: B's writes reach A.
    let (id, key) = b.mint_with_roles(&[]).await;
    eventually("mint on B seen by A", || async {
        a.validate(&key, &[]).await.valid
    })
    .await;
    b.revoke(&id, "").await.unwrap();
    eventually("revocation on B seen by A", || async {
        !a.validate(&key, &[]).await.valid
    })
    .await;
}

#[tokio::test]
async fn role_changes_and_rotations_reach_every_replica() {
    let Some((a, b)) = two_replicas().await else {
        return;
    };
    a.create_role("deployer", &["deploy:write"], None)
        .await
        .unwrap();
    let (id, key) = a.mint_with_roles(&["deployer"]).await;
    eventually("role and key seen by B", || async {
        b.validate(&key, &["deploy:write"]).await.valid
    })
    .await;

    let update = pb::UpdateRoleRequest {
        name: "deployer".to_owned(),
        add_permissions: vec!["deploy:read".to_owned()],
        remove_permissions: vec!["deploy:write".to_owned()],
        ..Default::default()
    };
    a.admin_client()
        .await
        .update_role(authed(&a.admin_key, update))
        .await
        .unwrap();
    eventually("role update seen by B", || async {
        let response = b.validate(&key, &["deploy:write"]).await;
        denial(&response) == pb::Denial::Forbidden && b.validate(&key, &["deploy:read"]).await.valid
    })
    .await;

    // Rotation without grace: the old key dies and the successor lives, on B too.
    let rotated = a.rotate(&id, Duration::ZERO).await.unwrap();
    eventually("rotation seen by B", || async {
        !b.validate(&key, &[]).await.valid
            && b.validate(&rotated.plaintext, &["deploy:read"]).await.valid
    })
    .await;
}

#[tokio::test]
async fn a_replica_started_later_sees_every_earlier_change() {
    if !postgres_reachable().await {
        return;
    }
    let a = spawn_app(Backend::Postgres).await;
    a.create_role("reader", &["docs:read"], None).await.unwrap();
    let (_, live) = a.mint_with_roles(&["reader"]).await;
    let (revoked_id, revoked) = a.mint_with_roles(&["reader"]).await;
    a.revoke(&revoked_id, "").await.unwrap();

    let b = a.replica().await;
    // No polling: the index is loaded before the replica serves.
    assert!(b.validate(&live, &["docs:read"]).await.valid);
    assert_eq!(
        denial(&b.validate(&revoked, &[]).await),
        pb::Denial::Invalid
    );
}

#[tokio::test]
async fn usage_caps_hold_across_replicas() {
    let Some((a, b)) = two_replicas().await else {
        return;
    };
    let (_, key) = a
        .mint(pb::MintKeyRequest {
            max_uses: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    eventually("capped key seen by B", || async {
        b.validate(&key, &[]).await.valid
    })
    .await;
    // That call spent the first use. Of six more, across both replicas,
    // exactly the four left succeed: the database decides, not the replicas.
    let mut valid = 0;
    for replica in [&a, &b, &a, &b, &a, &b] {
        if replica.validate(&key, &[]).await.valid {
            valid += 1;
        }
    }
    assert_eq!(valid, 4);
}

/// Settings for a replica that gives up quickly: stale after
/// `max_staleness`, and a pooled connection that does not answer its check
/// within 500 ms is replaced.
fn quick_to_give_up(max_staleness: Duration) -> Settings {
    Settings {
        max_staleness,
        pool: keyward::store::PoolSettings {
            max_connections: 4,
            acquire_timeout: Duration::from_millis(500),
        },
        ..Settings::default()
    }
}

/// Replica B reaches PostgreSQL through a proxy the test can cut.
async fn replica_behind_a_proxy(settings: Settings) -> Option<(TestApp, TestApp, CuttableProxy)> {
    if !postgres_reachable().await {
        return None;
    }
    let a = spawn_with(Backend::Postgres, settings.clone()).await;
    let proxy = CuttableProxy::start(a.database.url()).await;
    let b = a.replica_via(&proxy.url(a.database.url()), settings).await;
    Some((a, b, proxy))
}

#[tokio::test]
async fn a_replica_cut_off_resyncs_and_refuses_keys_revoked_meanwhile() {
    let Some((a, b, proxy)) = replica_behind_a_proxy(Settings::default()).await else {
        return;
    };
    let (id, key) = minted_on_a_seen_by_b(&a, &b, &[]).await;

    proxy.cut();
    a.revoke(&id, "leaked").await.unwrap();
    // Fail-static: B cannot hear the revocation and answers from its index.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.validate(&key, &[]).await.valid);

    proxy.restore();
    eventually("revocation seen by B after reconnecting", || async {
        !b.validate(&key, &[]).await.valid
    })
    .await;
}

#[tokio::test]
async fn a_replica_cut_off_for_a_moment_catches_up_from_the_change_log_without_a_resync() {
    // Heartbeats every 500 ms, so the watermark B reconnects from is recent.
    let settings = Settings {
        metrics_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        ..quick_to_give_up(Duration::from_secs(2))
    };
    let Some((a, b, proxy)) = replica_behind_a_proxy(settings).await else {
        return;
    };
    let (id, key) = minted_on_a_seen_by_b(&a, &b, &[]).await;
    // Two heartbeats, the second confirming the first's watermark.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    proxy.cut();
    a.revoke(&id, "leaked").await.unwrap();
    let (_, minted_meanwhile) = a.mint_with_roles(&[]).await;
    proxy.restore();
    eventually(
        "revocation and new key seen by B after reconnecting",
        || async {
            !b.validate(&key, &[]).await.valid && b.validate(&minted_meanwhile, &[]).await.valid
        },
    )
    .await;

    let scrape = Scrape::of(&b).await;
    assert_eq!(
        scrape.count(r#"keyward_change_feed_catch_ups_total{result="ok"}"#),
        1,
        "{}",
        scrape.text
    );
    assert_eq!(
        scrape.count(r#"keyward_resyncs_total{trigger="connect",result="ok"}"#),
        0,
        "caught up, not reloaded"
    );
}

#[tokio::test]
async fn a_replica_whose_connection_hangs_notices_by_heartbeat_and_resyncs() {
    // Heartbeat every 750 ms, answered within 1.5 s, or the feed reconnects.
    let settings = quick_to_give_up(Duration::from_secs(3));
    let Some((a, b, proxy)) = replica_behind_a_proxy(settings).await else {
        return;
    };
    let (id, key) = minted_on_a_seen_by_b(&a, &b, &[]).await;

    // B's connections go silent: no error, no end of stream.
    proxy.freeze();
    a.revoke(&id, "leaked").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.validate(&key, &[]).await.valid, "fail-static meanwhile");
    // New connections go through again; the frozen ones never will, so only
    // the heartbeat's timeout can tell B to reconnect and resync.
    proxy.restore();
    // Up to 2.25 s to notice, then reconnecting past dead pooled connections.
    eventually_within(
        Duration::from_secs(15),
        "revocation seen by B after its heartbeat failed",
        || async {
            b.validate_as(&b.admin_key, &key, &[])
                .await
                .is_ok_and(|response| !response.valid)
        },
    )
    .await;
}

#[tokio::test]
async fn a_replica_cut_off_too_long_fails_closed_and_recovers() {
    let settings = quick_to_give_up(Duration::from_secs(1));
    let Some((a, b, proxy)) = replica_behind_a_proxy(settings).await else {
        return;
    };
    let (_, key) = minted_on_a_seen_by_b(&a, &b, &[]).await;

    proxy.cut();
    // Admin writes need the database: UNAVAILABLE once B gives up waiting
    // for a connection, with a message that says why.
    let refused = b
        .mint_as(&b.admin_key, pb::MintKeyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("the database is unavailable"),
        "{}",
        refused.message()
    );

    let unavailable = || async {
        b.validate_as(&b.admin_key, &key, &[])
            .await
            .is_err_and(|status| status.code() == Code::Unavailable)
    };
    eventually("B refuses to validate once stale", unavailable).await;
    let status = b.validate_as(&b.admin_key, &key, &[]).await.unwrap_err();
    assert!(
        status
            .message()
            .contains("has not been able to confirm its key index"),
        "{}",
        status.message()
    );
    let health = HealthClient::new(b.channel().await);
    let key_service_status = || {
        let mut health = health.clone();
        async move {
            let check = HealthCheckRequest {
                service: "keyward.v1.KeyService".to_owned(),
            };
            health.check(check).await.unwrap().into_inner().status()
        }
    };
    eventually("B's health check reports NOT_SERVING", || async {
        key_service_status().await == ServingStatus::NotServing
    })
    .await;
    // A stale replica cannot tell whether the caller's own key was revoked:
    // admin calls are refused too.
    let refused = b
        .mint_as(&b.admin_key, pb::MintKeyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    proxy.restore();
    eventually("B validates again after recovering", || async {
        b.validate_as(&b.admin_key, &key, &[])
            .await
            .is_ok_and(|response| response.valid)
    })
    .await;
    eventually("B's health check reports SERVING again", || async {
        key_service_status().await == ServingStatus::Serving
    })
    .await;
    assert!(
        b.mint_as(&b.admin_key, pb::MintKeyRequest::default())
            .await
            .is_ok()
    );
}

/// What happened to Validate on one replica while the other took writes.
#[derive(Debug, Default)]
struct Answers {
    valid: usize,
    /// Each failure: when (since the load began) and what.
    failures: Vec<(Duration, String)>,
}

impl Answers {
    fn assert_all_valid(&self, replica: &str) {
        if let (Some(first), Some(last)) = (self.failures.first(), self.failures.last()) {
            panic!(
                "Validate on {replica} failed {} times (valid {} times); first after {:?}: {}; last after {:?}",
                self.failures.len(),
                self.valid,
                first.0,
                first.1,
                last.0
            );
        }
        assert!(self.valid > 0, "Validate on {replica} never ran");
    }
}

/// Validates `key` on `app` every 50 ms until `until`.
async fn validate_throughout(app: &TestApp, key: &str, until: tokio::time::Instant) -> Answers {
    let start = tokio::time::Instant::now();
    let mut answers = Answers::default();
    let mut client = app.key_client().await;
    while tokio::time::Instant::now() < until {
        let request = pb::ValidateRequest {
            key: key.to_owned(),
            ..Default::default()
        };
        match client.validate(authed(&app.admin_key, request)).await {
            Ok(response) if response.get_ref().valid => answers.valid += 1,
            Ok(response) => answers.failures.push((
                start.elapsed(),
                format!("{:?}", response.get_ref().denial()),
            )),
            Err(status) => answers.failures.push((
                start.elapsed(),
                format!("{:?}: {}", status.code(), status.message()),
            )),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    answers
}

/// Mints on `app` from `writers` concurrent calls until `until`; returns
/// every acknowledged key and every refusal.
async fn mint_continuously(
    app: &TestApp,
    writers: usize,
    until: tokio::time::Instant,
) -> (Vec<(String, String)>, Vec<Status>) {
    let client = app.admin_client().await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers {
        let mut client = client.clone();
        let admin_key = app.admin_key.clone();
        tasks.spawn(async move {
            let (mut minted, mut refused) = (Vec::new(), Vec::new());
            while tokio::time::Instant::now() < until {
                let request = authed(&admin_key, pb::MintKeyRequest::default());
                match client.mint_key(request).await {
                    Ok(response) => {
                        let response = response.into_inner();
                        minted.push((response.key.unwrap().id, response.plaintext));
                    }
                    Err(status) => refused.push(status),
                }
            }
            (minted, refused)
        });
    }
    let (mut minted, mut refused) = (Vec::new(), Vec::new());
    while let Some(writer) = tasks.join_next().await {
        let (keys, statuses) = writer.unwrap();
        minted.extend(keys);
        refused.extend(statuses);
    }
    (minted, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_under_continuous_writes_stays_fresh() {
    let max_staleness = Duration::from_secs(2);
    let settings = Settings {
        max_staleness,
        ..Settings::default()
    };
    if !postgres_reachable().await {
        return;
    }
    let a = spawn_with(Backend::Postgres, settings).await;
    let b = a.replica().await;
    let (_, key) = minted_on_a_seen_by_b(&a, &b, &[]).await;

    // Writes for four times the staleness limit: long enough that a feed
    // which cannot confirm the index under load goes stale twice over.
    let until = tokio::time::Instant::now() + max_staleness * 4;
    let ((minted, refused), on_a, on_b) = tokio::join!(
        mint_continuously(&a, 16, until),
        validate_throughout(&a, &key, until),
        validate_throughout(&b, &key, until),
    );
    println!(
        "{} mints acknowledged, {} refused; Validate valid on A {}, on B {}",
        minted.len(),
        refused.len(),
        on_a.valid,
        on_b.valid
    );
    on_a.assert_all_valid("A");
    on_b.assert_all_valid("B");
    assert!(
        refused.is_empty(),
        "{} mints refused, the first: {:?}",
        refused.len(),
        refused.first()
    );
    assert!(
        minted.len() > 100,
        "the load was too light: {} mints",
        minted.len()
    );

    // Every acknowledged key works on A at once, and reaches B.
    assert_all_valid(&a, &minted, "minted on A, on A").await;
    let (_, last_key) = minted.last().unwrap();
    eventually("the last key minted on A seen by B", || async {
        b.validate(last_key, &[]).await.valid
    })
    .await;
    assert_all_valid(&b, &minted, "minted on A, on B").await;
}

/// Fails unless every one of `keys` validates on `app`.
async fn assert_all_valid(app: &TestApp, keys: &[(String, String)], what: &str) {
    let mut client = app.key_client().await;
    for (id, key) in keys {
        let request = pb::ValidateRequest {
            key: key.clone(),
            ..Default::default()
        };
        let response = client
            .validate(authed(&app.admin_key, request))
            .await
            .expect("Validate answers")
            .into_inner();
        assert!(response.valid, "key {id} {what}: {:?}", response.denial());
    }
}

#[tokio::test]
async fn a_stale_replica_answers_gateways_503() {
    let settings = Settings {
        http_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        ..quick_to_give_up(Duration::from_secs(1))
    };
    let Some((a, b, proxy)) = replica_behind_a_proxy(settings).await else {
        return;
    };
    let (_, key) = minted_on_a_seen_by_b(&a, &b, &[]).await;
    let bearer = format!("Bearer {key}");
    let ext_authz = || async {
        let request = crate::gateway::check_request(&[("authorization", &bearer)], None, "::1");
        let response = crate::gateway::check(&b, &b.admin_key, request)
            .await
            .unwrap();
        crate::gateway::denied(&response).0
    };
    let forward_auth = || async {
        let headers = [
            ("x-keyward-gateway-key", b.admin_key.as_str()),
            ("authorization", bearer.as_str()),
        ];
        crate::gateway::http(
            b.http_addr.unwrap(),
            "GET",
            "/v1/forward-auth",
            &headers,
            "",
        )
        .await
        .status
    };
    assert_eq!(forward_auth().await, 200);

    proxy.cut();
    eventually("B's forward-auth answers 503 once stale", || async {
        forward_auth().await == 503
    })
    .await;
    assert_eq!(ext_authz().await, 503);

    proxy.restore();
    eventually("B's forward-auth answers 200 again", || async {
        forward_auth().await == 200
    })
    .await;
}

//! `--metrics-listen`: the real server's `GET /metrics`, scraped over HTTP
//! after Validate and admin calls of every kind a test can cause.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use keyward::{
    key::{KeyId, ParsedKey},
    pb::{self, Denial},
    server::{Application, Settings},
    testing::{Backend, TestApp, authed, denial, forge, on_both_stores, spawn_with},
};
use tokio::net::TcpListener;
use tonic::Code;

/// A plain HTTP/1.1 GET, as Prometheus sends it; returns the status line,
/// the headers (names lowercased) and the body.
pub(crate) async fn http_get(
    addr: SocketAddr,
    path: &str,
) -> (String, HashMap<String, String>, String) {
    let answer = crate::gateway::http(addr, "GET", path, &[], "").await;
    (answer.status_line, answer.headers, answer.body)
}

/// One scrape: every sample by its series (name and labels, as written).
pub(crate) struct Scrape {
    pub(crate) text: String,
    samples: HashMap<String, String>,
}

impl Scrape {
    pub(crate) async fn of(app: &TestApp) -> Self {
        let addr = app.metrics_addr.expect("a metrics listener");
        let (status, headers, text) = http_get(addr, "/metrics").await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("series value");
                (series.to_owned(), value.to_owned())
            })
            .collect();
        Self { text, samples }
    }

    fn raw(&self, series: &str) -> Option<&str> {
        self.samples.get(series).map(String::as_str)
    }

    /// A counter's (or a count's) value, a whole number.
    pub(crate) fn count(&self, series: &str) -> u64 {
        self.raw(series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.text))
            .parse()
            .expect("a whole number")
    }

    /// A gauge's value.
    fn value(&self, series: &str) -> f64 {
        self.raw(series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.text))
            .parse()
            .expect("a number")
    }

    /// How much counter `series` grew since `before` (absent before: 0).
    fn delta(&self, before: &Self, series: &str) -> u64 {
        let was = before.raw(series).map_or(0, |_| before.count(series));
        self.count(series) - was
    }
}

fn validate_series(result: &str, reason: &str) -> String {
    format!(r#"keyward_validate_total{{result="{result}",reason="{reason}"}}"#)
}

fn with_metrics() -> Settings {
    Settings {
        metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..Settings::default()
    }
}

async fn validate_request(
    app: &TestApp,
    caller: Option<&str>,
    request: pb::ValidateRequest,
) -> Result<pb::ValidateResponse, tonic::Status> {
    let request = match caller {
        Some(caller) => authed(caller, request),
        None => tonic::Request::new(request),
    };
    app.key_client()
        .await
        .validate(request)
        .await
        .map(tonic::Response::into_inner)
}

async fn every_outcome_is_counted_and_no_key_is_exposed(backend: Backend) {
    let app = spawn_with(backend, with_metrics()).await;
    let before = Scrape::of(&app).await;

    let (live_id, live) = app.mint_with_roles(&["validator"]).await;
    let (_, other) = app.mint_with_roles(&[]).await;
    let (limited_id, limited) = app
        .mint(pb::MintKeyRequest {
            rate_limit: Some(pb::RateLimit {
                requests: 1,
                per: Some(Duration::from_mins(1).try_into().unwrap()),
                burst: 1,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let (fenced_id, fenced) = app
        .mint(pb::MintKeyRequest {
            allowed_cidrs: vec!["10.0.0.0/8".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let (expiring_id, expiring) = app
        .mint(pb::MintKeyRequest {
            expiry: Some(pb::mint_key_request::Expiry::Ttl(
                Duration::from_mins(1).try_into().unwrap(),
            )),
            ..Default::default()
        })
        .await
        .unwrap();
    let (capped_id, capped) = app
        .mint(pb::MintKeyRequest {
            max_uses: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let (revoked_id, revoked) = app.mint_with_roles(&[]).await;
    app.revoke(&revoked_id, "metrics test").await.unwrap();

    // Validate, with the admin key as the caller.
    assert!(app.validate(&live, &[]).await.valid);
    assert!(app.validate(&live, &["keyward:validate"]).await.valid);
    assert_eq!(
        denial(&app.validate("kw_short", &[]).await),
        Denial::Invalid
    );
    let unknown = forge(KeyId::from_u64(10), &other);
    assert_eq!(denial(&app.validate(&unknown, &[]).await), Denial::Invalid);
    let wrong_secret = forge(live_id.parse().unwrap(), &other);
    assert_eq!(
        denial(&app.validate(&wrong_secret, &[]).await),
        Denial::Invalid
    );
    // A revoked key leaves the index: it is unknown from then on.
    assert_eq!(denial(&app.validate(&revoked, &[]).await), Denial::Invalid);
    assert!(app.validate(&limited, &[]).await.valid);
    assert_eq!(
        denial(&app.validate(&limited, &[]).await),
        Denial::RateLimited
    );
    assert_eq!(
        denial(&app.validate(&live, &["deploy:write"]).await),
        Denial::Forbidden
    );
    assert_eq!(denial(&app.validate(&fenced, &[]).await), Denial::Forbidden);
    // The last use of a capped key removes it from the index.
    assert!(app.validate(&capped, &[]).await.valid);
    assert_eq!(denial(&app.validate(&capped, &[]).await), Denial::Invalid);
    let bad = app
        .validate_as(&app.admin_key, &live, &["Not A Permission"])
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    app.clock.advance(Duration::from_mins(2));
    assert_eq!(denial(&app.validate(&expiring, &[]).await), Denial::Invalid);

    // Callers refused for their own key.
    let request = pb::ValidateRequest {
        key: live.clone(),
        ..Default::default()
    };
    let refused = validate_request(&app, None, request.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = validate_request(&app, Some("kw_garbage"), request.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    // A key without keyward:validate.
    let refused = validate_request(&app, Some(&other), request.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // A validator key calling an admin RPC.
    let refused = app
        .mint_as(&live, pb::MintKeyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let missing = app.get(&KeyId::from_u64(11).to_string()).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let after = Scrape::of(&app).await;
    let expected = [
        (("valid", "none"), 4),
        (("invalid", "malformed"), 1),
        (("invalid", "unknown_key"), 3),
        (("invalid", "wrong_secret"), 1),
        (("invalid", "revoked"), 0),
        (("invalid", "expired"), 1),
        (("invalid", "exhausted"), 0),
        (("rate_limited", "rate_limited"), 1),
        (("forbidden", "missing_permission"), 1),
        (("forbidden", "client_ip"), 1),
        (("unavailable", "stale"), 0),
        (("unavailable", "database"), 0),
        (("invalid_argument", "invalid_argument"), 1),
    ];
    for ((result, reason), count) in expected {
        let series = validate_series(result, reason);
        assert_eq!(after.delta(&before, &series), count, "{series}");
    }
    let counted: u64 = expected.iter().map(|(_, count)| count).sum();
    assert_eq!(
        after.delta(&before, "keyward_validate_duration_seconds_count"),
        counted
    );
    // Calls refused for the caller's key are not Validate outcomes.
    let caller = |reason: &str| format!(r#"keyward_caller_refusals_total{{reason="{reason}"}}"#);
    assert_eq!(after.delta(&before, &caller("missing_credential")), 1);
    assert_eq!(after.delta(&before, &caller("malformed")), 1);
    assert_eq!(after.delta(&before, &caller("missing_permission")), 2);
    assert_eq!(after.delta(&before, &caller("wrong_secret")), 0);

    let admin = |rpc: &str, code: &str| {
        format!(r#"keyward_admin_requests_total{{rpc="{rpc}",code="{code}"}}"#)
    };
    assert_eq!(after.count(&admin("MintKey", "OK")), 7);
    assert_eq!(after.count(&admin("MintKey", "PERMISSION_DENIED")), 1);
    assert_eq!(after.count(&admin("RevokeKey", "OK")), 1);
    assert_eq!(after.count(&admin("GetKey", "NOT_FOUND")), 1);
    for operation in ["admin", "validate", "change_feed", "usage_flush"] {
        let series = format!(r#"keyward_database_errors_total{{operation="{operation}"}}"#);
        assert_eq!(after.count(&series), 0, "{series}");
    }

    // The admin key, the live, other, limited, fenced and expiring keys (not
    // yet swept); the revoked and the spent capped key have left.
    assert_eq!(after.count("keyward_index_keys"), 6);
    assert_eq!(after.count("keyward_index_roles"), 2);
    match backend {
        Backend::Sqlite => assert!(!after.text.contains("keyward_index_staleness_seconds")),
        Backend::Postgres => {
            let age = after.value("keyward_index_staleness_seconds");
            let limit = after.value("keyward_index_max_staleness_seconds");
            assert!((0.0..=limit).contains(&age), "{age} of {limit}");
        }
    }

    // Every name is keyward's, and nothing names a key.
    for line in after.text.lines().filter(|line| !line.is_empty()) {
        let name = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
            .unwrap_or(line);
        assert!(name.starts_with("keyward_"), "{line}");
    }
    let admin_id = ParsedKey::parse(&app.admin_key).unwrap().id().to_string();
    for secret in [
        &app.admin_key,
        &admin_id,
        &live,
        &live_id,
        &other,
        &limited,
        &limited_id,
        &fenced,
        &fenced_id,
        &expiring,
        &expiring_id,
        &capped,
        &capped_id,
        &revoked,
        &revoked_id,
        &unknown,
        &wrong_secret,
    ] {
        assert!(
            !after.text.contains(secret.as_str()),
            "{secret} in a scrape"
        );
    }
}

/// On PostgreSQL a replica's periodic resyncs are counted, with their
/// duration; none runs at start, where the feed listens from before the
/// index is loaded.
async fn resyncs_are_counted(backend: Backend) {
    let app = spawn_with(
        backend,
        Settings {
            resync_interval: Duration::from_millis(300),
            ..with_metrics()
        },
    )
    .await;
    let connect = r#"keyward_resyncs_total{trigger="connect",result="ok"}"#;
    let interval = r#"keyward_resyncs_total{trigger="interval",result="ok"}"#;
    if backend == Backend::Sqlite {
        // One server, no feed: nothing to resync.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let scrape = Scrape::of(&app).await;
        assert_eq!(scrape.count(interval), 0);
        assert_eq!(scrape.count("keyward_resync_duration_seconds_count"), 0);
        assert_eq!(
            scrape.count("keyward_resync_write_turn_duration_seconds_count"),
            0
        );
        return;
    }
    let mut scrape = Scrape::of(&app).await;
    for _ in 0..100 {
        if scrape.count(interval) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        scrape = Scrape::of(&app).await;
    }
    assert!(scrape.count(interval) >= 1, "{}", scrape.text);
    assert_eq!(scrape.count(connect), 0, "no second load at start");
    assert!(scrape.count("keyward_resync_duration_seconds_count") >= 1);
    assert!(scrape.count("keyward_resync_write_turn_duration_seconds_count") >= 1);

    // A change from another replica arrives through the feed and is applied.
    // A notification that lands while one of these frequent resyncs installs
    // is taken by the resync instead, and an apply is counted just after the
    // index has it: mint again until one is counted.
    let applied = "keyward_change_feed_apply_duration_seconds_count";
    let other = app.replica().await;
    let mut scrape = Scrape::of(&app).await;
    for _ in 0..20 {
        let (id, key) = other.mint_with_roles(&[]).await;
        for _ in 0..100 {
            if app.validate(&key, &[]).await.valid {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        scrape = Scrape::of(&app).await;
        assert!(!scrape.text.contains(&id));
        if scrape.count(applied) >= 1 {
            break;
        }
    }
    assert!(scrape.count(applied) >= 1, "{}", scrape.text);
}

on_both_stores!(
    every_outcome_is_counted_and_no_key_is_exposed,
    resyncs_are_counted
);

/// No listener unless asked for, and an address that cannot be bound stops
/// the start with one line naming it.
#[tokio::test]
async fn the_metrics_listener_is_optional_and_its_address_checked() {
    let app = keyward::testing::spawn_app(Backend::Sqlite).await;
    assert_eq!(app.metrics_addr, None);

    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        database_url: format!("sqlite://{}", dir.path().join("keyward.db").display()),
        bootstrap_key_file: dir.path().join("admin.key"),
        metrics_listen: Some(addr),
        ..Settings::default()
    };
    let Err(error) = Application::build(settings).await else {
        panic!("a taken metrics address must stop the start");
    };
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("cannot serve metrics on {addr}: ")),
        "{message}"
    );
    assert!(!message.contains('\n'), "{message}");
}

/// Other paths are not found; only `GET /metrics` answers.
#[tokio::test]
async fn only_get_metrics_is_served() {
    let app = spawn_with(Backend::Sqlite, with_metrics()).await;
    let addr = app.metrics_addr.unwrap();
    let (status, _, _) = http_get(addr, "/").await;
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
}

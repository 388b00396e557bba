//! Rate limits, usage caps and last-used tracking, over gRPC.

use std::{sync::Arc, time::Duration};

use keyward::{
    pb::{self, Denial, KeyState},
    rate_limit::RateLimit,
    server::Settings,
    testing::{Backend, TestApp, authed, denial, forge, on_both_stores, spawn_app, spawn_with},
};
use tonic::Code;

fn limit(requests: u32, per_seconds: u64, burst: u32) -> Option<pb::RateLimit> {
    Some(pb::RateLimit {
        requests,
        per: Some(Duration::from_secs(per_seconds).try_into().unwrap()),
        burst,
    })
}

/// Validates and returns the response with its metadata.
async fn validate_raw(app: &TestApp, key: &str) -> tonic::Response<pb::ValidateResponse> {
    let request = pb::ValidateRequest {
        key: key.to_owned(),
        ..Default::default()
    };
    app.key_client()
        .await
        .validate(authed(&app.admin_key, request))
        .await
        .unwrap()
}

async fn a_burst_is_cut_at_the_limit_and_recovers(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, key) = app
        .mint(pb::MintKeyRequest {
            rate_limit: limit(5, 1, 5),
            ..Default::default()
        })
        .await
        .unwrap();
    let (_, other) = app
        .mint(pb::MintKeyRequest {
            rate_limit: limit(5, 1, 5),
            ..Default::default()
        })
        .await
        .unwrap();

    // 50 calls with the right id but a wrong secret spend nothing of the quota.
    let (_, stranger) = app.mint_with_roles(&[]).await;
    let forged = forge(id.parse().unwrap(), &stranger);
    for _ in 0..50 {
        assert_eq!(denial(&app.validate(&forged, &[]).await), Denial::Invalid);
    }

    let mut allowed = 0;
    let mut limited = Vec::new();
    for _ in 0..40 {
        let response = validate_raw(&app, &key).await;
        let retry_header = response
            .metadata()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_inner();
        match denial(&body) {
            Denial::Unspecified => {
                allowed += 1;
                let state = body.rate_limit.expect("an allowed call reports its limit");
                assert_eq!(state.limit.unwrap().requests, 5);
                assert_eq!(state.remaining_burst, 5 - allowed);
            }
            Denial::RateLimited => limited.push((body, retry_header)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((5..=6).contains(&allowed), "{allowed} allowed");
    assert_eq!(limited.len(), 40 - allowed as usize);
    for (body, header) in &limited {
        assert!(!body.valid);
        assert!(!body.key_id.is_empty());
        let wait = Duration::try_from(body.retry_after.unwrap()).unwrap();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(header.as_deref(), Some("1"));
    }
    // Another key is not throttled.
    assert!(app.validate(&other, &[]).await.valid);
    // A second later the bucket has refilled.
    app.clock.advance(Duration::from_secs(1));
    assert!(app.validate(&key, &[]).await.valid);
}

async fn limits_come_from_the_key_its_roles_or_the_server(backend: Backend) {
    let default = RateLimit::new(2, Duration::from_mins(1), 2).unwrap();
    let app = spawn_with(
        backend,
        Settings {
            default_rate_limit: Some(default),
            ..Settings::default()
        },
    )
    .await;
    let mut admin = app.admin_client().await;
    let role = pb::CreateRoleRequest {
        name: "limited".into(),
        permissions: vec!["x:y".into()],
        default_rate_limit: limit(1, 60, 1),
        ..Default::default()
    };
    admin
        .create_role(authed(&app.admin_key, role))
        .await
        .unwrap();
    let (_, plain) = app.mint(pb::MintKeyRequest::default()).await.unwrap();
    let (_, by_role) = app.mint_with_roles(&["limited"]).await;
    let (own_id, own) = app
        .mint(pb::MintKeyRequest {
            roles: vec!["limited".into()],
            rate_limit: limit(3, 60, 3),
            ..Default::default()
        })
        .await
        .unwrap();

    let allowed = |key: String| {
        let app = &app;
        async move {
            let mut n = 0;
            for _ in 0..6 {
                n += u32::from(app.validate(&key, &[]).await.valid);
            }
            n
        }
    };
    assert_eq!(allowed(plain).await, 2, "server default");
    assert_eq!(allowed(by_role).await, 1, "role default");
    assert_eq!(allowed(own.clone()).await, 3, "the key's own limit wins");

    // Changing the key's limit applies on the next Validate.
    let update = pb::UpdateKeyRequest {
        id: own_id.clone(),
        rate_limit: limit(10, 60, 10),
        clear_rate_limit: false,
    };
    let updated = admin
        .update_key(authed(&app.admin_key, update))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.rate_limit.unwrap().requests, 10);
    assert!(app.validate(&own, &[]).await.valid);

    for bad in [
        limit(0, 1, 1),
        limit(1, 1, 0),
        limit(1, 0, 1),
        limit(1, 2 * 86_400, 1),
    ] {
        let status = app
            .mint(pb::MintKeyRequest {
                rate_limit: bad,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("rate_limit"),
            "{}",
            status.message()
        );
    }
    let neither = pb::UpdateKeyRequest {
        id: own_id,
        rate_limit: None,
        clear_rate_limit: false,
    };
    assert_eq!(
        admin
            .update_key(authed(&app.admin_key, neither))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
}

async fn a_usage_cap_holds_across_a_restart(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, key) = app
        .mint(pb::MintKeyRequest {
            max_uses: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let first = app.validate(&key, &[]).await;
    assert!(first.valid);
    assert_eq!(first.remaining_uses, Some(2));
    assert_eq!(app.validate(&key, &[]).await.remaining_uses, Some(1));

    let app = app.restart().await;
    let last = app.validate(&key, &[]).await;
    assert!(last.valid);
    assert_eq!(last.remaining_uses, Some(0));
    for _ in 0..3 {
        assert_eq!(denial(&app.validate(&key, &[]).await), Denial::Invalid);
    }
    let record = app.get(&id).await.unwrap();
    assert_eq!((record.max_uses, record.remaining_uses), (3, Some(0)));

    let app = app.restart().await;
    assert_eq!(denial(&app.validate(&key, &[]).await), Denial::Invalid);
    // Uncapped keys report no remaining count.
    let (_, uncapped) = app.mint_with_roles(&[]).await;
    assert_eq!(app.validate(&uncapped, &[]).await.remaining_uses, None);
}

async fn rotation_hands_on_the_remaining_uses_and_spent_keys_show_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, key) = app
        .mint(pb::MintKeyRequest {
            max_uses: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(app.validate(&key, &[]).await.valid);
    let rotated = app.rotate(&id, Duration::from_hours(1)).await.unwrap();
    let successor = rotated.key.unwrap();
    assert_eq!((successor.max_uses, successor.remaining_uses), (2, Some(2)));
    assert_eq!(rotated.previous.unwrap().state(), KeyState::Exhausted);
    assert_eq!(
        denial(&app.validate(&key, &[]).await),
        Denial::Invalid,
        "the old key stops despite the grace"
    );
    for left in [1, 0] {
        assert_eq!(
            app.validate(&rotated.plaintext, &[]).await.remaining_uses,
            Some(left)
        );
    }
    assert_eq!(
        denial(&app.validate(&rotated.plaintext, &[]).await),
        Denial::Invalid
    );
    let spent = app
        .list(pb::ListKeysRequest {
            state: KeyState::Exhausted.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(spent.keys.len(), 2);
    let active = app
        .list(pb::ListKeysRequest {
            state: KeyState::Active.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(active.keys.len(), 1, "only the admin key");
    let again = app.rotate(&successor.id, Duration::ZERO).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
}

async fn a_role_default_rate_limit_can_be_changed_and_cleared(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut admin = app.admin_client().await;
    let role = pb::CreateRoleRequest {
        name: "r".into(),
        permissions: vec!["x:y".into()],
        ..Default::default()
    };
    admin
        .create_role(authed(&app.admin_key, role))
        .await
        .unwrap();
    let (_, key) = app.mint_with_roles(&["r"]).await;
    assert!(app.validate(&key, &[]).await.rate_limit.is_none());
    let set = pb::UpdateRoleRequest {
        name: "r".into(),
        default_rate_limit: limit(1, 60, 1),
        ..Default::default()
    };
    let updated = admin
        .update_role(authed(&app.admin_key, set))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.default_rate_limit.unwrap().requests, 1);
    assert!(app.validate(&key, &[]).await.valid);
    assert_eq!(denial(&app.validate(&key, &[]).await), Denial::RateLimited);
    let clear = pb::UpdateRoleRequest {
        name: "r".into(),
        clear_default_rate_limit: true,
        ..Default::default()
    };
    let cleared = admin
        .update_role(authed(&app.admin_key, clear))
        .await
        .unwrap()
        .into_inner();
    assert!(cleared.default_rate_limit.is_none());
    assert!(app.validate(&key, &[]).await.valid);
    let app = app.restart().await;
    let shown = app
        .admin_client()
        .await
        .get_role(authed(
            &app.admin_key,
            pb::GetRoleRequest { name: "r".into() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        shown.default_rate_limit.is_none(),
        "stored, not just in memory"
    );
}

async fn concurrent_validations_never_exceed_the_cap(backend: Backend) {
    let app = Arc::new(spawn_app(backend).await);
    let (_, key) = app
        .mint(pb::MintKeyRequest {
            max_uses: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let tasks: Vec<_> = (0..60)
        .map(|_| {
            let app = app.clone();
            let key = key.clone();
            tokio::spawn(async move { app.validate(&key, &[]).await.valid })
        })
        .collect();
    let mut valid = 0;
    for task in tasks {
        valid += usize::from(task.await.unwrap());
    }
    assert_eq!(valid, 10);
}

async fn last_used_is_recorded_and_survives_a_restart(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, key) = app.mint_with_roles(&[]).await;
    assert!(app.get(&id).await.unwrap().last_used_at.is_none());
    app.clock.advance(Duration::from_secs(5));
    for _ in 0..3 {
        assert!(app.validate(&key, &[]).await.valid);
    }
    let used_at = app.clock_seconds();
    // A refused call is not a use.
    app.validate(&key, &["not:granted"]).await;
    let app = app.restart().await;
    let record = app.get(&id).await.unwrap();
    assert_eq!(record.use_count, 3);
    assert_eq!(record.last_used_at.unwrap().seconds, used_at);

    app.clock.advance(Duration::from_mins(1));
    assert!(app.validate(&key, &[]).await.valid);
    let app = app.restart().await;
    let record = app.get(&id).await.unwrap();
    assert_eq!(record.use_count, 4);
    assert_eq!(record.last_used_at.unwrap().seconds, used_at + 60);
}

async fn the_last_use_of_a_capped_key_is_counted(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, key) = app
        .mint(pb::MintKeyRequest {
            max_uses: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(app.validate(&key, &[]).await.valid);
    let app = app.restart().await;
    let record = app.get(&id).await.unwrap();
    assert_eq!(record.use_count, 1);
    assert!(record.last_used_at.is_some());
    assert_eq!(record.state(), KeyState::Exhausted);
}

async fn traffic_outside_the_allow_list_spends_no_quota(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, key) = app
        .mint(pb::MintKeyRequest {
            rate_limit: limit(2, 60, 2),
            allowed_cidrs: vec!["10.0.0.0/8".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let from = |ip: &str| pb::ValidateRequest {
        key: key.clone(),
        client_ip: ip.to_owned(),
        ..Default::default()
    };
    let mut client = app.key_client().await;
    for _ in 0..10 {
        let outside = client
            .validate(authed(&app.admin_key, from("192.0.2.1")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(denial(&outside), Denial::Forbidden);
    }
    for _ in 0..2 {
        assert!(
            client
                .validate(authed(&app.admin_key, from("10.1.2.3")))
                .await
                .unwrap()
                .into_inner()
                .valid
        );
    }
}

async fn usage_is_flushed_on_the_interval_without_a_restart(backend: Backend) {
    let app = spawn_with(
        backend,
        Settings {
            usage_flush_interval: Duration::from_millis(50),
            ..Settings::default()
        },
    )
    .await;
    let (id, key) = app.mint_with_roles(&[]).await;
    assert!(app.validate(&key, &[]).await.valid);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if app.get(&id).await.unwrap().use_count == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "usage never flushed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A narrow admin key may mint only so many keys (security review, issue
/// 12: each key costs index memory, up to ~50 KB); root is not limited.
async fn narrow_admins_have_a_mint_quota(backend: Backend) {
    let app = spawn_with(
        backend,
        Settings {
            mint_quota: Some(RateLimit::new(3, Duration::from_hours(1), 3).unwrap()),
            ..Settings::default()
        },
    )
    .await;
    app.create_role("minter", &["keyward:keys:write", "deploy:read"], None)
        .await
        .unwrap();
    let (_, minter) = app.mint_with_roles(&["minter"]).await;
    let mint = pb::MintKeyRequest {
        permissions: vec!["deploy:read".into()],
        ..Default::default()
    };
    for _ in 0..3 {
        app.mint_as(&minter, mint.clone()).await.unwrap();
    }
    let refused = app.mint_as(&minter, mint.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("may mint at most 3/1h")
            && refused.message().contains("retry in"),
        "{}",
        refused.message()
    );
    // Root mints on.
    for _ in 0..5 {
        app.mint(mint.clone()).await.unwrap();
    }
}

on_both_stores!(
    narrow_admins_have_a_mint_quota,
    a_burst_is_cut_at_the_limit_and_recovers,
    limits_come_from_the_key_its_roles_or_the_server,
    a_usage_cap_holds_across_a_restart,
    rotation_hands_on_the_remaining_uses_and_spent_keys_show_it,
    a_role_default_rate_limit_can_be_changed_and_cleared,
    last_used_is_recorded_and_survives_a_restart,
    the_last_use_of_a_capped_key_is_counted,
    traffic_outside_the_allow_list_spends_no_quota,
    usage_is_flushed_on_the_interval_without_a_restart,
);

on_both_stores!(multi_thread: concurrent_validations_never_exceed_the_cap);

//! Mint, get, list, rotate, revoke over gRPC, with the failure paths.

use std::time::Duration;

use keyward::{
    pb::{self, Denial, KeyState},
    testing::{Backend, authed, denial, on_both_stores, spawn_app},
};
use tonic::Code;

fn ttl(seconds: i64) -> Option<pb::mint_key_request::Expiry> {
    Some(pb::mint_key_request::Expiry::Ttl(prost_types::Duration {
        seconds,
        nanos: 0,
    }))
}

async fn bad_mint_input_names_the_field_and_writes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let past = prost_types::Timestamp {
        seconds: app.clock_seconds() - 60,
        nanos: 0,
    };
    let cases = [
        (
            "prefix",
            pb::MintKeyRequest {
                prefix: "Not_OK".into(),
                ..Default::default()
            },
        ),
        (
            "roles",
            pb::MintKeyRequest {
                roles: vec!["ghost".into()],
                ..Default::default()
            },
        ),
        (
            "ttl",
            pb::MintKeyRequest {
                expiry: ttl(0),
                ..Default::default()
            },
        ),
        (
            "ttl",
            pb::MintKeyRequest {
                expiry: ttl(-30),
                ..Default::default()
            },
        ),
        (
            "expires_at",
            pb::MintKeyRequest {
                expiry: Some(pb::mint_key_request::Expiry::ExpiresAt(past)),
                ..Default::default()
            },
        ),
        (
            "labels",
            pb::MintKeyRequest {
                labels: [("no=equals".to_owned(), "x".to_owned())].into(),
                ..Default::default()
            },
        ),
        (
            "labels",
            pb::MintKeyRequest {
                labels: [("k".to_owned(), "v".repeat(257))].into(),
                ..Default::default()
            },
        ),
    ];
    for (field, request) in cases {
        let status = app.mint(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    let all = app.list(pb::ListKeysRequest::default()).await.unwrap();
    assert_eq!(all.keys.len(), 1, "only the first admin key exists");
}

/// Text that hides what it says, and durations finer than the millisecond
/// the store keeps, are refused up front naming the field (a sub-millisecond
/// max TTL used to fail a database check as `INTERNAL`).
async fn hidden_text_and_sub_millisecond_durations_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let refused = |field: &'static str, needle: &'static str| {
        move |status: tonic::Status| {
            assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
            assert!(
                status.message().contains(field) && status.message().contains(needle),
                "{field}: {}",
                status.message()
            );
        }
    };
    let cases = [
        (
            "owner",
            pb::MintKeyRequest {
                owner: "pay\u{202E}stnemyap".into(),
                ..Default::default()
            },
        ),
        (
            "description",
            pb::MintKeyRequest {
                description: "deploy\u{200B}".into(),
                ..Default::default()
            },
        ),
        (
            "labels",
            pb::MintKeyRequest {
                labels: [("tenant".to_owned(), "acme\u{200B}".to_owned())].into(),
                ..Default::default()
            },
        ),
    ];
    for (field, request) in cases {
        refused(field, "invisible")(app.mint(request).await.unwrap_err());
    }
    let finer = pb::MintKeyRequest {
        rate_limit: Some(pb::RateLimit {
            requests: 1,
            per: Some(prost_types::Duration {
                seconds: 0,
                nanos: 1_500_000,
            }),
            burst: 1,
        }),
        ..Default::default()
    };
    refused("rate_limit", "whole number of milliseconds")(app.mint(finer).await.unwrap_err());
    refused("max_ttl", "whole number of milliseconds")(
        app.create_role("brief", &["deploy:read"], Some(Duration::from_micros(500)))
            .await
            .unwrap_err(),
    );
    let all = app.list(pb::ListKeysRequest::default()).await.unwrap();
    assert_eq!(all.keys.len(), 1, "only the first admin key exists");
}

/// An expiry so far away that no tool can print it (the year 20000, a TTL
/// of 2^62 s) once hid the whole inventory from `keywardctl list`: expiries
/// and graces are bounded at 100 years.
async fn expiries_and_graces_are_bounded_at_100_years(backend: Backend) {
    let app = spawn_app(backend).await;
    let year_20000 = prost_types::Timestamp {
        seconds: 568_971_820_800,
        nanos: 0,
    };
    for (field, expiry) in [
        ("ttl", ttl(1 << 62)),
        ("ttl", ttl(101 * 365 * 24 * 3600)),
        (
            "expires_at",
            Some(pb::mint_key_request::Expiry::ExpiresAt(year_20000)),
        ),
    ] {
        let status = app
            .mint(pb::MintKeyRequest {
                expiry,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert_eq!(
            status.message(),
            format!(
                "invalid {field}: must be at most 100 years away (omit it for a key that does not expire)"
            )
        );
    }
    let (id, _) = app
        .mint(pb::MintKeyRequest {
            expiry: ttl(99 * 365 * 24 * 3600),
            ..Default::default()
        })
        .await
        .expect("99 years is allowed");
    let status = app
        .rotate(&id, Duration::from_secs(1 << 40))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "invalid grace: must be at most 100 years");
    let all = app.list(pb::ListKeysRequest::default()).await.unwrap();
    assert_eq!(all.keys.len(), 2, "the admin key and the 99-year key");
}

async fn get_and_list_with_filters_and_pages(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut minted = Vec::new();
    for i in 0..5 {
        // Distinct creation times, after the first admin key's, fix the order.
        app.clock.advance(Duration::from_millis(5));
        let (id, _) = app
            .mint(pb::MintKeyRequest {
                roles: if i % 2 == 0 {
                    vec!["validator".into()]
                } else {
                    vec![]
                },
                labels: [("team".to_owned(), if i < 3 { "a" } else { "b" }.to_owned())].into(),
                owner: format!("owner-{}", i % 2),
                description: format!("key {i}"),
                ..Default::default()
            })
            .await
            .unwrap();
        minted.push(id);
    }
    let key = app.get(&minted[0]).await.unwrap();
    assert_eq!(key.description, "key 0");
    assert_eq!(key.state(), KeyState::Active);
    assert_eq!(key.roles, ["validator"]);

    let count = |request: pb::ListKeysRequest| {
        let app = &app;
        async move { app.list(request).await.unwrap().keys.len() }
    };
    let team_a = [("team".to_owned(), "a".to_owned())].into();
    assert_eq!(
        count(pb::ListKeysRequest {
            labels: team_a,
            ..Default::default()
        })
        .await,
        3
    );
    assert_eq!(
        count(pb::ListKeysRequest {
            owner: "owner-1".into(),
            ..Default::default()
        })
        .await,
        2
    );
    // The first admin key holds `admin`, three minted keys hold `validator`.
    assert_eq!(
        count(pb::ListKeysRequest {
            role: "validator".into(),
            ..Default::default()
        })
        .await,
        3
    );
    app.revoke(&minted[1], "").await.unwrap();
    let revoked = pb::ListKeysRequest {
        state: KeyState::Revoked.into(),
        ..Default::default()
    };
    assert_eq!(count(revoked).await, 1);
    let active = pb::ListKeysRequest {
        state: KeyState::Active.into(),
        ..Default::default()
    };
    assert_eq!(count(active).await, 5);

    // Pages of two, newest first, cover every key exactly once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .list(pb::ListKeysRequest {
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.keys.len() <= 2);
        seen.extend(page.keys.into_iter().map(|k| k.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 6);
    let newest_first: Vec<&String> = minted.iter().rev().collect();
    assert_eq!(seen[..5].iter().collect::<Vec<_>>(), newest_first);

    let bad = app
        .list(pb::ListKeysRequest {
            page_token: "nonsense".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("page_token"));
}

async fn rotation_keeps_the_old_key_for_the_grace_period(backend: Backend) {
    let app = spawn_app(backend).await;
    let (old_id, old_key) = app
        .mint(pb::MintKeyRequest {
            roles: vec!["validator".into()],
            labels: [("env".to_owned(), "ci".to_owned())].into(),
            owner: "builds".into(),
            expiry: ttl(86_400),
            ..Default::default()
        })
        .await
        .unwrap();
    app.clock.advance(Duration::from_mins(10));

    let rotated = app.rotate(&old_id, Duration::from_hours(1)).await.unwrap();
    let new = rotated.key.unwrap();
    let previous = rotated.previous.unwrap();
    assert_ne!(new.id, old_id);
    assert_eq!(
        (new.roles.clone(), new.owner.clone()),
        (vec!["validator".to_owned()], "builds".to_owned())
    );
    assert_eq!(new.labels.get("env").map(String::as_str), Some("ci"));
    assert_eq!(
        (new.rotated_from.as_str(), previous.rotated_to.as_str()),
        (old_id.as_str(), new.id.as_str())
    );
    // The successor lives as long as the old key did: 24 h from its rotation.
    assert_eq!(
        new.expires_at.unwrap().seconds - app.clock_seconds(),
        86_400
    );
    assert_eq!(
        previous.expires_at.unwrap().seconds - app.clock_seconds(),
        3600
    );

    assert!(
        app.validate(&rotated.plaintext, &["keyward:validate"])
            .await
            .valid
    );
    assert!(
        app.validate(&old_key, &[]).await.valid,
        "old key works during the grace period"
    );
    app.clock.advance(Duration::from_hours(1));
    assert_eq!(denial(&app.validate(&old_key, &[]).await), Denial::Invalid);
    assert!(app.validate(&rotated.plaintext, &[]).await.valid);

    let again = app.rotate(&old_id, Duration::ZERO).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert_eq!(app.get(&old_id).await.unwrap().state(), KeyState::Expired);
}

async fn rotation_without_grace_revokes_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let (old_id, old_key) = app.mint_with_roles(&[]).await;
    let rotated = app.rotate(&old_id, Duration::ZERO).await.unwrap();
    assert_eq!(denial(&app.validate(&old_key, &[]).await), Denial::Invalid);
    assert!(app.validate(&rotated.plaintext, &[]).await.valid);
    let previous = app.get(&old_id).await.unwrap();
    assert_eq!(previous.state(), KeyState::Revoked);
    assert_eq!(previous.revoke_reason, "rotated");

    let twice = app
        .rotate(&old_id, Duration::from_mins(1))
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition);
    assert!(twice.message().contains("revoked"), "{}", twice.message());
}

async fn revoke_is_immediate_and_idempotent(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, key) = app.mint_with_roles(&["validator"]).await;
    assert!(app.validate(&key, &[]).await.valid);

    let first = app.revoke(&id, "leaked in a build log").await.unwrap();
    assert!(!first.already_revoked);
    let first_key = first.key.unwrap();
    assert_eq!(first_key.state(), KeyState::Revoked);
    assert_eq!(first_key.revoke_reason, "leaked in a build log");
    assert_eq!(denial(&app.validate(&key, &[]).await), Denial::Invalid);

    app.clock.advance(Duration::from_secs(30));
    let second = app.revoke(&id, "again").await.unwrap();
    assert!(second.already_revoked);
    let second_key = second.key.unwrap();
    assert_eq!(
        second_key.revoked_at, first_key.revoked_at,
        "reports the first revocation"
    );
    assert_eq!(second_key.revoke_reason, "leaked in a build log");
}

async fn unknown_and_malformed_ids(backend: Backend) {
    let app = spawn_app(backend).await;
    for status in [
        app.revoke("0000000000A", "").await.unwrap_err(),
        app.rotate("0000000000A", Duration::ZERO).await.unwrap_err(),
        app.get("0000000000A").await.unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::NotFound);
        assert!(
            status.message().contains("0000000000A"),
            "{}",
            status.message()
        );
    }
    let malformed = app.get("not-an-id").await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert!(malformed.message().contains("id"));
}

async fn admin_rpcs_need_keyward_admin(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, validator) = app.mint_with_roles(&["validator"]).await;
    let mut client = app.admin_client().await;
    let denied = client
        .mint_key(authed(&validator, pb::MintKeyRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("keyward:keys:write"),
        "{}",
        denied.message()
    );
    let anonymous = client
        .list_keys(tonic::Request::new(pb::ListKeysRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

async fn state_survives_a_restart(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, kept) = app.mint_with_roles(&["validator"]).await;
    let (revoked_id, revoked) = app.mint_with_roles(&["validator"]).await;
    let (rotated_id, rotated_old) = app.mint_with_roles(&["validator"]).await;
    app.revoke(&revoked_id, "").await.unwrap();
    let rotation = app
        .rotate(&rotated_id, Duration::from_mins(1))
        .await
        .unwrap();

    let app = app.restart().await;
    assert!(app.validate(&kept, &["keyward:validate"]).await.valid);
    assert!(app.validate(&rotation.plaintext, &[]).await.valid);
    assert!(
        app.validate(&rotated_old, &[]).await.valid,
        "grace period survives the restart"
    );
    assert_eq!(denial(&app.validate(&revoked, &[]).await), Denial::Invalid);
    app.clock.advance(Duration::from_mins(1));
    assert_eq!(
        denial(&app.validate(&rotated_old, &[]).await),
        Denial::Invalid
    );
}

/// A client that gives up (deadline, dropped connection) mid-revoke must not
/// leave the key revoked in the database but still valid in the index.
async fn a_cancelled_revoke_still_takes_effect(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut keys = Vec::new();
    for _ in 0..40 {
        keys.push(app.mint_with_roles(&[]).await);
    }
    let mut client = app.admin_client().await;
    for (i, (id, _)) in keys.iter().enumerate() {
        let mut request = authed(
            &app.admin_key,
            pb::RevokeKeyRequest {
                id: id.clone(),
                reason: String::new(),
            },
        );
        request.set_timeout(Duration::from_micros(200 + 150 * (i as u64 % 8)));
        let _ = client.revoke_key(request).await;
    }
    // Let any write still running finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut revoked = 0;
    for (id, key) in &keys {
        if app.get(id).await.unwrap().state() == KeyState::Revoked {
            revoked += 1;
            assert_eq!(
                denial(&app.validate(key, &[]).await),
                Denial::Invalid,
                "key {id} is revoked in the store"
            );
        }
    }
    assert!(revoked > 0, "some revocations got through");
}

on_both_stores!(
    bad_mint_input_names_the_field_and_writes_nothing,
    expiries_and_graces_are_bounded_at_100_years,
    hidden_text_and_sub_millisecond_durations_are_refused,
    get_and_list_with_filters_and_pages,
    rotation_keeps_the_old_key_for_the_grace_period,
    rotation_without_grace_revokes_at_once,
    revoke_is_immediate_and_idempotent,
    unknown_and_malformed_ids,
    admin_rpcs_need_keyward_admin,
    state_survives_a_restart,
);

on_both_stores!(
    multi_thread: a_cancelled_revoke_still_takes_effect,
    concurrent_mints_each_get_their_own_key_and_audit_record
);

/// Dozens of mints at once (committed in groups, as they queue up for the
/// write turn) each get a distinct key that validates with what it was
/// minted with, and one audit record naming it.
async fn concurrent_mints_each_get_their_own_key_and_audit_record(backend: Backend) {
    const MINTS: usize = 48;
    let app = spawn_app(backend).await;
    let client = app.admin_client().await;
    let mints: Vec<_> = (0..MINTS)
        .map(|n| {
            let (mut client, admin) = (client.clone(), app.admin_key.clone());
            tokio::spawn(async move {
                let request = pb::MintKeyRequest {
                    permissions: vec![format!("job:{n}")],
                    ..Default::default()
                };
                let minted = client
                    .mint_key(authed(&admin, request))
                    .await
                    .unwrap()
                    .into_inner();
                (n, minted.key.unwrap().id, minted.plaintext)
            })
        })
        .collect();
    let mut minted = Vec::new();
    for mint in mints {
        minted.push(mint.await.unwrap());
    }

    let ids: std::collections::HashSet<_> = minted.iter().map(|(_, id, _)| id).collect();
    assert_eq!(ids.len(), MINTS, "distinct ids");
    for (n, id, plaintext) in &minted {
        let mine = format!("job:{n}");
        let response = app.validate(plaintext, &[&mine]).await;
        assert!(response.valid, "{id}: {response:?}");
        assert_eq!(&response.key_id, id);
        let other = format!("job:{}", n + 1);
        assert_eq!(
            denial(&app.validate(plaintext, &[&other]).await),
            Denial::Forbidden,
            "each key holds only its own permission"
        );
        let request = pb::ListAuditRecordsRequest {
            key_id: id.clone(),
            action: "key.mint".into(),
            ..Default::default()
        };
        let records = app
            .admin_client()
            .await
            .list_audit_records(authed(&app.admin_key, request))
            .await
            .unwrap()
            .into_inner()
            .records;
        assert_eq!(records.len(), 1, "one audit record for {id}");
    }
}

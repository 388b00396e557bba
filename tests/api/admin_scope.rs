//! Administration scope (security review, issue 12 item 3): an admin key
//! short of `keyward:admin` mints and manages only keys of its own owner
//! and tenant, and keys it minted; `keyward::scope` has the rules.
//!
//! The review's reproduction: a `ci-minter` key (`keyward:keys:write`,
//! `deploy:staging:*`) rotated a key of owner `payments`, tenant `acme`,
//! with grace 0, and walked away with the successor.

use std::time::Duration;

use keyward::{
    pb,
    testing::{Backend, TestApp, authed, on_both_stores, spawn_app},
};
use tonic::Code;

/// Root sets up the review's scene: the payments team's staging key, and
/// the CI team's minter. Returns (payments key id, payments key, minter).
async fn scene(app: &TestApp, minter_labels: &[(&str, &str)]) -> (String, String, String) {
    app.create_role(
        "ci-minter",
        &[
            "keyward:keys:write",
            "keyward:keys:read",
            "deploy:staging:*",
        ],
        None,
    )
    .await
    .unwrap();
    let (payments_id, payments) = app
        .mint(pb::MintKeyRequest {
            owner: "payments".into(),
            labels: [("tenant".to_owned(), "acme".to_owned())].into(),
            permissions: vec!["deploy:staging:write".into()],
            allowed_cidrs: vec!["10.0.0.0/8".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let (_, minter) = app
        .mint(pb::MintKeyRequest {
            roles: vec!["ci-minter".into()],
            owner: "ci".into(),
            labels: labels(minter_labels),
            ..Default::default()
        })
        .await
        .unwrap();
    (payments_id, payments, minter)
}

/// Labels from `(key, value)` pairs, as a request carries them.
fn labels(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

fn assert_denied(result: Result<impl std::fmt::Debug, tonic::Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
}

async fn a_narrow_admin_cannot_touch_another_scopes_keys(backend: Backend) {
    let app = spawn_app(backend).await;
    let (payments_id, payments, minter) = scene(&app, &[]).await;
    let mut client = app.admin_client().await;

    assert_denied(
        client
            .rotate_key(authed(
                &minter,
                pb::RotateKeyRequest {
                    id: payments_id.clone(),
                    grace: None,
                },
            ))
            .await,
        "rotate",
    );
    let status = client
        .revoke_key(authed(
            &minter,
            pb::RevokeKeyRequest {
                id: payments_id.clone(),
                reason: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains(&payments_id)
            && status.message().contains("outside the caller's scope")
            && status.message().contains("owner `ci`"),
        "{}",
        status.message()
    );
    assert_denied(
        client
            .update_key(authed(
                &minter,
                pb::UpdateKeyRequest {
                    id: payments_id.clone(),
                    rate_limit: Some(pb::RateLimit {
                        requests: 1,
                        per: Some(Duration::from_hours(1).try_into().unwrap()),
                        burst: 1,
                    }),
                    clear_rate_limit: false,
                },
            ))
            .await,
        "re-limit",
    );
    for dry_run in [true, false] {
        assert_denied(
            client
                .revoke_keys(authed(
                    &minter,
                    pb::RevokeKeysRequest {
                        labels: [("tenant".to_owned(), "acme".to_owned())].into(),
                        owner: String::new(),
                        reason: String::new(),
                        dry_run,
                    },
                ))
                .await,
            "bulk revoke",
        );
    }
    // Minting into the other scope: another owner, or any tenant.
    for (owner, tenant) in [("payments", None), ("", Some("acme")), ("ci", Some("acme"))] {
        assert_denied(
            app.mint_as(
                &minter,
                pb::MintKeyRequest {
                    owner: owner.into(),
                    labels: tenant
                        .map(|tenant| ("tenant".to_owned(), tenant.to_owned()))
                        .into_iter()
                        .collect(),
                    permissions: vec!["deploy:staging:write".into()],
                    ..Default::default()
                },
            )
            .await,
            "mint into another scope",
        );
    }

    // The payments key is untouched: still valid, from its allow-list, not
    // re-limited, not rotated.
    let key = app.get(&payments_id).await.unwrap();
    assert!(
        key.rate_limit.is_none() && key.rotated_to.is_empty(),
        "{key:?}"
    );
    let request = pb::ValidateRequest {
        key: payments.clone(),
        client_ip: "10.1.2.3".into(),
        ..Default::default()
    };
    let answer = app
        .key_client()
        .await
        .validate(authed(&app.admin_key, request))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.valid, "{answer:?}");
}

async fn a_narrow_admin_mints_and_manages_within_its_scope(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, _, minter) = scene(&app, &[]).await;
    let mut client = app.admin_client().await;

    // An owner left out is the minter's own.
    let (id, _) = app
        .mint_as(
            &minter,
            pb::MintKeyRequest {
                permissions: vec!["deploy:staging:write".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(app.get(&id).await.unwrap().owner, "ci");
    // A key root minted for the same owner is in scope too.
    let (root_minted, _) = app
        .mint(pb::MintKeyRequest {
            owner: "ci".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let rotated = client
        .rotate_key(authed(
            &minter,
            pb::RotateKeyRequest {
                id: id.clone(),
                grace: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.key.unwrap().owner, "ci");
    client
        .revoke_key(authed(
            &minter,
            pb::RevokeKeyRequest {
                id: root_minted,
                reason: String::new(),
            },
        ))
        .await
        .unwrap();
    // A bulk revoke narrowed to its owner goes through; without the owner
    // it would match the payments key, and is refused whole.
    let (labelled, _) = app
        .mint_as(
            &minter,
            pb::MintKeyRequest {
                labels: [("env".to_owned(), "staging".to_owned())].into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    app.mint(pb::MintKeyRequest {
        owner: "payments".into(),
        labels: [("env".to_owned(), "staging".to_owned())].into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let bulk = |owner: &str| pb::RevokeKeysRequest {
        labels: [("env".to_owned(), "staging".to_owned())].into(),
        owner: owner.into(),
        reason: String::new(),
        dry_run: false,
    };
    assert_denied(
        client.revoke_keys(authed(&minter, bulk(""))).await,
        "bulk revoke reaching into payments",
    );
    let revoked = client
        .revoke_keys(authed(&minter, bulk("ci")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.key_ids, [labelled]);
}

async fn a_tenant_admin_stays_in_its_tenant(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, _, minter) = scene(&app, &[("tenant", "acme")]).await;
    let mut client = app.admin_client().await;

    // The tenant is filled in, and no other may be named.
    let (id, _) = app
        .mint_as(&minter, pb::MintKeyRequest::default())
        .await
        .unwrap();
    let tenant_key = app.get(&id).await.unwrap();
    assert_eq!(
        (
            tenant_key.owner.as_str(),
            tenant_key.labels.get("tenant").map(String::as_str)
        ),
        ("ci", Some("acme"))
    );
    assert_denied(
        app.mint_as(
            &minter,
            pb::MintKeyRequest {
                labels: [("tenant".to_owned(), "globex".to_owned())].into(),
                ..Default::default()
            },
        )
        .await,
        "mint for another tenant",
    );
    // Owner `ci` but another tenant (or none): out of scope.
    for tags in [vec![], vec![("tenant", "globex")]] {
        let (other, _) = app
            .mint(pb::MintKeyRequest {
                owner: "ci".into(),
                labels: labels(&tags),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_denied(
            client
                .revoke_key(authed(
                    &minter,
                    pb::RevokeKeyRequest {
                        id: other,
                        reason: String::new(),
                    },
                ))
                .await,
            "revoke in another tenant",
        );
    }
    let (same_tenant, _) = app
        .mint(pb::MintKeyRequest {
            owner: "ci".into(),
            labels: [("tenant".to_owned(), "acme".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .revoke_key(authed(
            &minter,
            pb::RevokeKeyRequest {
                id: same_tenant,
                reason: String::new(),
            },
        ))
        .await
        .unwrap();
}

on_both_stores!(
    a_narrow_admin_cannot_touch_another_scopes_keys,
    a_narrow_admin_mints_and_manages_within_its_scope,
    a_tenant_admin_stays_in_its_tenant,
);

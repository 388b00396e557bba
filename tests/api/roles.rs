//! Roles, permissions, no escalation, and lifetime caps, over gRPC.

use std::time::Duration;

use keyward::{
    pb::{self, Denial},
    testing::{Backend, authed, denial, on_both_stores, spawn_app},
};
use tonic::Code;

fn ttl(seconds: i64) -> Option<pb::mint_key_request::Expiry> {
    Some(pb::mint_key_request::Expiry::Ttl(prost_types::Duration {
        seconds,
        nanos: 0,
    }))
}

async fn role_crud_and_changes_apply_on_the_next_validate(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app
        .create_role("deployer", &["deploy:*", "build:read"], None)
        .await
        .unwrap();
    assert_eq!(created.permissions, ["build:read", "deploy:*"]);
    assert!(!created.builtin);
    let (_, key) = app.mint_with_roles(&["deployer"]).await;
    assert!(app.validate(&key, &["deploy:prod:write"]).await.valid);

    let mut admin = app.admin_client().await;
    let update = pb::UpdateRoleRequest {
        name: "deployer".into(),
        add_permissions: vec!["deploy:staging:write".into()],
        remove_permissions: vec!["deploy:*".into()],
        description: Some("staging only".into()),
        ..Default::default()
    };
    let updated = admin
        .update_role(authed(&app.admin_key, update))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.permissions, ["build:read", "deploy:staging:write"]);
    assert_eq!(updated.description, "staging only");
    // The very next Validate sees the change.
    assert_eq!(
        denial(&app.validate(&key, &["deploy:prod:write"]).await),
        Denial::Forbidden
    );
    assert!(app.validate(&key, &["deploy:staging:write"]).await.valid);

    let listed = admin
        .list_roles(authed(&app.admin_key, pb::ListRolesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = listed.roles.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["admin", "deployer", "validator"]);
    let shown = admin
        .get_role(authed(
            &app.admin_key,
            pb::GetRoleRequest {
                name: "deployer".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.permissions, updated.permissions);

    // Deleting a held role is refused with the count; once free it goes.
    let held = admin
        .delete_role(authed(
            &app.admin_key,
            pb::DeleteRoleRequest {
                name: "deployer".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(held.code(), Code::FailedPrecondition);
    assert!(
        held.message().contains("held by 1 key"),
        "{}",
        held.message()
    );
    app.create_role("unused", &["x:y"], None).await.unwrap();
    admin
        .delete_role(authed(
            &app.admin_key,
            pb::DeleteRoleRequest {
                name: "unused".into(),
            },
        ))
        .await
        .unwrap();
    let gone = admin
        .get_role(authed(
            &app.admin_key,
            pb::GetRoleRequest {
                name: "unused".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(
        app.mint(pb::MintKeyRequest {
            roles: vec!["unused".into()],
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code(),
        Code::InvalidArgument
    );
}

async fn builtin_roles_cannot_change_and_bad_roles_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut admin = app.admin_client().await;
    for name in ["admin", "validator"] {
        let update = pb::UpdateRoleRequest {
            name: name.into(),
            add_permissions: vec!["x:y".into()],
            ..Default::default()
        };
        let status = admin
            .update_role(authed(&app.admin_key, update))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{name}");
        let status = admin
            .delete_role(authed(
                &app.admin_key,
                pb::DeleteRoleRequest { name: name.into() },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{name}");
        assert!(
            status.message().contains("built in"),
            "{}",
            status.message()
        );
    }
    app.create_role("ops", &["ops:read"], None).await.unwrap();
    let taken = app
        .create_role("ops", &["ops:write"], None)
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    assert_eq!(taken.message(), "role ops already exists");
    let cases: [(&str, &[&str], &str); 5] = [
        ("Bad Name", &["ops:read"], "name"),
        ("wild", &["*"], "reserved for built-in roles"),
        ("empty", &[], "at least one permission"),
        ("malformed", &["deploy:"], "permissions"),
        ("long", &[&"a".repeat(300)], "longer than 256"),
    ];
    for (name, permissions, expected) in cases {
        let status = app.create_role(name, permissions, None).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}");
        assert!(
            status.message().contains(expected),
            "{name}: {}",
            status.message()
        );
    }
    let roles = admin
        .list_roles(authed(&app.admin_key, pb::ListRolesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .roles;
    assert_eq!(roles.len(), 3, "nothing half-written");
}

async fn direct_permissions_add_to_roles(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_role("reader", &["docs:read"], None)
        .await
        .unwrap();
    let (_, key) = app
        .mint(pb::MintKeyRequest {
            roles: vec!["reader".into()],
            permissions: vec!["docs:write".into(), "docs:write".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let response = app.validate(&key, &["docs:read", "docs:write"]).await;
    assert!(response.valid);
    assert_eq!(response.permissions, ["docs:read", "docs:write"]);
    assert_eq!(response.roles, ["reader"]);
    let star = app
        .mint(pb::MintKeyRequest {
            permissions: vec!["*".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(star.code(), Code::InvalidArgument);
}

async fn scoped_admin_keys_cannot_escalate(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_role("minter", &["keyward:keys:write", "deploy:read"], None)
        .await
        .unwrap();
    app.create_role("deploy-writer", &["deploy:write"], None)
        .await
        .unwrap();
    app.create_role("role-admin", &["keyward:roles:write", "deploy:read"], None)
        .await
        .unwrap();
    let (_, minter) = app.mint_with_roles(&["minter"]).await;

    // Within its own permissions: allowed.
    let (narrow_id, _) = app
        .mint_as(
            &minter,
            pb::MintKeyRequest {
                permissions: vec!["deploy:read".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Beyond them, directly or through a role: refused, nothing minted.
    let attempts = [
        pb::MintKeyRequest {
            permissions: vec!["deploy:write".into()],
            ..Default::default()
        },
        pb::MintKeyRequest {
            permissions: vec!["keyward:*".into()],
            ..Default::default()
        },
        pb::MintKeyRequest {
            permissions: vec!["keyward:admin".into()],
            ..Default::default()
        },
        pb::MintKeyRequest {
            roles: vec!["deploy-writer".into()],
            ..Default::default()
        },
        pb::MintKeyRequest {
            roles: vec!["admin".into()],
            ..Default::default()
        },
    ];
    for attempt in attempts {
        let status = app.mint_as(&minter, attempt.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{attempt:?}");
        assert!(
            status.message().contains("cannot grant"),
            "{}",
            status.message()
        );
    }
    let keys = app.list(pb::ListKeysRequest::default()).await.unwrap().keys;
    assert_eq!(keys.len(), 3, "admin, minter and the narrow key only");

    // Rotation copies permissions, so the same rule applies.
    let mut client = app.admin_client().await;
    let admin_id = &app.admin_key[3..14];
    let rotate = |id: &str| pb::RotateKeyRequest {
        id: id.to_owned(),
        grace: None,
    };
    let status = client
        .rotate_key(authed(&minter, rotate(admin_id)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    client
        .rotate_key(authed(&minter, rotate(&narrow_id)))
        .await
        .unwrap();

    // A role writer may not add what it does not hold, even to a role it holds.
    let (_, role_admin) = app.mint_with_roles(&["role-admin"]).await;
    let update = pb::UpdateRoleRequest {
        name: "role-admin".into(),
        add_permissions: vec!["keyward:*".into()],
        ..Default::default()
    };
    let status = client
        .update_role(authed(&role_admin, update))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let create = pb::CreateRoleRequest {
        name: "sneaky".into(),
        permissions: vec!["deploy:write".into()],
        ..Default::default()
    };
    assert_eq!(
        client
            .create_role(authed(&role_admin, create))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    // And a key without keyward:roles:write may not touch roles at all.
    let create = pb::CreateRoleRequest {
        name: "other".into(),
        permissions: vec!["deploy:read".into()],
        ..Default::default()
    };
    let status = client
        .create_role(authed(&minter, create))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("keyward:roles:write"));
}

async fn fine_admin_permissions_gate_each_rpc(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_role(
        "auditor",
        &["keyward:audit:read", "keyward:keys:read"],
        None,
    )
    .await
    .unwrap();
    let (_, auditor) = app.mint_with_roles(&["auditor"]).await;
    let mut client = app.admin_client().await;
    client
        .list_keys(authed(&auditor, pb::ListKeysRequest::default()))
        .await
        .unwrap();
    client
        .list_audit_records(authed(&auditor, pb::ListAuditRecordsRequest::default()))
        .await
        .unwrap();
    let status = client
        .mint_key(authed(&auditor, pb::MintKeyRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("keyward:keys:write"));
    let status = client
        .list_roles(authed(&auditor, pb::ListRolesRequest {}))
        .await
        .unwrap_err();
    assert!(status.message().contains("keyward:roles:read"));
}

async fn a_role_max_ttl_caps_key_lifetimes(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_role("ci", &["deploy:write"], Some(Duration::from_hours(1)))
        .await
        .unwrap();
    let roles = || vec!["ci".to_owned()];
    for (expiry, field) in [(None, "ttl"), (ttl(3601), "ttl")] {
        let status = app
            .mint(pb::MintKeyRequest {
                roles: roles(),
                expiry,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains(field) && status.message().contains("1h"),
            "{}",
            status.message()
        );
    }
    let later = prost_types::Timestamp {
        seconds: app.clock_seconds() + 7200,
        nanos: 0,
    };
    let status = app
        .mint(pb::MintKeyRequest {
            roles: roles(),
            expiry: Some(pb::mint_key_request::Expiry::ExpiresAt(later)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        status.message().contains("expires_at"),
        "{}",
        status.message()
    );
    let (_, key) = app
        .mint(pb::MintKeyRequest {
            roles: roles(),
            expiry: ttl(3600),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(app.validate(&key, &["deploy:write"]).await.valid);
    app.clock.advance(Duration::from_hours(1));
    assert_eq!(denial(&app.validate(&key, &[]).await), Denial::Invalid);

    // The cap can be lifted.
    let update = pb::UpdateRoleRequest {
        name: "ci".into(),
        clear_max_ttl: true,
        ..Default::default()
    };
    let role = app
        .admin_client()
        .await
        .update_role(authed(&app.admin_key, update))
        .await
        .unwrap()
        .into_inner();
    assert!(role.max_ttl.is_none());
    app.mint(pb::MintKeyRequest {
        roles: roles(),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn narrow_admin_keys_manage_only_narrower_keys(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_role(
        "keys-admin",
        &["keyward:keys:write", "keyward:keys:read", "deploy:*"],
        None,
    )
    .await
    .unwrap();
    let (_, narrow) = app.mint_with_roles(&["keys-admin"]).await;
    let (deploy_id, _) = app
        .mint_as(
            &narrow,
            pb::MintKeyRequest {
                permissions: vec!["deploy:write".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let admin_id = app.admin_key[3..14].to_owned();
    let mut client = app.admin_client().await;

    let revoke = |id: &str| pb::RevokeKeyRequest {
        id: id.to_owned(),
        reason: String::new(),
    };
    let status = client
        .revoke_key(authed(&narrow, revoke(&admin_id)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains(&admin_id), "{}", status.message());
    let update = pb::UpdateKeyRequest {
        id: admin_id.clone(),
        rate_limit: Some(pb::RateLimit {
            requests: 1,
            per: Some(Duration::from_hours(1).try_into().unwrap()),
            burst: 1,
        }),
        clear_rate_limit: false,
    };
    assert_eq!(
        client
            .update_key(authed(&narrow, update))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    // The admin key is untouched and still works.
    assert!(app.validate(&app.admin_key, &[]).await.valid);
    // Bulk revoke refuses the whole batch when one key is out of reach.
    let label = |id: &str| pb::RevokeKeysRequest {
        labels: [("batch".to_owned(), id.to_owned())].into(),
        owner: String::new(),
        reason: String::new(),
        dry_run: false,
    };
    let (_, broad) = app
        .mint(pb::MintKeyRequest {
            roles: vec!["admin".into()],
            labels: [("batch".to_owned(), "1".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (_, small) = app
        .mint_as(
            &narrow,
            pb::MintKeyRequest {
                labels: [("batch".to_owned(), "1".to_owned())].into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        client
            .revoke_keys(authed(&narrow, label("1")))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert!(
        app.validate(&broad, &[]).await.valid && app.validate(&small, &[]).await.valid,
        "nothing revoked"
    );
    // Within its reach: allowed.
    client
        .revoke_key(authed(&narrow, revoke(&deploy_id)))
        .await
        .unwrap();
}

async fn capped_keys_cannot_authenticate_rpcs(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, capped) = app
        .mint(pb::MintKeyRequest {
            roles: vec!["admin".into()],
            max_uses: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    let status = app
        .admin_client()
        .await
        .list_keys(authed(&capped, pb::ListKeysRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // Refusing it spent none of its uses.
    assert_eq!(app.validate(&capped, &[]).await.remaining_uses, Some(4));
}

async fn narrow_role_writers_cannot_weaken_broader_roles(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_role("deployer", &["deploy:*"], None)
        .await
        .unwrap();
    app.create_role("docs", &["docs:read"], None).await.unwrap();
    app.create_role("role-admin", &["keyward:roles:write", "docs:*"], None)
        .await
        .unwrap();
    let (_, role_admin) = app.mint_with_roles(&["role-admin"]).await;
    let (_, deployer) = app.mint_with_roles(&["deployer"]).await;
    let mut client = app.admin_client().await;

    let strip = pb::UpdateRoleRequest {
        name: "deployer".into(),
        remove_permissions: vec!["deploy:*".into()],
        ..Default::default()
    };
    let status = client
        .update_role(authed(&role_admin, strip))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("deployer"),
        "{}",
        status.message()
    );
    let delete = pb::DeleteRoleRequest {
        name: "deployer".into(),
    };
    assert_eq!(
        client
            .delete_role(authed(&role_admin, delete))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert!(
        app.validate(&deployer, &["deploy:write"]).await.valid,
        "the role is untouched"
    );

    // A role within its reach it may change.
    let narrow = pb::UpdateRoleRequest {
        name: "docs".into(),
        add_permissions: vec!["docs:write".into()],
        ..Default::default()
    };
    client
        .update_role(authed(&role_admin, narrow))
        .await
        .unwrap();
}

on_both_stores!(
    role_crud_and_changes_apply_on_the_next_validate,
    builtin_roles_cannot_change_and_bad_roles_are_refused,
    direct_permissions_add_to_roles,
    scoped_admin_keys_cannot_escalate,
    fine_admin_permissions_gate_each_rpc,
    a_role_max_ttl_caps_key_lifetimes,
    narrow_admin_keys_manage_only_narrower_keys,
    capped_keys_cannot_authenticate_rpcs,
    narrow_role_writers_cannot_weaken_broader_roles,
);

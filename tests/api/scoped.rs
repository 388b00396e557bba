//! CIDR allow-lists and bulk revocation, over gRPC.

use keyward::{
    pb::{self, Denial, KeyState},
    testing::{Backend, TestApp, authed, denial, on_both_stores, spawn_app},
};
use tonic::Code;

async fn validate_from(
    app: &TestApp,
    key: &str,
    client_ip: &str,
) -> Result<pb::ValidateResponse, tonic::Status> {
    let request = pb::ValidateRequest {
        key: key.to_owned(),
        required_permissions: vec![],
        client_ip: client_ip.to_owned(),
    };
    Ok(app
        .key_client()
        .await
        .validate(authed(&app.admin_key, request))
        .await?
        .into_inner())
}

async fn allow_lists_gate_by_client_ip(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, fenced) = app
        .mint(pb::MintKeyRequest {
            allowed_cidrs: vec![
                "10.0.0.0/8".into(),
                "2001:db8::/32".into(),
                "192.0.2.7".into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let (_, anywhere) = app
        .mint(pb::MintKeyRequest {
            allowed_cidrs: vec!["0.0.0.0/0".into(), "::/0".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let (_, open) = app.mint_with_roles(&[]).await;

    for inside in [
        "10.0.0.1",
        "10.255.255.255",
        "2001:db8::1",
        "192.0.2.7",
        "::ffff:10.1.1.1",
    ] {
        assert!(
            validate_from(&app, &fenced, inside).await.unwrap().valid,
            "{inside}"
        );
    }
    for outside in ["", "11.0.0.1", "192.0.2.8", "2001:db9::1", "::1"] {
        let response = validate_from(&app, &fenced, outside).await.unwrap();
        assert_eq!(denial(&response), Denial::Forbidden, "{outside:?}");
        assert!(!response.key_id.is_empty());
    }
    assert!(
        validate_from(&app, &anywhere, "203.0.113.5")
            .await
            .unwrap()
            .valid
    );
    assert!(
        validate_from(&app, &anywhere, "2001:db8::5")
            .await
            .unwrap()
            .valid
    );
    assert_eq!(
        denial(&validate_from(&app, &anywhere, "").await.unwrap()),
        Denial::Forbidden
    );
    assert!(validate_from(&app, &open, "").await.unwrap().valid);

    let malformed = validate_from(&app, &open, "10.0.0.256").await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert!(malformed.message().contains("client_ip"));

    let listed = app.get(&fenced[3..14]).await.unwrap();
    assert_eq!(
        listed.allowed_cidrs,
        ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]
    );

    for bad in ["10.0.0.0/33", "fe80::/129", "not-an-ip", "10.0.0.0/"] {
        let status = app
            .mint(pb::MintKeyRequest {
                allowed_cidrs: vec![bad.into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert!(
            status.message().contains("allowed_cidrs"),
            "{}",
            status.message()
        );
    }
}

async fn bulk_revoke_by_label_in_one_go(backend: Backend) {
    let app = spawn_app(backend).await;
    let label = |team: &str| [("team".to_owned(), team.to_owned())].into();
    let mut red = Vec::new();
    for owner in ["alice", "alice", "bob"] {
        let (id, key) = app
            .mint(pb::MintKeyRequest {
                labels: label("red"),
                owner: owner.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        red.push((id, key));
    }
    let (_, blue) = app
        .mint(pb::MintKeyRequest {
            labels: label("blue"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut admin = app.admin_client().await;
    let request = |labels, owner: &str, dry_run| pb::RevokeKeysRequest {
        labels,
        owner: owner.into(),
        reason: "team offboarded".into(),
        dry_run,
    };

    let dry = admin
        .revoke_keys(authed(&app.admin_key, request(label("red"), "", true)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dry.key_ids.len(), 3);
    assert!(
        app.validate(&red[0].1, &[]).await.valid,
        "a dry run revokes nothing"
    );

    let none = admin
        .revoke_keys(authed(&app.admin_key, request(label("green"), "", false)))
        .await
        .unwrap()
        .into_inner();
    assert!(none.key_ids.is_empty());

    let bobs = admin
        .revoke_keys(authed(&app.admin_key, request(label("red"), "bob", false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bobs.key_ids, [red[2].0.clone()]);
    let rest = admin
        .revoke_keys(authed(&app.admin_key, request(label("red"), "", false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rest.key_ids.len(),
        2,
        "already revoked keys are not counted again"
    );
    for (id, key) in &red {
        assert_eq!(denial(&app.validate(key, &[]).await), Denial::Invalid);
        let record = app.get(id).await.unwrap();
        assert_eq!(record.state(), KeyState::Revoked);
        assert_eq!(record.revoke_reason, "team offboarded");
    }
    assert!(app.validate(&blue, &[]).await.valid);

    let untargeted = admin
        .revoke_keys(authed(
            &app.admin_key,
            request(std::collections::HashMap::default(), "", false),
        ))
        .await
        .unwrap_err();
    assert_eq!(untargeted.code(), Code::InvalidArgument);
    assert!(untargeted.message().contains("labels"));

    let audit = admin
        .list_audit_records(authed(
            &app.admin_key,
            pb::ListAuditRecordsRequest {
                action: "key.revoke".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(audit.records.len(), 3, "one audit record per revoked key");
}

async fn oversized_labels_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let many: std::collections::HashMap<String, String> =
        (0..65).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    let cases = [
        [("k".repeat(257), "v".to_owned())].into(),
        [("k".to_owned(), "v".repeat(257))].into(),
        many,
    ];
    for labels in cases {
        let status = app
            .mint(pb::MintKeyRequest {
                labels,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("labels"), "{}", status.message());
    }
}

on_both_stores!(
    allow_lists_gate_by_client_ip,
    bulk_revoke_by_label_in_one_go,
    oversized_labels_are_refused,
);

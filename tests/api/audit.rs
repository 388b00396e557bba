//! The audit log over gRPC: every change recorded, filters, and paging.

use std::time::Duration;

use keyward::{
    pb,
    testing::{Backend, authed, on_both_stores, spawn_app},
};
use tonic::Code;

async fn audit_records_every_change_and_pages_through_them(backend: Backend) {
    let app = spawn_app(backend).await;
    app.clock.advance(Duration::from_secs(10));
    let start = app.clock_seconds();
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(app.mint_with_roles(&[]).await.0);
    }
    app.revoke(&ids[0], "cleanup").await.unwrap();
    app.rotate(&ids[1], Duration::from_mins(1)).await.unwrap();
    app.create_role("r", &["a:b"], None).await.unwrap();
    let mut admin = app.admin_client().await;
    let update = pb::UpdateRoleRequest {
        name: "r".into(),
        add_permissions: vec!["a:c".into()],
        description: Some("changed".into()),
        max_ttl: Some(Duration::from_hours(1).try_into().unwrap()),
        default_rate_limit: Some(pb::RateLimit {
            requests: 10,
            per: Some(Duration::from_secs(1).try_into().unwrap()),
            burst: 20,
        }),
        ..Default::default()
    };
    admin
        .update_role(authed(&app.admin_key, update))
        .await
        .unwrap();
    admin
        .delete_role(authed(
            &app.admin_key,
            pb::DeleteRoleRequest { name: "r".into() },
        ))
        .await
        .unwrap();

    let list = |request: pb::ListAuditRecordsRequest| {
        let mut admin = admin.clone();
        let key = app.admin_key.clone();
        async move { admin.list_audit_records(authed(&key, request)).await }
    };

    // 1 initialize + 7 mints + revoke + rotate (a record for each key) + 3 role changes.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(pb::ListAuditRecordsRequest {
            page_size: 5,
            page_token: token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
        assert!(page.records.len() <= 5);
        seen.extend(page.records);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let actions: Vec<&str> = seen.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions.len(), 14, "{actions:?}");
    assert_eq!(
        actions[..5],
        [
            "role.delete",
            "role.update",
            "role.create",
            "key.mint",
            "key.rotate"
        ]
    );
    assert_eq!(*actions.last().unwrap(), "initialize");
    // A role update records every setting it changed, not only permissions.
    assert_eq!(
        seen[1].reason,
        "permissions: a:b, a:c; max_ttl: none -> 1h; rate limit: none -> 10/1s (burst 20); \
         description changed"
    );
    assert!(
        seen.windows(2).all(|w| w[0].seq > w[1].seq),
        "newest first, no repeats"
    );
    let admin_id = &app.admin_key[3..14];
    assert!(seen[..13].iter().all(|r| r.actor == admin_id));
    assert_eq!(seen[13].actor, "", "initialisation is the local operator");

    let for_key = list(pb::ListAuditRecordsRequest {
        key_id: ids[0].clone(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .records;
    let for_key: Vec<(&str, &str)> = for_key
        .iter()
        .map(|r| (r.action.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(for_key, [("key.revoke", "cleanup"), ("key.mint", "")]);

    let since = prost_types::Timestamp {
        seconds: start,
        nanos: 0,
    };
    let recent = list(pb::ListAuditRecordsRequest {
        since: Some(since),
        action: "key.mint".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(recent.records.len(), 8);
    let by_actor = list(pb::ListAuditRecordsRequest {
        actor: admin_id.to_owned(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(by_actor.records.len(), 13);

    let bad = list(pb::ListAuditRecordsRequest {
        page_token: "x".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let bad = list(pb::ListAuditRecordsRequest {
        actor: "nope".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(bad.message().contains("actor"));
}

on_both_stores!(audit_records_every_change_and_pages_through_them,);

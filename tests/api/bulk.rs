//! Bulk revocation at scale: the cap on what one call may match, and that a
//! single revocation is not held up by bulk ones.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use keyward::{
    clock::Clock,
    key::{KeyDigest, KeyId},
    lifecycle::MAX_BULK_REVOKE,
    model::{Actor, KeySettings, Labels},
    pb::{self, Denial},
    store::NewKey,
    testing::{Backend, TestApp, authed, denial, on_both_stores, spawn_app},
};
use tonic::Code;

/// Writes `count` keys holding `deploy:read` and `labels` straight to the
/// store, in one transaction: minting them one by one over gRPC would take
/// minutes. Ids start at `first`. On SQLite the server's index does not
/// learn of them, which bulk revocation does not need: it reads the store.
async fn seed(
    app: &TestApp,
    first: u64,
    count: u64,
    labels: &[(&str, &str)],
    owner: impl Fn(u64) -> String,
) {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    let keys = (first..first + count)
        .map(|id| NewKey {
            id: KeyId::from_u64(id),
            digest: KeyDigest::from_bytes([7; 32]),
            settings: KeySettings {
                permissions: vec!["deploy:read".parse().unwrap()],
                labels: Labels::new(labels.clone()).unwrap(),
                owner: owner(id),
                ..KeySettings::default()
            },
            created_by: None,
        })
        .collect();
    app.store
        .insert_keys(keys, Actor::Local, app.clock.now())
        .await
        .unwrap();
}

fn revoke_keys(labels: &[(&str, &str)], owner: &str, dry_run: bool) -> pb::RevokeKeysRequest {
    pb::RevokeKeysRequest {
        labels: labels
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect::<HashMap<_, _>>(),
        owner: owner.to_owned(),
        reason: "cohort retired".into(),
        dry_run,
    }
}

async fn revocations_recorded(app: &TestApp) -> usize {
    let request = pb::ListAuditRecordsRequest {
        action: "key.revoke".into(),
        page_size: 10,
        ..Default::default()
    };
    app.admin_client()
        .await
        .list_audit_records(authed(&app.admin_key, request))
        .await
        .unwrap()
        .into_inner()
        .records
        .len()
}

/// One call may match at most `MAX_BULK_REVOKE` keys: one matching more is
/// refused whole (dry run too), naming the cap and how to narrow it; a
/// narrower call, or one at the cap, goes through.
async fn a_bulk_revoke_over_the_cap_is_refused_whole(backend: Backend) {
    let app = spawn_app(backend).await;
    let cap = u64::try_from(MAX_BULK_REVOKE).unwrap();
    let cohort = [("cohort", "big")];
    seed(&app, 1_000_000, cap + 1, &cohort, |id| {
        if id == 1_000_000 { "carol" } else { "" }.to_owned()
    })
    .await;
    let mut admin = app.admin_client().await;

    for dry_run in [true, false] {
        let answer = admin
            .revoke_keys(authed(&app.admin_key, revoke_keys(&cohort, "", dry_run)))
            .await;
        let refused = match answer {
            Ok(answer) => panic!(
                "{} keys matched and the call was not refused",
                answer.into_inner().key_ids.len()
            ),
            Err(refused) => refused,
        };
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        let message = refused.message();
        assert!(
            message.contains(&format!("more than {MAX_BULK_REVOKE}")) && message.contains("narrow"),
            "{message}"
        );
    }
    assert_eq!(revocations_recorded(&app).await, 0, "nothing was revoked");

    let carols = admin
        .revoke_keys(authed(&app.admin_key, revoke_keys(&cohort, "carol", false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(carols.key_ids, [KeyId::from_u64(1_000_000).to_string()]);

    // At the cap exactly: allowed, and revoked in one go.
    let rest = admin
        .revoke_keys(authed(&app.admin_key, revoke_keys(&cohort, "", false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.key_ids.len(), MAX_BULK_REVOKE);
    let last = KeyId::from_u64(1_000_000 + cap).to_string();
    let record = app.get(&last).await.unwrap();
    assert_eq!(record.state(), pb::KeyState::Revoked);
    assert_eq!(record.revoke_reason, "cohort retired");
}

/// Keys in each of the bulk revocations below.
const BATCH: u64 = 3_000;

/// A narrow admin (no root, so each matching key is checked against it)
/// starts three large bulk revocations; once they are under way, a leaked
/// key is revoked. The bulk ones read and check their keys without holding
/// the write turn and take it one at a time, so the single revocation waits
/// for one bulk write at most: it is done before the last bulk one.
async fn an_emergency_revoke_does_not_queue_behind_bulk_revokes(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_role("ci-admin", &["keyward:keys:write", "deploy:*"], None)
        .await
        .unwrap();
    // All of team ci's, so within the narrow admin's scope.
    let (_, narrow) = app
        .mint(pb::MintKeyRequest {
            roles: vec!["ci-admin".into()],
            owner: "ci".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (leaked_id, leaked) = app
        .mint(pb::MintKeyRequest {
            permissions: vec!["deploy:read".into()],
            owner: "ci".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for batch in 0..3 {
        let value = batch.to_string();
        seed(
            &app,
            2_000_000 + batch * BATCH,
            BATCH,
            &[("batch", &value)],
            |_| "ci".to_owned(),
        )
        .await;
    }

    let before = app.store.operations();
    let mut bulk = Vec::new();
    for batch in 0..3 {
        let (mut admin, narrow) = (app.admin_client().await, narrow.clone());
        bulk.push(tokio::spawn(async move {
            let value = batch.to_string();
            let request = revoke_keys(&[("batch", &value)], "", false);
            let revoked = admin.revoke_keys(authed(&narrow, request)).await.unwrap();
            assert_eq!(
                revoked.into_inner().key_ids.len(),
                usize::try_from(BATCH).unwrap()
            );
            Instant::now()
        }));
    }
    // Under way: the server has started reading for them.
    while app.store.operations() < before + 3 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut admin = app.admin_client().await;
    let sent = Instant::now();
    let request = pb::RevokeKeyRequest {
        id: leaked_id,
        reason: "leaked".into(),
    };
    admin.revoke_key(authed(&narrow, request)).await.unwrap();
    let revoked_at = Instant::now();
    assert_eq!(denial(&app.validate(&leaked, &[]).await), Denial::Invalid);

    let mut last_bulk = sent;
    for call in bulk {
        last_bulk = last_bulk.max(call.await.unwrap());
    }
    assert!(
        revoked_at < last_bulk,
        "the revoke took {:?} and ended after every bulk revoke (the last ended {:?} after it was sent)",
        revoked_at - sent,
        last_bulk - sent,
    );
}

on_both_stores!(
    a_bulk_revoke_over_the_cap_is_refused_whole,
    an_emergency_revoke_does_not_queue_behind_bulk_revokes,
);

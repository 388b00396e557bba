use std::sync::Arc;

use super::*;

on_both_stores!(multi_thread: a_rotation_never_raises_a_cap_under_concurrent_use);
on_both_stores!(bulk_revocation_revokes_what_was_checked_once);

/// Finding is capped by the caller's limit; revoking takes the ids the
/// caller checked, revokes only those still unrevoked, and records each
/// revocation once, with the caller and the reason.
async fn bulk_revocation_revokes_what_was_checked_once(store: Arc<Store>) {
    let now = Timestamp::from_millis(1_000_000);
    let actor = Actor::Key(KeyId::from_u64(99));
    let labels: BTreeMap<String, String> = [("team".to_owned(), "red".to_owned())].into();
    let keys = (1..=4)
        .map(|n| NewKey {
            id: KeyId::from_u64(n),
            digest: KeyDigest::from_bytes([0; 32]),
            settings: KeySettings {
                labels: crate::model::Labels::new(labels.clone()).unwrap(),
                ..KeySettings::default()
            },
            created_by: None,
        })
        .collect();
    store.insert_keys(keys, Actor::Local, now).await.unwrap();
    let all = store.unrevoked_matching(&labels, None, 10).await.unwrap();
    assert_eq!(all, (1..=4).map(KeyId::from_u64).collect::<Vec<_>>());
    assert_eq!(
        store
            .unrevoked_matching(&labels, None, 2)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(store.get_keys(&all).await.unwrap().len(), 4);

    store
        .revoke_key(KeyId::from_u64(2), "", Actor::Local, now)
        .await
        .unwrap();
    // Key 4 was not among the keys checked; key 2 is revoked already.
    let checked = [3, 2, 1, 77].map(KeyId::from_u64);
    let revoked = store
        .revoke_keys(&checked, "offboarded", actor, now)
        .await
        .unwrap();
    assert_eq!(revoked, [3, 1].map(KeyId::from_u64));
    assert!(
        store
            .revoke_keys(&checked, "again", actor, now)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.unrevoked_matching(&labels, None, 10).await.unwrap(),
        [KeyId::from_u64(4)]
    );
    let key = store.get_key(KeyId::from_u64(3)).await.unwrap();
    assert_eq!(key.revoked_at, Some(now));
    assert_eq!(key.revoke_reason.as_deref(), Some("offboarded"));

    let records = store
        .list_audit(&crate::model::query::AuditQuery {
            action: Some(AuditAction::Revoke.as_str().to_owned()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .records;
    let mut bulk: Vec<_> = records
        .iter()
        .filter(|record| record.actor == Some(KeyId::from_u64(99)))
        .map(|record| (record.target.clone(), record.reason.clone(), record.at))
        .collect();
    bulk.sort();
    let expected = |id: u64| {
        (
            Some(KeyId::from_u64(id).to_string()),
            Some("offboarded".to_owned()),
            now,
        )
    };
    assert_eq!(bulk, [expected(1), expected(3)]);
    assert_eq!(
        records.len(),
        3,
        "key 2's own record, and one per bulk-revoked key"
    );
}

/// Validations spend uses while the key is rotated: the uses spent and
/// the uses handed to the successor never add up to more than the cap.
/// Half the cap is spent, so the key always has uses left to rotate
/// (a key whose uses are all spent is refused a rotation, rightly)
/// whichever spends land before the rotation.
async fn a_rotation_never_raises_a_cap_under_concurrent_use(store: Arc<Store>) {
    const CAP: u64 = 40;
    const SPENDERS: u64 = CAP / 2;
    let now = Timestamp::from_millis(1_000_000);
    let id = KeyId::from_u64(11);
    let key = NewKey {
        id,
        digest: KeyDigest::from_bytes([11; 32]),
        settings: KeySettings {
            max_uses: Some(CAP),
            ..KeySettings::default()
        },
        created_by: None,
    };
    store.insert_key(key, Actor::Local, now).await.unwrap();
    let spenders: Vec<_> = (0..SPENDERS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.consume_use(id).await.unwrap().is_some() })
        })
        .collect();
    let successor = (KeyId::from_u64(12), KeyDigest::from_bytes([12; 32]));
    let rotation = store
        .rotate_key(id, successor, Duration::ZERO, Actor::Local, now)
        .await
        .unwrap();
    let mut spent = 0;
    for spender in spenders {
        spent += u64::from(spender.await.unwrap());
    }
    let handed_on = store
        .get_key(rotation.successor.id)
        .await
        .unwrap()
        .uses_remaining
        .unwrap();
    assert_eq!(
        spent + handed_on,
        CAP,
        "spent {spent}, handed on {handed_on}"
    );
}

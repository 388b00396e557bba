//! Crash safety beyond mints (security review, issue 12, build item 6): the
//! binary is killed with SIGKILL while mints, rotations, revocations and
//! role edits run concurrently; afterwards every acknowledged change is in
//! the database, every change has its audit record and no audit record lacks
//! its change, and SQLite's `integrity_check` is `ok`. On both stores.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use keyward::{
    pb::{self, admin_service_client::AdminServiceClient},
    testing::{Backend, ScratchDatabase, authed},
};
use sqlx::{AnyConnection, Connection, Row};

use crate::binary::{Server, channel};

/// What the server acknowledged before it died.
#[derive(Default)]
struct Acknowledged {
    minted: BTreeSet<String>,
    revoked: BTreeSet<String>,
    /// Old key → successor.
    rotated: BTreeMap<String, String>,
    role_edits: usize,
}

/// One client's loop: mint, rotate the key (grace 0), revoke the successor,
/// edit the role; until the server is gone.
async fn write_until_killed(
    mut admin: AdminServiceClient<tonic::transport::Channel>,
    admin_key: String,
    worker: usize,
    acked: Arc<Mutex<Acknowledged>>,
) {
    for round in 0.. {
        let minted = admin
            .mint_key(authed(
                &admin_key,
                pb::MintKeyRequest {
                    roles: vec!["crash".into()],
                    labels: [("worker".to_owned(), worker.to_string())].into(),
                    ..Default::default()
                },
            ))
            .await;
        let Ok(minted) = minted else { return };
        let id = minted.into_inner().key.unwrap().id;
        acked.lock().unwrap().minted.insert(id.clone());

        let rotated = admin
            .rotate_key(authed(
                &admin_key,
                pb::RotateKeyRequest {
                    id: id.clone(),
                    grace: None,
                },
            ))
            .await;
        let Ok(rotated) = rotated else { return };
        let successor = rotated.into_inner().key.unwrap().id;
        acked
            .lock()
            .unwrap()
            .rotated
            .insert(id.clone(), successor.clone());

        let revoked = admin
            .revoke_key(authed(
                &admin_key,
                pb::RevokeKeyRequest {
                    id: successor.clone(),
                    reason: "crash test".into(),
                },
            ))
            .await;
        if revoked.is_err() {
            return;
        }
        acked.lock().unwrap().revoked.insert(successor);

        let edited = admin
            .update_role(authed(
                &admin_key,
                pb::UpdateRoleRequest {
                    name: "crash".into(),
                    description: Some(format!("worker {worker} round {round}")),
                    ..Default::default()
                },
            ))
            .await;
        if edited.is_err() {
            return;
        }
        acked.lock().unwrap().role_edits += 1;
    }
}

async fn sigkill_during_mixed_writes_loses_nothing(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let scratch = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => match ScratchDatabase::create().await {
            Some(database) => Some(database),
            None => return,
        },
    };
    let database_url = match &scratch {
        Some(database) => database.url().to_owned(),
        None => format!("sqlite://{}", dir.path().join("keyward.db").display()),
    };
    let key_file = dir.path().join("admin.key").display().to_string();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &database_url,
        "--bootstrap-key-file",
        &key_file,
    ];
    let mut server = Server::start_in(dir.path(), &args, &[]);
    let addr = server.wait_until_listening();
    let admin_key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    let mut admin = AdminServiceClient::new(channel(addr).await);
    admin
        .create_role(authed(
            &admin_key,
            pb::CreateRoleRequest {
                name: "crash".into(),
                permissions: vec!["crash:test".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap();

    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let admin = AdminServiceClient::new(channel(addr).await);
        workers.push(tokio::spawn(write_until_killed(
            admin,
            admin_key.clone(),
            worker,
            acked.clone(),
        )));
    }
    // Let writes of every kind pile up, then pull the plug.
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let acked = acked.lock().unwrap();
        if acked.role_edits >= 8 && acked.revoked.len() >= 8 {
            break;
        }
    }
    server.signal("KILL");
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(30), worker)
            .await
            .expect("the writers notice the server is gone")
            .unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());

    sqlx::any::install_default_drivers();
    let mut db = AnyConnection::connect(&database_url).await.unwrap();
    if scratch.is_none() {
        let check: String = sqlx::query("PRAGMA integrity_check")
            .fetch_one(&mut db)
            .await
            .unwrap()
            .get(0);
        assert_eq!(check, "ok");
    }
    let keys: BTreeMap<String, (Option<i64>, Option<String>)> =
        sqlx::query("SELECT id, revoked_at, rotated_to FROM api_keys")
            .fetch_all(&mut db)
            .await
            .unwrap()
            .iter()
            .map(|row| {
                (
                    row.get("id"),
                    (row.get("revoked_at"), row.get("rotated_to")),
                )
            })
            .collect();
    let audit: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query("SELECT action, target, reason FROM audit_log ORDER BY seq")
            .fetch_all(&mut db)
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get("action"), row.get("target"), row.get("reason")))
            .collect();

    // Every acknowledged change is there.
    for id in &acked.minted {
        assert!(keys.contains_key(id), "acknowledged mint {id} lost");
    }
    for (old, successor) in &acked.rotated {
        let (revoked_at, rotated_to) = &keys[old];
        assert!(revoked_at.is_some(), "rotated {old} not revoked (grace 0)");
        assert_eq!(rotated_to.as_deref(), Some(successor.as_str()));
        assert!(keys.contains_key(successor), "successor {successor} lost");
    }
    for id in &acked.revoked {
        assert!(keys[id].0.is_some(), "acknowledged revocation of {id} lost");
    }
    let role_updates = audit
        .iter()
        .filter(|(action, ..)| action == "role.update")
        .count();
    assert!(
        role_updates >= acked.role_edits,
        "acknowledged role edits lost"
    );

    // Every change has its audit record, and every record its change.
    let records = |action: &str| -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (_, target, _) in audit.iter().filter(|(a, ..)| a == action) {
            *counts.entry(target.clone().unwrap()).or_insert(0) += 1;
        }
        counts
    };
    let (mints, rotations, revocations) = (
        records("key.mint"),
        records("key.rotate"),
        records("key.revoke"),
    );
    let initialized: BTreeSet<String> = audit
        .iter()
        .filter(|(action, ..)| action == "initialize")
        .map(|(_, target, _)| target.clone().unwrap())
        .collect();
    for (id, (revoked_at, rotated_to)) in &keys {
        if !initialized.contains(id) {
            assert_eq!(mints.get(id), Some(&1), "key {id}: one key.mint record");
        }
        if rotated_to.is_some() {
            assert_eq!(
                rotations.get(id),
                Some(&1),
                "key {id}: one key.rotate record"
            );
        } else if revoked_at.is_some() {
            assert_eq!(
                revocations.get(id),
                Some(&1),
                "key {id}: one key.revoke record"
            );
        }
    }
    for id in mints
        .keys()
        .chain(rotations.keys())
        .chain(revocations.keys())
    {
        assert!(
            keys.contains_key(id),
            "an audit record names {id}, which is not there"
        );
    }
    db.close().await.unwrap();

    // And the server starts again on it.
    let mut again = Server::start_in(dir.path(), &args, &[]);
    again.wait_until_listening();
    again.terminate();
}

keyward::testing::on_both_stores!(sigkill_during_mixed_writes_loses_nothing);

//! A single-key revocation behind large bulk revocations.
//!
//! A narrow admin key (no root: each matching key is checked against it)
//! starts three bulk revocations of `MAX_BULK_REVOKE` keys each (the most one
//! call may match); once the server is reading for them, a leaked key is
//! revoked with `RevokeKey` and timed from sending to the answer. Two cases,
//! `ROUNDS` rounds each: the three bulk calls as dry runs (which take no
//! write turn), then as real revocations (which take it one at a time, for
//! one short transaction each). Target: the single revocation answers within
//! 200 ms.
//!
//! Runs on SQLite, and on PostgreSQL too when it is reachable
//! (`KEYWARD_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; a scratch database is
//! created and dropped). Name a store to run only it, e.g.
//! `cargo bench --bench bulk_revoke -- sqlite`.

mod common;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use common::{Server, median};
use keyward::{
    clock::Clock,
    key::{KeyDigest, KeyId},
    lifecycle::MAX_BULK_REVOKE,
    model::{Actor, KeySettings, Labels},
    pb,
    store::NewKey,
    testing::{Backend, authed, postgres_reachable},
};

/// Rounds per case.
const ROUNDS: usize = 5;
/// Bulk revocations queued ahead of the single one.
const BULK_CALLS: u64 = 3;

fn main() {
    if common::only_listing() {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let stores: Vec<String> = std::env::args()
            .skip(1)
            .filter(|arg| !arg.starts_with('-'))
            .collect();
        let wanted = |store: &str| stores.is_empty() || stores.iter().any(|s| s == store);
        if wanted("sqlite") {
            run(Backend::Sqlite, "SQLite").await;
        }
        if wanted("postgres") {
            if postgres_reachable().await {
                run(Backend::Postgres, "PostgreSQL").await;
            } else {
                eprintln!("PostgreSQL is unreachable; its case is skipped");
            }
        }
    });
}

/// Both cases on a fresh server on `backend`.
async fn run(backend: Backend, name: &str) {
    let server = common::start(backend).await;
    server
        .create_role("ci-admin", &["keyward:keys:write", "deploy:*"], None)
        .await
        .expect("role created");
    // Team ci's admin; the seeded keys are team ci's, so within its scope.
    let narrow = server
        .mint(pb::MintKeyRequest {
            roles: vec!["ci-admin".into()],
            owner: OWNER.into(),
            ..Default::default()
        })
        .await
        .expect("mint")
        .1;
    let cap = u64::try_from(MAX_BULK_REVOKE).expect("the cap fits");
    let mut next_id = 1_000_000;
    let mut seed_batches = async |server: &Server| {
        let mut batches = Vec::new();
        for _ in 0..BULK_CALLS {
            seed(server, next_id, cap).await;
            batches.push(next_id.to_string());
            next_id += cap;
        }
        // On PostgreSQL the server reloads what the feed names; let it.
        tokio::time::sleep(Duration::from_secs(1)).await;
        batches
    };

    println!(
        "{name}: a RevokeKey sent once {BULK_CALLS} bulk revocations of {MAX_BULK_REVOKE} keys each are under way"
    );
    let batches = seed_batches(&server).await;
    let mut dry = Vec::new();
    for _ in 0..ROUNDS {
        dry.push(round(&server, &narrow, &batches, true).await);
    }
    report("dry runs", &mut dry);
    let mut real = Vec::new();
    for _ in 0..ROUNDS {
        let batches = seed_batches(&server).await;
        real.push(round(&server, &narrow, &batches, false).await);
    }
    report("revocations", &mut real);
    phases(&server, &seed_batches(&server).await[0]).await;
}

/// Times the store calls of one bulk revocation on its own: finding the
/// keys and reading them for the check (outside the write turn), then the
/// transaction (inside it).
async fn phases(server: &Server, batch: &str) {
    // A write waits for the write turn, so for the server to have reloaded
    // the seeded keys (PostgreSQL's change feed), which would compete.
    server
        .mint(pb::MintKeyRequest::default())
        .await
        .expect("mint");
    let store = &server.store;
    let labels: BTreeMap<String, String> = [("batch".to_owned(), batch.to_owned())].into();
    let started = Instant::now();
    let ids = store
        .unrevoked_matching(&labels, None, MAX_BULK_REVOKE + 1)
        .await
        .expect("find");
    let found = started.elapsed();
    let started = Instant::now();
    let keys = store.get_keys(&ids).await.expect("read");
    let read = started.elapsed();
    assert_eq!(keys.len(), MAX_BULK_REVOKE);
    let started = Instant::now();
    store
        .revoke_keys(&ids, "bench", Actor::Local, server.clock.now())
        .await
        .expect("revoke");
    let revoked = started.elapsed();
    println!(
        "  one bulk revocation alone: find {:.1} ms, read for the check {:.1} ms, \
         revoking transaction {:.1} ms",
        found.as_secs_f64() * 1e3,
        read.as_secs_f64() * 1e3,
        revoked.as_secs_f64() * 1e3,
    );
}

/// The owner of the narrow admin and of every seeded key.
const OWNER: &str = "ci";

/// Writes `count` keys labelled `batch=<first>` straight to the store.
async fn seed(server: &Server, first: u64, count: u64) {
    let labels: BTreeMap<String, String> = [("batch".to_owned(), first.to_string())].into();
    let keys = (first..first + count)
        .map(|id| NewKey {
            id: KeyId::from_u64(id),
            digest: KeyDigest::from_bytes([7; 32]),
            settings: KeySettings {
                permissions: vec!["deploy:read".parse().expect("a permission")],
                labels: Labels::new(labels.clone()).expect("valid labels"),
                owner: OWNER.to_owned(),
                ..KeySettings::default()
            },
            created_by: None,
        })
        .collect();
    server
        .store
        .insert_keys(keys, Actor::Local, server.clock.now())
        .await
        .expect("keys seeded");
}

/// What one round measured.
struct Round {
    /// From sending the single `RevokeKey` to its answer.
    single: Duration,
    /// From starting the bulk calls to the last one's answer.
    bulk: Duration,
}

/// Starts a bulk call per batch, then times a `RevokeKey` once they are under way.
async fn round(server: &Server, narrow: &str, batches: &[String], dry_run: bool) -> Round {
    let (leaked, _) = server
        .mint(pb::MintKeyRequest {
            permissions: vec!["deploy:read".into()],
            owner: OWNER.into(),
            ..Default::default()
        })
        .await
        .expect("mint");
    let before = server.store.operations();
    let started = Instant::now();
    let mut calls = Vec::new();
    for batch in batches {
        let mut admin = server.admin_client().await;
        let request = pb::RevokeKeysRequest {
            labels: [("batch".to_owned(), batch.clone())].into(),
            owner: String::new(),
            reason: "bench".into(),
            dry_run,
        };
        let narrow = narrow.to_owned();
        calls.push(tokio::spawn(async move {
            let answer = admin.revoke_keys(authed(&narrow, request)).await;
            assert_eq!(
                answer.expect("bulk revoke").into_inner().key_ids.len(),
                MAX_BULK_REVOKE
            );
        }));
    }
    while server.store.operations() < before + 3 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut admin = server.admin_client().await;
    let request = pb::RevokeKeyRequest {
        id: leaked,
        reason: "leaked".into(),
    };
    let sent = Instant::now();
    admin
        .revoke_key(authed(narrow, request))
        .await
        .expect("revoke");
    let single = sent.elapsed();
    for call in calls {
        call.await.expect("bulk call");
    }
    Round {
        single,
        bulk: started.elapsed(),
    }
}

fn report(case: &str, rounds: &mut [Round]) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut single: Vec<f64> = rounds.iter().map(|r| ms(r.single)).collect();
    let mut bulk: Vec<f64> = rounds.iter().map(|r| ms(r.bulk)).collect();
    let worst = single.iter().copied().fold(0.0, f64::max);
    println!(
        "  behind {case}: RevokeKey median {:.1} ms, worst {worst:.1} ms of {}; \
         the three bulk calls took {:.0} ms (median)",
        median(&mut single),
        rounds.len(),
        median(&mut bulk),
    );
}

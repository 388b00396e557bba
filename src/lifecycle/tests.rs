use super::*;
use crate::{
    clock::SystemClock, model::Actor, permission, scope::Scope, store::NewKey,
    testing::ScratchDatabase,
};

/// On PostgreSQL the database, not this replica's index, decides whether
/// the caller may still write: its key may have been revoked on another
/// replica a moment ago.
/// The tests here run one at a time. One of them captures the log lines the
/// writes emit with a thread-local subscriber; tracing caches, per call site,
/// whether any subscriber wants it, and a call site first reached by another
/// test's thread (which has no subscriber) while it runs can be cached as
/// unwanted, losing its lines.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

#[tokio::test]
async fn a_caller_revoked_on_another_replica_cannot_write() {
    let _serial = one_at_a_time().await;
    let Some(database) = ScratchDatabase::create().await else {
        return;
    };
    let store = Arc::new(Store::open(database.url()).await.unwrap());
    let clock = Arc::new(SystemClock);
    let minted = MintedKey::generate(&Prefix::default()).unwrap();
    let new_key = NewKey {
        id: minted.id,
        digest: minted.digest,
        settings: KeySettings::default(),
        created_by: None,
    };
    store
        .insert_key(new_key, Actor::Local, clock.now())
        .await
        .unwrap();
    let index = Arc::new(Index::from_snapshot(
        store.load_snapshot(clock.now()).await.unwrap(),
    ));
    // Revoked in the database; this replica has not heard yet.
    store
        .revoke_key(minted.id, "leaked", Actor::Local, clock.now())
        .await
        .unwrap();
    assert!(index.get(minted.id).is_some());

    let metrics = Arc::new(Metrics::new(index.clone(), None));
    let lifecycle = Lifecycle::new(store, index, clock, metrics);
    let caller = Caller {
        id: minted.id,
        permissions: vec!["keyward:*".parse().unwrap()],
        is_root: true,
        scope: Scope::Unrestricted,
    };
    let new_role = NewRole {
        name: "deployer".parse().unwrap(),
        description: String::new(),
        permissions: vec!["deploy:write".parse().unwrap()],
        max_ttl: None,
        rate_limit: None,
    };
    let refused = lifecycle.create_role(&caller, new_role).await.unwrap_err();
    assert!(
        matches!(refused, ServiceError::Unauthenticated(_)),
        "{refused}"
    );
}

/// A caller short of root with `permissions`, scoped to the keys it minted.
fn narrow_caller(id: KeyId, permissions: Vec<Permission>) -> Caller {
    Caller {
        id,
        permissions,
        is_root: false,
        scope: Scope::Narrow {
            key_id: id,
            owner: String::new(),
            tenant: None,
        },
    }
}

/// Keys in each bulk batch of the write-turn tests: enough that reading
/// them one by one inside the turn would show.
const BATCH: u64 = 500;

/// A lifecycle over a fresh SQLite store holding a narrow admin key (the
/// caller: `keyward:keys:write` and `deploy:*`, no root), `batches`
/// batches of [`BATCH`] `deploy:read` keys labelled `batch=N`, and one
/// more key, `leaked`, labelled nothing.
async fn seeded(batches: u64) -> (Arc<Lifecycle>, Caller, KeyId, tempfile::TempDir) {
    let (store, dir) = crate::store::open_temporary().await;
    let now = SystemClock.now();
    let new_key = |id: u64, labels: &[(&str, String)]| NewKey {
        id: KeyId::from_u64(id),
        digest: crate::key::KeyDigest::from_bytes([0; 32]),
        settings: KeySettings {
            permissions: vec!["deploy:read".parse().unwrap()],
            labels: Labels::new(
                labels
                    .iter()
                    .map(|(name, value)| ((*name).to_owned(), value.clone()))
                    .collect(),
            )
            .unwrap(),
            ..KeySettings::default()
        },
        // Minted by the caller, so within its scope.
        created_by: Some(KeyId::from_u64(1)),
    };
    let caller = narrow_caller(
        KeyId::from_u64(1),
        vec![
            permission::KEYS_WRITE.parse().unwrap(),
            "deploy:*".parse().unwrap(),
        ],
    );
    let leaked = KeyId::from_u64(2);
    // Key 1 is the caller, holding what the caller says it holds.
    let mut caller_key = new_key(1, &[]);
    caller_key
        .settings
        .permissions
        .clone_from(&caller.permissions);
    let mut keys = vec![caller_key, new_key(2, &[])];
    for batch in 0..batches {
        let first = 1_000 + batch * BATCH;
        keys.extend((first..first + BATCH).map(|id| new_key(id, &[("batch", batch.to_string())])));
    }
    store.insert_keys(keys, Actor::Local, now).await.unwrap();
    let index = Arc::new(Index::from_snapshot(
        store.load_snapshot(now).await.unwrap(),
    ));
    let metrics = Arc::new(Metrics::new(index.clone(), None));
    let lifecycle = Arc::new(Lifecycle::new(store, index, Arc::new(SystemClock), metrics));
    (lifecycle, caller, leaked, dir)
}

fn batch(number: u64) -> BTreeMap<String, String> {
    [("batch".to_owned(), number.to_string())].into()
}

/// A dry run only reads: it answers while another write holds the turn.
#[tokio::test]
async fn a_bulk_dry_run_takes_no_write_turn() {
    let _serial = one_at_a_time().await;
    let (lifecycle, caller, _, _dir) = seeded(1).await;
    let _slow_write = lifecycle.writes.lock().await;
    let labels = batch(0);
    let dry_run = lifecycle.revoke_matching(&caller, &labels, None, "", true);
    let ids = tokio::time::timeout(Duration::from_secs(10), dry_run)
        .await
        .expect("a dry run must not wait for the write turn")
        .unwrap();
    assert_eq!(ids.len(), usize::try_from(BATCH).unwrap());
}

/// Three bulk revocations and then a single revocation queue behind a
/// write in progress. The bulk ones read and check their keys meanwhile,
/// without the turn; and the single one waits for one bulk write at
/// most, never for all three.
#[tokio::test]
async fn a_single_revoke_waits_for_one_bulk_revoke_at_most() {
    let _serial = one_at_a_time().await;
    let (lifecycle, caller, leaked, _dir) = seeded(3).await;
    let store = lifecycle.store.clone();
    let slow_write = lifecycle.writes.lock().await;
    let before = store.operations();
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
    for number in 0..3 {
        let (lifecycle, caller, done) = (lifecycle.clone(), caller.clone(), done.clone());
        tokio::spawn(async move {
            let ids = lifecycle
                .revoke_matching(&caller, &batch(number), None, "batch done", false)
                .await
                .unwrap();
            assert_eq!(ids.len(), usize::try_from(BATCH).unwrap());
            done.send("bulk").unwrap();
        });
    }
    // Each finds its keys, then reads them to check them.
    let read_and_checked = async {
        while store.operations() < before + 6 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_and_checked)
        .await
        .expect("bulk revocations read and check their keys outside the write turn");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let single = {
        let (lifecycle, caller, done) = (lifecycle.clone(), caller.clone(), done.clone());
        tokio::spawn(async move {
            let revocation = lifecycle.revoke(&caller, leaked, "leaked").await.unwrap();
            assert!(!revocation.already_revoked);
            done.send("single").unwrap();
        })
    };
    // Let it join the queue for the turn before the slow write ends.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(slow_write);
    drop(done);
    single.await.unwrap();
    let mut order = Vec::new();
    while let Some(which) = finished.recv().await {
        order.push(which);
    }
    let position = order.iter().position(|which| *which == "single");
    assert!(
        position.is_some_and(|at| at <= 1),
        "the single revoke waited for more than one bulk revoke: {order:?}"
    );
    assert_eq!(order.len(), 4, "{order:?}");
    let audit = store
        .list_audit(&AuditQuery {
            action: Some(crate::model::AuditAction::Revoke.as_str().to_owned()),
            limit: 10_000,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        audit.records.len(),
        usize::try_from(3 * BATCH + 1).unwrap(),
        "one audit record per revoked key"
    );
}

/// The keys are checked against the caller before the turn and again in
/// it: a narrow caller is refused a key it could not have minted, and
/// nothing is revoked.
#[tokio::test]
async fn a_bulk_revoke_matching_a_broader_key_revokes_nothing() {
    let _serial = one_at_a_time().await;
    let (lifecycle, _, _, _dir) = seeded(1).await;
    let narrow = narrow_caller(
        KeyId::from_u64(1),
        vec![
            permission::KEYS_WRITE.parse().unwrap(),
            "deploy:write".parse().unwrap(),
        ],
    );
    for dry_run in [true, false] {
        let refused = lifecycle
            .revoke_matching(&narrow, &batch(0), None, "", dry_run)
            .await
            .unwrap_err();
        assert!(
            matches!(refused, ServiceError::PermissionDenied(_)),
            "{refused}"
        );
    }
    let unrevoked = lifecycle
        .store
        .unrevoked_matching(&batch(0), None, MAX_BULK_REVOKE)
        .await
        .unwrap();
    assert_eq!(unrevoked.len(), usize::try_from(BATCH).unwrap());
}

/// What a test's `tracing` lines were written to.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl tracing_subscriber::fmt::MakeWriter<'_> for Captured {
    type Writer = Self;

    fn make_writer(&self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Every admin write logs one line with its action, actor, target and
/// outcome, refusals and failures included, and never the key it minted; a
/// database failure is counted.
#[tokio::test]
async fn every_admin_write_logs_one_line_whatever_its_outcome() {
    let _serial = one_at_a_time().await;
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // The writes' tasks run on this (current-thread) runtime's one thread.
    let _logging = tracing::subscriber::set_default(subscriber);
    let (lifecycle, caller, leaked, _dir) = seeded(0).await;
    let (actor, unknown) = (caller.id.to_string(), KeyId::from_u64(99));

    let minted = lifecycle
        .mint(
            &caller,
            MintRequest {
                prefix: Prefix::default(),
                roles: Vec::new(),
                permissions: vec!["deploy:read".parse().unwrap()],
                allowed_cidrs: Vec::new(),
                labels: Labels::default(),
                owner: String::new(),
                description: String::new(),
                expiry: Expiry::Never,
                rate_limit: None,
                max_uses: None,
            },
        )
        .await
        .unwrap();
    lifecycle.revoke(&caller, leaked, "test").await.unwrap();
    lifecycle.revoke(&caller, leaked, "again").await.unwrap();
    lifecycle
        .revoke(&caller, unknown, "test")
        .await
        .unwrap_err();
    let broader = NewRole {
        name: "builder".parse().unwrap(),
        description: String::new(),
        permissions: vec!["build:*".parse().unwrap()],
        max_ttl: None,
        rate_limit: None,
    };
    lifecycle.create_role(&caller, broader).await.unwrap_err();
    lifecycle.store.close().await;
    let failed = lifecycle.revoke(&caller, minted.key.id, "test").await;
    assert!(
        matches!(failed, Err(ServiceError::Database(_))),
        "{failed:?}"
    );

    let lines = captured.lines();
    let expected = [
        ("key.mint", minted.key.id.to_string(), "\"ok\""),
        ("key.revoke", leaked.to_string(), "\"ok\""),
        ("key.revoke", leaked.to_string(), "\"already_revoked\""),
        ("key.revoke", unknown.to_string(), "\"not_found\""),
        ("role.create", "builder".to_owned(), "\"permission_denied\""),
        (
            "key.revoke",
            minted.key.id.to_string(),
            "\"database_error\"",
        ),
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for (line, (action, target, outcome)) in lines.iter().zip(expected) {
        for field in [
            format!("action=\"{action}\""),
            format!("actor={actor}"),
            format!("target={target}"),
            format!("outcome={outcome}"),
        ] {
            assert!(line.contains(&field), "{field} not in {line}");
        }
    }
    assert!(lines[5].contains("WARN"), "{}", lines[5]);
    for line in &lines {
        assert!(!line.contains(minted.plaintext.expose()), "{line}");
    }
    let scraped = lifecycle.metrics.encode().unwrap();
    assert!(
        scraped.contains("keyward_database_errors_total{operation=\"admin\"} 1\n"),
        "{scraped}"
    );
}

/// A write waits for its turn; if the caller's role loses a permission the
/// caller was authorized with meanwhile, the write is refused when its turn
/// comes, and changes nothing.
#[tokio::test]
async fn a_write_queued_while_its_callers_role_loses_a_permission_is_refused() {
    let _serial = one_at_a_time().await;
    let (lifecycle, _, _, _dir) = seeded(0).await;
    let now = SystemClock.now();
    let writers = Role {
        name: "writers".parse().unwrap(),
        description: String::new(),
        permissions: [
            "deploy:*".parse().unwrap(),
            permission::KEYS_WRITE.parse().unwrap(),
        ]
        .into(),
        max_ttl: None,
        rate_limit: None,
        builtin: false,
        created_at: now,
        updated_at: now,
    };
    lifecycle
        .store
        .create_role(&writers, Actor::Local)
        .await
        .unwrap();
    let caller_id = KeyId::from_u64(3);
    let caller_key = NewKey {
        id: caller_id,
        digest: crate::key::KeyDigest::from_bytes([0; 32]),
        settings: KeySettings {
            roles: vec![writers.name.clone()],
            ..KeySettings::default()
        },
        created_by: None,
    };
    lifecycle
        .store
        .insert_keys(vec![caller_key], Actor::Local, now)
        .await
        .unwrap();
    lifecycle.resync().await.unwrap();
    let caller = narrow_caller(caller_id, writers.permissions.to_vec());
    let keys_before = lifecycle.index.len();

    let turn = lifecycle.writes.lock().await;
    let queued = {
        let (lifecycle, caller) = (lifecycle.clone(), caller.clone());
        tokio::spawn(async move {
            let request = MintRequest {
                prefix: Prefix::default(),
                roles: Vec::new(),
                permissions: vec!["deploy:read".parse().unwrap()],
                allowed_cidrs: Vec::new(),
                labels: Labels::default(),
                owner: String::new(),
                description: String::new(),
                expiry: Expiry::Never,
                rate_limit: None,
                max_uses: None,
            };
            lifecycle.mint(&caller, request).await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Another replica (or an operator) strips the role meanwhile.
    let stripped = Role {
        permissions: [permission::KEYS_WRITE.parse().unwrap()].into(),
        ..writers
    };
    lifecycle.index.apply([Change::RoleUpserted(stripped)]);
    drop(turn);

    let refused = queued.await.unwrap().unwrap_err();
    assert!(
        matches!(&refused, ServiceError::PermissionDenied(message) if message.contains("no longer holds deploy:*")),
        "{refused}"
    );
    assert_eq!(lifecycle.index.len(), keys_before, "nothing was minted");
}

/// A periodic resync loads without the write turn; a write that commits
/// during the load is named when the snapshot goes in (a replica asks its
/// change feed) and wins over the older snapshot.
#[tokio::test]
async fn a_resync_loses_no_write_made_during_its_load() {
    let (store, _dir) = crate::store::open_temporary().await;
    let clock = Arc::new(SystemClock);
    let new_key = |n: u64| NewKey {
        id: KeyId::from_u64(n),
        digest: crate::key::KeyDigest::from_bytes([1; 32]),
        settings: KeySettings::default(),
        created_by: None,
    };
    let (revoked, minted) = (KeyId::from_u64(1), KeyId::from_u64(2));
    store
        .insert_key(new_key(1), Actor::Local, clock.now())
        .await
        .unwrap();
    let index = Arc::new(Index::from_snapshot(
        store.load_snapshot(clock.now()).await.unwrap(),
    ));
    let metrics = Arc::new(Metrics::new(index.clone(), None));
    let lifecycle = Lifecycle::new(store.clone(), index.clone(), clock.clone(), metrics);

    let prepared = lifecycle.load_for_resync().await.unwrap();
    // Written while the snapshot was loading, each applied to the index as
    // a local write is.
    store
        .revoke_key(revoked, "leaked", Actor::Local, clock.now())
        .await
        .unwrap();
    index.apply([Change::KeyRemoved(revoked)]);
    store
        .insert_key(new_key(2), Actor::Local, clock.now())
        .await
        .unwrap();
    // The revocation was applied here during the load (carried over); the
    // mint only reached the feed (read from the store).
    let applied: Changed = crate::store::feed::Topic::Keys(vec![revoked]).into();
    let received: Changed = crate::store::feed::Topic::Keys(vec![minted]).into();
    let held = lifecycle
        .install_resync(prepared, &applied, async || Ok(received))
        .await
        .unwrap();

    assert_eq!(held, 1);
    assert!(index.get(revoked).is_none(), "the snapshot brought it back");
    assert!(index.get(minted).is_some(), "minted during the load");
}

crate::store::on_both_stores!(
    multi_thread: mints_queued_behind_a_write_commit_in_one_transaction_each_with_its_record,
    a_caller_revoked_while_queued_is_refused_and_the_rest_of_its_group_commits,
    a_queued_mint_whose_caller_went_away_lands_in_store_and_index
);

/// A lifecycle over `store` holding two root admin keys (ids 1 and 2), the
/// callers of the group-commit tests.
async fn two_callers(store: Arc<Store>) -> (Arc<Lifecycle>, [Caller; 2]) {
    let now = SystemClock.now();
    let caller = |n: u64| Caller {
        id: KeyId::from_u64(n),
        permissions: vec!["keyward:*".parse().unwrap()],
        is_root: true,
        scope: Scope::Unrestricted,
    };
    let callers = [caller(1), caller(2)];
    let keys = callers
        .iter()
        .map(|caller| NewKey {
            id: caller.id,
            digest: crate::key::KeyDigest::from_bytes([0; 32]),
            settings: KeySettings {
                permissions: caller.permissions.clone(),
                ..KeySettings::default()
            },
            created_by: None,
        })
        .collect();
    store.insert_keys(keys, Actor::Local, now).await.unwrap();
    let index = Arc::new(Index::from_snapshot(
        store.load_snapshot(now).await.unwrap(),
    ));
    let metrics = Arc::new(Metrics::new(index.clone(), None));
    let lifecycle = Lifecycle::new(store, index, Arc::new(SystemClock), metrics);
    (Arc::new(lifecycle), callers)
}

fn labelled_mint(n: usize) -> MintRequest {
    MintRequest {
        prefix: Prefix::default(),
        roles: Vec::new(),
        permissions: vec!["deploy:read".parse().unwrap()],
        allowed_cidrs: Vec::new(),
        labels: Labels::new([("n".to_owned(), n.to_string())].into()).unwrap(),
        owner: String::new(),
        description: String::new(),
        expiry: Expiry::Never,
        rate_limit: None,
        max_uses: None,
    }
}

/// Starts `count` mints, alternately by each of `callers`, and returns
/// once all of them wait in the queue (the write turn is held).
async fn queue_mints(
    lifecycle: &Arc<Lifecycle>,
    callers: &[Caller],
    count: usize,
) -> Vec<tokio::task::JoinHandle<Result<Minted, ServiceError>>> {
    let mints = (0..count)
        .map(|n| {
            let (lifecycle, caller) = (lifecycle.clone(), callers[n % callers.len()].clone());
            tokio::spawn(async move { lifecycle.mint(&caller, labelled_mint(n)).await })
        })
        .collect();
    let queued = async {
        while lifecycle.mints.len() < count {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), queued)
        .await
        .expect("the mints queue for the write turn");
    mints
}

/// What a group's transaction costs in store operations: the insert, and
/// on PostgreSQL one liveness check per distinct caller.
fn group_operations(store: &Store, callers: u64) -> u64 {
    1 + if store.has_change_feed() { callers } else { 0 }
}

/// Forty mints queued behind a write in progress are written in one
/// transaction when it ends; each key has its own audit record, naming its
/// caller, and validates from the index with its own plaintext.
async fn mints_queued_behind_a_write_commit_in_one_transaction_each_with_its_record(
    store: Arc<Store>,
) {
    let _serial = one_at_a_time().await;
    let (lifecycle, callers) = two_callers(store.clone()).await;
    let turn = lifecycle.writes.lock().await;
    let mints = queue_mints(&lifecycle, &callers, 40).await;
    let before = store.operations();
    drop(turn);
    let mut minted = Vec::new();
    for mint in mints {
        minted.push(mint.await.unwrap().unwrap());
    }
    assert_eq!(
        store.operations() - before,
        group_operations(&store, 2),
        "one transaction for the group"
    );

    let audit = store
        .list_audit(&AuditQuery {
            action: Some(crate::model::AuditAction::Mint.as_str().to_owned()),
            limit: 1_000,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let mut ids = std::collections::HashSet::new();
    for (n, mint) in minted.iter().enumerate() {
        let id = mint.key.id;
        assert!(ids.insert(id), "ids are distinct");
        assert_eq!(mint.key.settings.labels, labelled_mint(n).labels);
        let records: Vec<_> = audit
            .records
            .iter()
            .filter(|record| record.target.as_deref() == Some(&id.to_string()))
            .collect();
        assert_eq!(records.len(), 1, "one audit record for {id}");
        assert_eq!(records[0].actor, Some(callers[n % 2].id));
        let presented = crate::key::ParsedKey::parse(mint.plaintext.expose()).unwrap();
        let indexed = lifecycle.index.get(id).expect("in the index");
        assert!(indexed.digest.ct_eq(&presented.digest()));
        assert_eq!(
            store.get_key(id).await.unwrap().settings.labels,
            mint.key.settings.labels
        );
    }
}

/// A caller revoked while its mints wait (here, on another replica: the
/// index hears of it, and on PostgreSQL the database says so) is refused
/// them; the other caller's mints in the same group commit.
async fn a_caller_revoked_while_queued_is_refused_and_the_rest_of_its_group_commits(
    store: Arc<Store>,
) {
    let _serial = one_at_a_time().await;
    let (lifecycle, [revoked, other]) = two_callers(store.clone()).await;
    let keys_before = store
        .load_snapshot(SystemClock.now())
        .await
        .unwrap()
        .keys
        .len();
    let turn = lifecycle.writes.lock().await;
    let mints = queue_mints(&lifecycle, &[revoked.clone(), other.clone()], 6).await;
    store
        .revoke_key(revoked.id, "leaked", Actor::Local, SystemClock.now())
        .await
        .unwrap();
    lifecycle.index.apply([Change::KeyRemoved(revoked.id)]);
    let before = store.operations();
    drop(turn);

    for (n, mint) in mints.into_iter().enumerate() {
        let outcome = mint.await.unwrap();
        if n % 2 == 0 {
            let refused = outcome.unwrap_err();
            assert!(
                matches!(refused, ServiceError::Unauthenticated(_)),
                "{refused}"
            );
        } else {
            let minted = outcome.unwrap();
            assert_eq!(minted.key.created_by, Some(other.id));
            assert!(lifecycle.index.get(minted.key.id).is_some());
        }
    }
    // The index already refuses the revoked caller: only the other one's
    // key is asked about on PostgreSQL.
    assert_eq!(store.operations() - before, group_operations(&store, 1));
    let keys_after = store
        .load_snapshot(SystemClock.now())
        .await
        .unwrap()
        .keys
        .len();
    // The revoked caller is no longer live; the other's three keys are.
    assert_eq!(keys_after, keys_before - 1 + 3);
}

/// A mint whose RPC is cancelled once queued (a client deadline, a dropped
/// connection) still commits, to the store and to the index alike: its
/// group is written by a task of its own.
async fn a_queued_mint_whose_caller_went_away_lands_in_store_and_index(store: Arc<Store>) {
    let _serial = one_at_a_time().await;
    let (lifecycle, callers) = two_callers(store.clone()).await;
    let turn = lifecycle.writes.lock().await;
    let mut mints = queue_mints(&lifecycle, &callers[..1], 1).await;
    let cancelled = mints.pop().unwrap();
    cancelled.abort();
    assert!(cancelled.await.unwrap_err().is_cancelled());
    drop(turn);
    // The group's task has the turn once the queue is drained; the turn is
    // ours again once it has committed.
    while lifecycle.mints.len() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _turn = lifecycle.writes.lock().await;

    let snapshot = store.load_snapshot(SystemClock.now()).await.unwrap();
    assert_eq!(snapshot.keys.len(), 3, "the two callers and the new key");
    assert_eq!(lifecycle.index.len(), 3);
    for id in snapshot.keys.keys() {
        assert!(lifecycle.index.get(*id).is_some());
    }
}

//! The in-process validate path: parse, index lookup, digest, constant-time
//! compare, state check, rate limit and authorization, as `Validator::check`
//! runs it for every Validate request. No gRPC, no database.
//!
//! Target (see BENCHMARKS.md): median ≤ 2 µs for a valid key. The failure
//! cases are here to show that an unknown id, a wrong secret, a revoked key
//! and an expired key take the same time (an unknown id is compared against
//! a dummy digest), and that a malformed key is refused before any lookup.
//!
//! Each case asserts its `Outcome` once before it is timed, so the bench
//! cannot silently measure the wrong path.

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use keyward::{
    clock::{Clock, SystemClock, Timestamp},
    index::Index,
    key::{FormatError, MintedKey, Prefix},
    metrics::{Metrics, Validated},
    model::{Change, IndexedKey, KeyRecord, KeySettings, Role},
    permission::Permission,
    rate_limit::RateLimit,
    validate::{Checks, InvalidReason, Outcome, Required, Validator},
};

/// Keys in the large index: enough that the table and the entries it points
/// to do not stay in cache when every iteration presents a different key.
const LARGE_INDEX_KEYS: usize = 100_000;

/// The permission every case asks for; granted through `deploy:*`.
const REQUIRED: &str = "deploy:prod:write";

fn mint() -> MintedKey {
    MintedKey::generate(&Prefix::default()).expect("OS random source")
}

fn deployer() -> Role {
    Role {
        name: "deployer".parse().unwrap(),
        description: String::new(),
        permissions: ["deploy:*", "build:read", "artifacts:read"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect(),
        max_ttl: None,
        rate_limit: None,
        builtin: false,
        created_at: Timestamp::from_millis(0),
        updated_at: Timestamp::from_millis(0),
    }
}

fn record(minted: &MintedKey) -> KeyRecord {
    let settings = KeySettings {
        roles: vec!["deployer".parse().unwrap()],
        owner: "ci@example.com".to_owned(),
        ..KeySettings::default()
    };
    KeyRecord::new(minted.id, settings, Timestamp::from_millis(0), None)
}

/// A validator over an index holding the `deployer` role and `keys`, on the
/// wall clock the server uses.
fn validator(keys: impl IntoIterator<Item = IndexedKey>) -> Validator {
    let index = Index::default();
    index.apply(
        std::iter::once(Change::RoleUpserted(deployer()))
            .chain(keys.into_iter().map(|k| Change::KeyUpserted(Arc::new(k)))),
    );
    Validator::new(Arc::new(index), Arc::new(SystemClock))
}

/// An index of one key whose record is changed by `adjust` and whose stored
/// digest is `digest`, and the plaintext of that key.
fn one_key(
    adjust: impl FnOnce(&mut KeyRecord),
    digest: impl FnOnce(&MintedKey) -> keyward::key::KeyDigest,
) -> (Validator, String) {
    let minted = mint();
    let mut record = record(&minted);
    adjust(&mut record);
    let entry = IndexedKey::new(&record, digest(&minted));
    (validator([entry]), minted.plaintext.expose().to_owned())
}

/// Times one presented key, after checking it yields the expected outcome.
fn case(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    validator: &Validator,
    presented: &str,
    required: &[Permission],
    expect: impl Fn(&Outcome) -> bool,
) {
    let outcome = validator.check(presented, checks(required));
    assert!(expect(&outcome), "{name}: unexpected {outcome:?}");
    group.bench_function(name, |b| {
        b.iter(|| validator.check(black_box(presented), checks(black_box(required))));
    });
}

/// What the data plane asks: the permissions, no client address.
fn checks(required: &[Permission]) -> Checks<'_> {
    Checks {
        required: Required::parsed(required),
        client_ip: None,
        skip_rate_limit: false,
    }
}

fn is_valid(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Valid(_))
}

fn bench_validate(c: &mut Criterion) {
    let required: Vec<Permission> = vec![REQUIRED.parse().unwrap()];
    let mut group = c.benchmark_group("validate");

    // 1. A live key with the permission, in an index of one key.
    let (live, live_key) = one_key(|_| {}, |m| m.digest);
    case(
        &mut group,
        "valid/1_key",
        &live,
        &live_key,
        &required,
        is_valid,
    );

    // 1b. The same key with a rate limit attached that never refuses: the
    //     cost of the GCRA check on the hot path.
    let never_refusing = RateLimit::new(u32::MAX, Duration::from_secs(1), u32::MAX).unwrap();
    let (limited, limited_key) = one_key(
        |r| r.settings.rate_limit = Some(never_refusing),
        |m| m.digest,
    );
    case(
        &mut group,
        "valid/1_key_rate_limited",
        &limited,
        &limited_key,
        &required,
        is_valid,
    );

    // 1c. The live key again, counted as the service counts each Validate:
    //     a clock read before, then the outcome's counter and the latency
    //     histogram (`keyward_validate_total`, `..._duration_seconds`). The
    //     difference from 1. is what metrics add to the hot path.
    let metrics = Metrics::new(Arc::new(Index::default()), None);
    group.bench_function("valid/1_key_counted", |b| {
        b.iter(|| {
            let started = Instant::now();
            let outcome = live.check(black_box(&live_key), checks(black_box(&required)));
            metrics.validated(Validated::of(&outcome), started);
            outcome
        });
    });

    // 2. The same against 100,000 keys. Every iteration presents the next
    //    key in turn, so lookups and entries come from memory, not from a
    //    cache warmed by the previous iteration.
    let minted: Vec<MintedKey> = (0..LARGE_INDEX_KEYS).map(|_| mint()).collect();
    let large = validator(minted.iter().map(|m| IndexedKey::new(&record(m), m.digest)));
    let presented: Vec<String> = minted
        .iter()
        .map(|m| m.plaintext.expose().to_owned())
        .collect();
    drop(minted);
    assert!(
        presented
            .iter()
            .all(|key| is_valid(&large.check(key, checks(&required)))),
        "valid/100k_keys: every key must be valid"
    );
    group.bench_function("valid/100k_keys", |b| {
        let mut next = 0;
        b.iter(|| {
            let key = &presented[next];
            next += 1;
            if next == presented.len() {
                next = 0;
            }
            large.check(black_box(key), checks(black_box(&required)))
        });
    });
    drop(presented);
    drop(large);

    // 3. Failures, each against an index of one key. All must cost what a
    //    digest and a compare cost, whatever the reason.

    // A well-formed key whose id is not in the index: compared against the
    // dummy digest.
    let stranger = mint();
    case(
        &mut group,
        "unknown_id",
        &live,
        stranger.plaintext.expose(),
        &required,
        |o| matches!(o, Outcome::Invalid(InvalidReason::UnknownKey(_))),
    );

    // The right id with another secret: the index holds this id under the
    // digest of another key, so the presented secret does not match.
    let (wrong, wrong_key) = one_key(|_| {}, |_| mint().digest);
    case(
        &mut group,
        "wrong_secret",
        &wrong,
        &wrong_key,
        &required,
        |o| matches!(o, Outcome::Invalid(InvalidReason::WrongSecret(_))),
    );

    // The right secret, but the key is revoked (still in the index, as
    // during a rotation's grace period) or expired an hour ago.
    let hour_ago = Timestamp::from_millis(SystemClock.now().as_millis() - 3_600_000);
    let (revoked, revoked_key) = one_key(|r| r.revoked_at = Some(hour_ago), |m| m.digest);
    case(
        &mut group,
        "revoked",
        &revoked,
        &revoked_key,
        &required,
        |o| matches!(o, Outcome::Invalid(InvalidReason::Revoked(_))),
    );
    let (expired, expired_key) = one_key(|r| r.settings.expires_at = Some(hour_ago), |m| m.digest);
    case(
        &mut group,
        "expired",
        &expired,
        &expired_key,
        &required,
        |o| matches!(o, Outcome::Invalid(InvalidReason::Expired(_))),
    );

    // 4. A typo in the live key's secret: the checksum refuses it before any
    //    lookup or digest. The changed character is mid-word, so the word
    //    still decodes and only the checksum is wrong (asserted below).
    let typo_at = "kw_".len() + 11 + 5;
    let mut typo = live_key.clone().into_bytes();
    typo[typo_at] = if typo[typo_at] == b'0' { b'1' } else { b'0' };
    let typo = String::from_utf8(typo).unwrap();
    case(&mut group, "malformed", &live, &typo, &required, |o| {
        matches!(
            o,
            Outcome::Invalid(InvalidReason::Malformed(FormatError::BadChecksum))
        )
    });

    group.finish();
}

criterion_group! {
    name = benches;
    // About 5 s per case, so the whole run stays under a minute after
    // compiling; a case takes 0.1–1 µs, so each still runs millions of times.
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = bench_validate
}
criterion_main!(benches);

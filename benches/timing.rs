//! Timing side channels, measured the dudect way (Reparaz, Balasch and
//! Verbauwhede, "Dude, is my code constant time?", 2017): security review
//! issue 12 item 2. Results and their reading are in SECURITY.md.
//!
//! Each experiment times one operation on inputs of two or more classes. The
//! class of every sample is drawn at random (a splitmix64 seeded from the OS
//! CSPRNG) and its input prepared outside the timed region, so drift and
//! noise on this shared machine hit every class alike. The samples of each
//! pair of classes are then compared with Welch's t-test, uncropped and
//! cropped at dudect's 100 percentiles (`1 - 0.5^(10 (i+1) / 100)` of the
//! pair's pooled samples); the largest |t| is reported. |t| > 4.5 means the
//! classes' timing differs with overwhelming confidence.
//!
//! 1. **The secret compare**: `KeyDigest::ct_eq` of one stored digest with
//!    presented digests sharing its first 31 bytes, none of them, or all 32.
//!    A byte loop that returns at the first difference is measured the same
//!    way as a positive control: it must show the leak the harness looks for.
//! 2. **The failure classes** a Validate caller sees as one `INVALID`:
//!    unknown id, wrong secret, revoked, expired and exhausted (a capped key
//!    whose last use is spent, which the pipeline drops from the index), with
//!    `Validator::check` on one real in-memory `Index`: with one key per
//!    class (every access hits the cache), with 16 per class, and with
//!    100,000 per class and a random one per sample (entries come from
//!    memory). A second pool of unknown ids is the A/A control.
//! 3. **Exhausted while still indexed**: a capped key whose uses another
//!    replica spent, before the change reaches this one. Reaching this path
//!    takes the key's right secret; it is timed with `Validator::validate`
//!    and no store (so without the database round trip that decides it).
//! 4. **Network jitter**: Validate over loopback gRPC against the real server
//!    with 100,000 keys seeded, unknown id and wrong secret (a random seeded
//!    id) interleaved the same way.
//!
//! Also checks the secret-scanner regex documented in SECURITY.md against
//! keys minted by the library, and the checksum test a scanner can add.
//!
//! Run: `cargo bench --bench timing` (10^6 samples per in-process experiment,
//! 100,000 gRPC calls); `cargo bench --bench timing -- --quick` for a tenth of
//! that; `KEYWARD_TIMING_SAMPLES=N` and `KEYWARD_TIMING_CALLS=N` set either;
//! `cargo bench --bench timing -- classes` runs only the named experiments
//! (`compare`, `classes`, `exhausted`, `network`).

mod common;

use std::{
    fmt::Write as _,
    hint::black_box,
    pin::pin,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use keyward::{
    clock::{Clock, SystemClock, Timestamp},
    index::Index,
    key::{KEY_REGEX, KeyDigest, KeyId, MintedKey, Prefix},
    model::{Actor, Change, IndexedKey, KeyRecord, KeySettings, Role},
    pb::{self, key_service_client::KeyServiceClient},
    permission::Permission,
    store::NewKey,
    testing::{Backend, authed, forge},
    validate::{Checks, InvalidReason, Outcome, Required, Validator},
};

/// In-process samples per experiment, unless `--quick` or overridden.
const SAMPLES: usize = 1_000_000;
/// gRPC calls in the network experiment, unless `--quick` or overridden.
const CALLS: usize = 100_000;
/// Keys per class in the large index.
const KEYS_PER_CLASS: usize = 100_000;
/// Digest compares per timed sample: one compare takes a few nanoseconds,
/// less than reading the clock costs, so each sample times this many.
const COMPARES_PER_SAMPLE: usize = 32;
/// dudect's threshold: above it, the classes' timing differs.
const T_THRESHOLD: f64 = 4.5;
/// A crop is tested only when each class keeps at least this many samples.
const MIN_CROPPED: usize = 1_000;
/// The permission every validation asks for; granted through `deploy:*`.
const REQUIRED: &str = "deploy:prod:write";

fn main() {
    if common::only_listing() {
        return;
    }
    let quick = std::env::args().any(|arg| arg == "--quick");
    let samples = count(
        "KEYWARD_TIMING_SAMPLES",
        if quick { SAMPLES / 10 } else { SAMPLES },
    );
    let calls = count(
        "KEYWARD_TIMING_CALLS",
        if quick { CALLS / 10 } else { CALLS },
    );
    let keys_per_class = if quick {
        KEYS_PER_CLASS / 10
    } else {
        KEYS_PER_CLASS
    };
    // Experiments named on the command line (`compare`, `classes`,
    // `exhausted`, `network`), or all of them.
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let run = |name: &str| named.is_empty() || named.iter().any(|n| n == name);
    let mut rng = Rng::from_os();

    scanner_regex(&mut rng);
    println!(
        "Welch's t, max |t| over the uncropped samples and dudect's 100 crops (threshold {T_THRESHOLD}); medians per call."
    );
    println!();
    if run("compare") {
        secret_compare(&mut rng, samples);
    }
    if run("classes") {
        failure_classes(&mut rng, samples, 1);
        failure_classes(&mut rng, samples, 16);
        failure_classes(&mut rng, samples, keys_per_class);
    }
    if run("exhausted") {
        exhausted_in_index(&mut rng, samples);
    }
    if run("network") {
        network(&mut rng, calls, keys_per_class);
    }
}

/// A positive count from `name`, else `default`.
fn count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map_or(default, |raw| match raw.parse() {
            Ok(n) if n > 0 => n,
            _ => panic!("{name} must be a positive integer, got {raw:?}"),
        })
}

// ---------------------------------------------------------------------------
// 1. The secret compare

fn secret_compare(rng: &mut Rng, samples: usize) {
    let mut stored = [0; 32];
    rng.fill(&mut stored);
    let names = ["shares 31-byte prefix", "shares no byte", "equal"];
    // presented = stored ^ ((random & MASK[class]) | FORCE[class]): the same
    // instructions and random draws for every class, so the preparation
    // right before the timed region cannot differ by class. Class 0 differs
    // in the last byte only, class 1 in the first byte (and at random in the
    // rest), class 2 nowhere.
    let mut mask = [[0u8; 32]; 3];
    let mut force = [[0u8; 32]; 3];
    mask[0][31] = 0xff;
    force[0][31] = 1;
    mask[1] = [0xff; 32];
    force[1][0] = 1;
    let prepare = |class: usize, rng: &mut Rng, out: &mut [[u8; 32]; COMPARES_PER_SAMPLE]| {
        for presented in out.iter_mut() {
            let mut random = [0; 32];
            rng.fill(&mut random);
            for (byte, ((s, r), (m, f))) in presented.iter_mut().zip(
                stored
                    .iter()
                    .zip(&random)
                    .zip(mask[class].iter().zip(&force[class])),
            ) {
                *byte = s ^ ((r & m) | f);
            }
        }
    };
    let constant_time = {
        let stored = KeyDigest::from_bytes(stored);
        measure_compare(rng, samples, prepare, |presented| {
            stored.ct_eq(&KeyDigest::from_bytes(*presented))
        })
    };
    let early_exit = measure_compare(rng, samples, prepare, |presented| {
        early_exit_eq(&stored, presented)
    });
    println!(
        "## Secret compare: one stored digest, {COMPARES_PER_SAMPLE} compares per sample, {samples} samples"
    );
    println!();
    report(
        "`KeyDigest::ct_eq` (subtle)",
        &names,
        &constant_time,
        COMPARES_PER_SAMPLE,
        &[(0, 1), (0, 2), (1, 2)],
    );
    report(
        "control: a byte loop that returns at the first difference",
        &names,
        &early_exit,
        COMPARES_PER_SAMPLE,
        &[(0, 1)],
    );
}

/// Times `COMPARES_PER_SAMPLE` calls of `compare` per sample.
fn measure_compare(
    rng: &mut Rng,
    samples: usize,
    prepare: impl Fn(usize, &mut Rng, &mut [[u8; 32]; COMPARES_PER_SAMPLE]),
    compare: impl Fn(&[u8; 32]) -> bool,
) -> Vec<Vec<u64>> {
    let mut batch = [[0; 32]; COMPARES_PER_SAMPLE];
    let mut out = buffers(3, samples / 2);
    for i in 0..warmup(samples) + samples {
        let class = rng.below(3);
        prepare(class, rng, &mut batch);
        let started = Instant::now();
        for presented in &batch {
            black_box(compare(black_box(presented)));
        }
        let elapsed = started.elapsed();
        if i >= warmup(samples) {
            out[class].push(nanos(elapsed));
        }
    }
    out
}

/// The classic leak: time grows with the length of the common prefix.
fn early_exit_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).all(|(x, y)| x == y)
}

// ---------------------------------------------------------------------------
// 2. The failure classes

/// The five failure classes, and a second pool of unknown ids: the A/A
/// control, whose difference from the first is the harness's noise floor.
const CLASSES: [&str; 6] = [
    "unknown id",
    "wrong secret",
    "revoked",
    "expired",
    "exhausted",
    "unknown id (control)",
];

/// The control pair, then every pair of the five failure classes.
const ALL_PAIRS: [(usize, usize); 11] = [
    (0, 5),
    (0, 1),
    (0, 2),
    (0, 3),
    (0, 4),
    (1, 2),
    (1, 3),
    (1, 4),
    (2, 3),
    (2, 4),
    (3, 4),
];

fn failure_classes(rng: &mut Rng, samples: usize, per_class: usize) {
    let hour_ago = Timestamp::from_millis(SystemClock.now().as_millis() - 3_600_000);
    let index = Arc::new(Index::default());
    index.apply([Change::RoleUpserted(deployer())]);
    let validator = Validator::new(index.clone(), Arc::new(SystemClock));
    let required: Vec<Permission> = vec![REQUIRED.parse().unwrap()];

    let mut presented: [Vec<String>; 6] = Default::default();
    for _ in 0..per_class {
        // Unknown: a well-formed key that was never indexed.
        presented[0].push(mint().plaintext.expose().to_owned());
        presented[5].push(mint().plaintext.expose().to_owned());
        // Wrong secret: an indexed id with another key's secret.
        let live = insert(&index, mint(), |_| {});
        presented[1].push(forge(live.id, mint().plaintext.expose()));
        // Revoked (still indexed, as in a rotation's grace period) and
        // expired (not yet swept), presented with their right secrets.
        let revoked = insert(&index, mint(), |r| r.revoked_at = Some(hour_ago));
        presented[2].push(revoked.plaintext.expose().to_owned());
        let expired = insert(&index, mint(), |r| r.settings.expires_at = Some(hour_ago));
        presented[3].push(expired.plaintext.expose().to_owned());
        // Exhausted: a capped key spent through the pipeline's own path (a
        // validator without a store has no use to give), which drops it
        // from the index, as the last use does and as a resync would.
        let capped = insert(&index, mint(), |r| r.settings.max_uses = Some(1));
        let text = capped.plaintext.expose().to_owned();
        let outcome =
            poll_once(validator.validate(&text, checks(&required))).expect("no store, no error");
        assert!(matches!(
            outcome,
            Outcome::Invalid(InvalidReason::UsesExhausted(_))
        ));
        presented[4].push(text);
    }
    let expected: [fn(&InvalidReason) -> bool; 6] = [
        |r| matches!(r, InvalidReason::UnknownKey(_)),
        |r| matches!(r, InvalidReason::WrongSecret(_)),
        |r| matches!(r, InvalidReason::Revoked(_)),
        |r| matches!(r, InvalidReason::Expired(_)),
        // What an exhausted key is once dropped: not in the index.
        |r| matches!(r, InvalidReason::UnknownKey(_)),
        |r| matches!(r, InvalidReason::UnknownKey(_)),
    ];
    for (class, keys) in presented.iter().enumerate() {
        for key in keys {
            match validator.check(key, checks(&required)) {
                Outcome::Invalid(reason) if expected[class](&reason) => {}
                other => panic!("{}: unexpected {other:?}", CLASSES[class]),
            }
        }
    }

    let mut out = buffers(CLASSES.len(), samples / 4);
    for i in 0..warmup(samples) + samples {
        let class = rng.below(CLASSES.len());
        let key = presented[class][rng.below(per_class)].as_str();
        let started = Instant::now();
        black_box(validator.check(black_box(key), checks(black_box(&required))));
        let elapsed = started.elapsed();
        if i >= warmup(samples) {
            out[class].push(nanos(elapsed));
        }
    }
    println!(
        "## Failure classes: `Validator::check`, index of {} keys ({}), {samples} samples",
        index.len(),
        match per_class {
            1 => "one key per class, the same key each time: all in cache".to_owned(),
            2..1_000 => format!("{per_class} per class, a random one per sample: in cache"),
            _ => format!("{per_class} per class, a random one per sample: entries from memory"),
        }
    );
    println!();
    report("failure classes", &CLASSES, &out, 1, &ALL_PAIRS);
}

// ---------------------------------------------------------------------------
// 3. Exhausted while still indexed

fn exhausted_in_index(rng: &mut Rng, samples: usize) {
    let index = Arc::new(Index::default());
    index.apply([Change::RoleUpserted(deployer())]);
    let validator = Validator::new(index.clone(), Arc::new(SystemClock));
    let required: Vec<Permission> = vec![REQUIRED.parse().unwrap()];
    let live = insert(&index, mint(), |_| {});
    let wrong = forge(live.id, mint().plaintext.expose());
    let minted = mint();
    let mut record = record(&minted);
    record.settings.max_uses = Some(1);
    let capped = Arc::new(IndexedKey::new(&record, minted.digest));
    let capped_text = minted.plaintext.expose().to_owned();

    let names = ["wrong secret", "exhausted, still indexed"];
    let mut out = buffers(2, samples / 2);
    for i in 0..warmup(samples) + samples {
        let class = rng.below(2);
        let key = if class == 0 {
            wrong.as_str()
        } else {
            // Put it back: the call drops it from the index, as the store
            // answering "no use left" does.
            index.apply([Change::KeyUpserted(capped.clone())]);
            capped_text.as_str()
        };
        let started = Instant::now();
        let outcome = poll_once(validator.validate(black_box(key), checks(black_box(&required))));
        let elapsed = started.elapsed();
        assert!(matches!(
            outcome,
            Ok(Outcome::Invalid(
                InvalidReason::WrongSecret(_) | InvalidReason::UsesExhausted(_)
            ))
        ));
        if i >= warmup(samples) {
            out[class].push(nanos(elapsed));
        }
    }
    println!(
        "## Exhausted while still indexed: `Validator::validate` without a store (no database round trip), one key each, {samples} samples"
    );
    println!();
    report("right secret, uses spent", &names, &out, 1, &[(0, 1)]);
}

/// Polls a future that never waits (validation without a store) to its end.
fn poll_once<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("validation without a store must not wait"),
    }
}

// ---------------------------------------------------------------------------
// 4. Network jitter

fn network(rng: &mut Rng, calls: usize, seeded: usize) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let (out, totals) = runtime.block_on(async {
        let server = common::start(Backend::Sqlite).await;
        // An index the size of the in-process one, read in at start.
        let ids: Vec<KeyId> = (0..seeded).map(|_| mint().id).collect();
        let keys = ids
            .iter()
            .map(|&id| NewKey {
                id,
                digest: mint().digest,
                settings: KeySettings::default(),
                created_by: None,
            })
            .collect();
        server
            .store
            .insert_keys(keys, Actor::Local, server.clock.now())
            .await
            .expect("keys seeded");
        let mut server = server.restart().await;
        let channel = server.channel().await;
        let (_, caller) = common::mint(&channel, &server.admin_key, None).await;
        let presented: [Vec<String>; 2] = [
            (0..seeded)
                .map(|_| mint().plaintext.expose().to_owned())
                .collect(),
            ids.iter()
                .map(|&id| forge(id, mint().plaintext.expose()))
                .collect(),
        ];
        let mut client = KeyServiceClient::new(channel);
        let mut out = buffers(2, calls / 2);
        let mut totals = Vec::with_capacity(calls);
        for i in 0..warmup(calls) + calls {
            let class = rng.below(2);
            let key = presented[class][rng.below(seeded)].clone();
            let request = authed(
                &caller,
                pb::ValidateRequest {
                    key,
                    ..Default::default()
                },
            );
            let started = Instant::now();
            let response = client.validate(request).await.expect("Validate answers");
            let elapsed = started.elapsed();
            assert_eq!(response.into_inner().denial, i32::from(pb::Denial::Invalid));
            if i >= warmup(calls) {
                out[class].push(nanos(elapsed));
                totals.push(nanos(elapsed));
            }
        }
        server.stop().await;
        (out, totals)
    });
    let mut sorted = totals;
    sorted.sort_unstable();
    let at = |p: f64| us(quantile(&sorted, p));
    println!(
        "## Network: Validate over loopback gRPC, index of {seeded} keys (one HTTP/2 connection, sequential calls, client and server on the same 2 cores), {calls} calls"
    );
    println!();
    println!("| latency | p1 | p25 | median | p75 | p99 | IQR |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| per call, µs | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        at(0.01),
        at(0.25),
        at(0.5),
        at(0.75),
        at(0.99),
        at(0.75) - at(0.25)
    );
    println!();
    report(
        "end to end over loopback",
        &["unknown id", "wrong secret"],
        &out,
        1,
        &[(0, 1)],
    );
}

// ---------------------------------------------------------------------------
// The secret-scanner regex

/// Keys minted with random prefixes of every length must match the
/// documented regex, be found whole inside text, and pass the checksum test
/// SECURITY.md describes; near misses must not match.
fn scanner_regex(rng: &mut Rng) {
    const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    const LOWER_DIGITS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let regex = regex::Regex::new(KEY_REGEX).expect("KEY_REGEX compiles");
    let minted = 10_000;
    for i in 0..minted {
        let mut prefix = String::new();
        prefix.push(char::from(LOWER[rng.below(LOWER.len())]));
        for _ in 0..i % 16 {
            prefix.push(char::from(LOWER_DIGITS[rng.below(LOWER_DIGITS.len())]));
        }
        let key = MintedKey::generate(&prefix.parse::<Prefix>().unwrap()).unwrap();
        let text = key.plaintext.expose();
        let haystack = format!("export API_TOKEN=\"{text}\" # keep out of git\n");
        let found = regex.find(&haystack).map(|m| m.as_str());
        assert_eq!(found, Some(text), "the regex must find {prefix}_… whole");
        assert!(checksum_matches(text), "checksum test refuses {prefix}_…");
        let mut typo = text.as_bytes().to_vec();
        let at = prefix.len() + 1 + rng.below(50);
        typo[at] = if typo[at] == b'A' { b'B' } else { b'A' };
        assert!(!checksum_matches(std::str::from_utf8(&typo).unwrap()));
    }
    let sample = MintedKey::generate(&Prefix::default()).unwrap();
    let text = sample.plaintext.expose();
    let near_misses = [
        format!("Kw{}", &text[2..]),
        text[..text.len() - 1].to_owned(),
        format!("{text}a"),
        format!("kw-{}", &text[3..]),
        format!("abcdefghijklmnopq{}", &text[2..]),
        format!("9{text}"),
    ];
    for miss in &near_misses {
        assert!(!regex.is_match(miss), "{miss} must not match");
    }
    println!(
        "Scanner regex `{KEY_REGEX}`: {minted} minted keys (prefixes of 1 to 16 characters) found whole and checksum-verified; {} near misses refused; {minted} one-character typos refused by the checksum test.",
        near_misses.len()
    );
    println!();
}

/// The checksum test for scanners, written from SECURITY.md: the last 6
/// characters, read as a base62 number (`0-9A-Za-z`), are the CRC-32 (IEEE)
/// of everything before them.
fn checksum_matches(key: &str) -> bool {
    let (checked, checksum) = key.split_at(key.len() - 6);
    let value = checksum.bytes().try_fold(0u64, |acc, c| {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'A'..=b'Z' => c - b'A' + 10,
            b'a'..=b'z' => c - b'a' + 36,
            _ => return None,
        };
        Some(acc * 62 + u64::from(digit))
    });
    value == Some(u64::from(crc32fast::hash(checked.as_bytes())))
}

// ---------------------------------------------------------------------------
// Statistics

/// Samples of one class, sorted, with prefix sums for any crop.
struct Sorted {
    values: Vec<u64>,
    sums: Vec<u128>,
    squares: Vec<u128>,
}

impl Sorted {
    fn new(mut values: Vec<u64>) -> Self {
        values.sort_unstable();
        let mut sums = Vec::with_capacity(values.len() + 1);
        let mut squares = Vec::with_capacity(values.len() + 1);
        let (mut sum, mut square) = (0u128, 0u128);
        sums.push(0);
        squares.push(0);
        for &v in &values {
            sum += u128::from(v);
            square += u128::from(v) * u128::from(v);
            sums.push(sum);
            squares.push(square);
        }
        Self {
            values,
            sums,
            squares,
        }
    }

    /// (count, mean, variance) of the samples at or below `limit`.
    fn moments(&self, limit: u64) -> (usize, f64, f64) {
        let n = self.values.partition_point(|&v| v <= limit);
        if n < 2 {
            return (n, 0.0, 0.0);
        }
        let (sum, square) = (self.sums[n], self.squares[n]);
        let count = n as u128;
        // Exact in integers: n Σx² − (Σx)² ≥ 0.
        let spread = count * square - sum * sum;
        let mean = sum as f64 / n as f64;
        let variance = spread as f64 / (n as f64 * (n - 1) as f64);
        (n, mean, variance)
    }
}

/// What one pair of classes showed.
struct Pair {
    max_t: f64,
    /// `None`: uncropped; else the percentile of the crop.
    crop: Option<f64>,
    uncropped_t: f64,
}

fn compare_pair(a: &Sorted, b: &Sorted) -> Pair {
    let mut pooled: Vec<u64> = a.values.iter().chain(&b.values).copied().collect();
    pooled.sort_unstable();
    let welch = |limit: u64| {
        let (na, ma, va) = a.moments(limit);
        let (nb, mb, vb) = b.moments(limit);
        if na < MIN_CROPPED || nb < MIN_CROPPED {
            return None;
        }
        let spread = (va / na as f64 + vb / nb as f64).sqrt();
        Some(if spread > 0.0 {
            (ma - mb) / spread
        } else {
            0.0
        })
    };
    let uncropped_t = welch(u64::MAX).unwrap_or(0.0);
    let mut best = Pair {
        max_t: uncropped_t,
        crop: None,
        uncropped_t,
    };
    for i in 0..100 {
        let p = 1.0 - 0.5f64.powf(10.0 * f64::from(i + 1) / 100.0);
        if let Some(t) = welch(quantile(&pooled, p))
            && t.abs() > best.max_t.abs()
        {
            best.max_t = t;
            best.crop = Some(p);
        }
    }
    best
}

fn report(
    title: &str,
    names: &[&str],
    samples: &[Vec<u64>],
    per_sample: usize,
    pairs: &[(usize, usize)],
) {
    let sorted: Vec<Sorted> = samples.iter().cloned().map(Sorted::new).collect();
    let median = |s: &Sorted| quantile(&s.values, 0.5) as f64 / per_sample as f64;
    println!("{title}:");
    println!();
    println!(
        "| A | B | samples A / B | median A (ns) | median B (ns) | B − A (ns) | t uncropped | max \\|t\\| (crop) | verdict |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for &(i, j) in pairs {
        let (a, b) = (&sorted[i], &sorted[j]);
        let pair = compare_pair(a, b);
        let crop = pair
            .crop
            .map_or_else(|| "none".to_owned(), |p| format!("p{:.1}", p * 100.0));
        let mut line = String::new();
        write!(
            line,
            "| {} | {} | {} / {} | {:.1} | {:.1} | {:+.1} | {:.2} | {:.2} ({crop}) | {} |",
            names[i],
            names[j],
            a.values.len(),
            b.values.len(),
            median(a),
            median(b),
            median(b) - median(a),
            pair.uncropped_t,
            pair.max_t.abs(),
            if pair.max_t.abs() < T_THRESHOLD {
                "no difference found"
            } else {
                "DIFFERS"
            }
        )
        .unwrap();
        println!("{line}");
    }
    println!();
}

/// The value at quantile `p` (0–1, nearest rank) of sorted `values`.
fn quantile(values: &[u64], p: f64) -> u64 {
    // p is in [0, 1], so the rank is a non-negative count below len.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = (p * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn us(nanos: u64) -> f64 {
    nanos as f64 / 1_000.0
}

fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

/// One empty sample buffer per class, each with room for `capacity`.
fn buffers(classes: usize, capacity: usize) -> Vec<Vec<u64>> {
    (0..classes).map(|_| Vec::with_capacity(capacity)).collect()
}

/// Samples discarded first, while caches, branch predictors and the CPU's
/// clock settle.
fn warmup(samples: usize) -> usize {
    (samples / 100).max(100)
}

// ---------------------------------------------------------------------------
// Fixtures

/// splitmix64: cheap, and seeded from the OS so no two runs draw the same
/// class sequence. Not for secrets.
struct Rng(u64);

impl Rng {
    fn from_os() -> Self {
        Self(getrandom::u64().expect("OS random source"))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough below `n` (n is tiny next to 2^64).
    fn below(&mut self, n: usize) -> usize {
        let n = u64::try_from(n).expect("usize fits u64");
        usize::try_from(self.next_u64() % n).expect("below n")
    }

    fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

fn mint() -> MintedKey {
    MintedKey::generate(&Prefix::default()).expect("OS random source")
}

fn deployer() -> Role {
    Role {
        name: "deployer".parse().unwrap(),
        description: String::new(),
        permissions: ["deploy:*", "build:read"]
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

/// Indexes `minted` with its record changed by `adjust`; returns it.
fn insert(index: &Index, minted: MintedKey, adjust: impl FnOnce(&mut KeyRecord)) -> MintedKey {
    let mut record = record(&minted);
    adjust(&mut record);
    index.apply([Change::KeyUpserted(Arc::new(IndexedKey::new(
        &record,
        minted.digest,
    )))]);
    minted
}

/// What the data plane asks: one permission, no client address.
fn checks(required: &[Permission]) -> Checks<'_> {
    Checks {
        required: Required::parsed(required),
        client_ip: None,
        skip_rate_limit: false,
    }
}

//! keyward at a million keys: filling a store, starting the real binary on
//! it, its memory, Validate throughput, and on PostgreSQL a resync while
//! writes go on.
//!
//! For each store and size: a fresh database is filled through the bulk path
//! ([`keyward::store::Store::import_keys`]) with keys shaped like a real
//! inventory (one permission, an owner and a `team` label, 1,000 teams), then
//! the release `keyward` binary starts on it and is timed from spawn to its
//! first Validate answered `valid`. Its `VmRSS` is read once it settles, and
//! 8 gRPC clients validate keys spread over the whole index. Memory per key
//! is the RSS difference between the two sizes, divided by the difference in
//! keys.
//!
//! On PostgreSQL the server runs with `--resync-interval 20s` (the
//! measurements above are done before the first): a client then mints
//! without pause until two more periodic resyncs have finished, so that one
//! ran from start to end under the writes, and the resyncs' duration (from
//! the server's metrics) and the slowest mint meanwhile are printed.
//!
//! Run: `cargo bench --bench scale` (both stores, 1,000 and 1,000,000
//! keys), or name a store and sizes: `cargo bench --bench scale -- sqlite
//! 1000 100000`. PostgreSQL: `KEYWARD_TEST_POSTGRES` as for the tests; a
//! scratch database is created and dropped.

mod common;

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use keyward::{
    clock::{Clock, SystemClock},
    key::{MintedKey, Prefix},
    model::{Actor, KeySettings, Labels},
    pb::{self, admin_service_client::AdminServiceClient, key_service_client::KeyServiceClient},
    store::{NewKey, Store},
    testing::{ScratchDatabase, authed},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// Keys per import transaction.
const BATCH: usize = 10_000;
/// Keys whose plaintext is kept, spread evenly, for Validate.
const SAMPLES: usize = 1_000;
/// Rounds of Validate; the median is reported.
const ROUNDS: usize = 5;

/// What one size measured.
struct Measured {
    keys: usize,
    fill: Duration,
    start: Duration,
    rss_mib: f64,
    validate_per_second: f64,
}

fn main() {
    if common::only_listing() {
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let stores: Vec<&str> = ["sqlite", "postgres"]
        .into_iter()
        .filter(|store| args.is_empty() || args.iter().any(|arg| arg == store))
        .collect();
    let stores = if stores.is_empty() {
        vec!["sqlite", "postgres"]
    } else {
        stores
    };
    let mut sizes: Vec<usize> = args.iter().filter_map(|arg| arg.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![1_000, 1_000_000];
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        for store in stores {
            let mut results = Vec::new();
            for &keys in &sizes {
                if store == "sqlite" {
                    results.push(sqlite(keys).await);
                } else {
                    let Some(database) = ScratchDatabase::create().await else {
                        eprintln!("PostgreSQL is unreachable; its runs are skipped");
                        break;
                    };
                    results.push(postgres(&database, keys).await);
                }
            }
            report(store, &results);
        }
    });
}

async fn sqlite(keys: usize) -> Measured {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("keyward.db").display());
    let (fill, samples) = fill(&url, keys).await;
    let server = Server::start(dir.path(), &url, &[]);
    let measured = server.measure(keys, fill, &samples).await;
    if std::env::var_os("KEYWARD_SCALE_KEEP").is_some() {
        // To profile or inspect a filled database afterwards.
        eprintln!("kept {}", dir.keep().display());
    }
    measured
}

async fn postgres(database: &ScratchDatabase, keys: usize) -> Measured {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (fill, samples) = fill(database.url(), keys).await;
    let metrics = free_address();
    let server = Server::start(
        dir.path(),
        database.url(),
        &[
            "--resync-interval",
            "20s",
            "--metrics-listen",
            &metrics.to_string(),
        ],
    );
    let measured = server.measure(keys, fill, &samples).await;
    server.resync_under_writes(metrics).await;
    measured
}

/// Fills the store at `url` with `keys` keys; returns how long it took and
/// the plaintexts of [`SAMPLES`] of them. Keys are made (random secrets,
/// digests) on another thread while the previous batch is written, as an
/// import tool would.
async fn fill(url: &str, keys: usize) -> (Duration, Vec<String>) {
    let store = Store::open(url).await.expect("the store opens");
    let every = (keys / SAMPLES).max(1);
    let mut samples = Vec::new();
    let started = Instant::now();
    let generate = move |range: std::ops::Range<usize>| {
        tokio::task::spawn_blocking(move || {
            range
                .map(|n| {
                    let minted = MintedKey::generate(&Prefix::default()).expect("a key");
                    let sample = (n % every == 0).then(|| minted.plaintext.expose().to_owned());
                    let team = format!("team-{}", n % 1_000);
                    let key = NewKey {
                        id: minted.id,
                        digest: minted.digest,
                        settings: KeySettings {
                            permissions: vec!["deploy:read".parse().expect("a permission")],
                            labels: Labels::new(BTreeMap::from([(
                                "team".to_owned(),
                                team.clone(),
                            )]))
                            .expect("a label"),
                            owner: team,
                            ..KeySettings::default()
                        },
                        created_by: None,
                    };
                    (key, sample)
                })
                .collect::<Vec<_>>()
        })
    };
    let mut next = Some(generate(0..keys.min(BATCH)));
    let mut written = 0;
    while let Some(generating) = next.take() {
        let generated = generating.await.expect("keys made");
        written += generated.len();
        if written < keys {
            next = Some(generate(written..keys.min(written + BATCH)));
        }
        let (batch, kept): (Vec<NewKey>, Vec<Option<String>>) = generated.into_iter().unzip();
        samples.extend(kept.into_iter().flatten().take(SAMPLES - samples.len()));
        store
            .import_keys(&batch, Actor::Local, SystemClock.now())
            .await
            .expect("imported");
    }
    let took = started.elapsed();
    store.close().await;
    (took, samples)
}

/// The release binary, started on a filled store.
struct Server {
    child: Child,
    addr: SocketAddr,
    spawned: Instant,
    admin_key_file: std::path::PathBuf,
}

impl Server {
    fn start(dir: &Path, url: &str, extra: &[&str]) -> Self {
        let addr = free_address();
        let admin_key_file = dir.join("admin.key");
        let spawned = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_keyward"))
            .arg("serve")
            .args(["--listen", &addr.to_string(), "--database-url", url])
            .arg("--bootstrap-key-file")
            .arg(&admin_key_file)
            .args(extra)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("keyward starts");
        Self {
            child,
            addr,
            spawned,
            admin_key_file,
        }
    }

    /// Start-up time, memory and Validate throughput.
    async fn measure(&self, keys: usize, fill: Duration, samples: &[String]) -> Measured {
        let admin_key = self.first_valid(&samples[samples.len() / 2]).await;
        let start = self.spawned.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_mib = rss_mib(self.child.id());
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            rounds.push(self.validate_round(&admin_key, samples).await);
        }
        Measured {
            keys,
            fill,
            start,
            rss_mib,
            validate_per_second: common::median(&mut rounds),
        }
    }

    /// Waits until `sample` validates; returns the admin key (the caller).
    async fn first_valid(&self, sample: &str) -> String {
        let deadline = Instant::now() + Duration::from_mins(5);
        loop {
            assert!(
                Instant::now() < deadline,
                "keyward did not serve in 5 minutes"
            );
            if let Ok(key) = std::fs::read_to_string(&self.admin_key_file)
                && let Ok(channel) = self.channel().await
            {
                let key = key.trim().to_owned();
                if common::is_valid(&mut KeyServiceClient::new(channel), &key, sample).await {
                    return key;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("a URL")
            .connect()
            .await
    }

    /// [`common::CLIENTS`] clients × [`common::CALLS_PER_CLIENT`] Validate calls over the sample keys;
    /// calls per second.
    async fn validate_round(&self, caller: &str, samples: &[String]) -> f64 {
        let mut clients = Vec::new();
        for _ in 0..common::CLIENTS {
            clients.push(KeyServiceClient::new(
                self.channel().await.expect("connects"),
            ));
        }
        let started = Instant::now();
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(n, mut client)| {
                let caller = caller.to_owned();
                let samples = samples.to_vec();
                tokio::spawn(async move {
                    for call in 0..common::CALLS_PER_CLIENT {
                        let key = &samples[(n * common::CALLS_PER_CLIENT + call) % samples.len()];
                        assert!(
                            common::is_valid(&mut client, &caller, key).await,
                            "a filled key validates"
                        );
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("a client");
        }
        #[allow(clippy::cast_precision_loss, reason = "a few thousand calls")]
        let calls = (common::CLIENTS * common::CALLS_PER_CLIENT) as f64;
        calls / started.elapsed().as_secs_f64()
    }

    /// Mints without pause until two periodic resyncs have finished (the
    /// second began and ended under the writes); prints how long they took
    /// and the slowest mint meanwhile.
    async fn resync_under_writes(&self, metrics: SocketAddr) {
        let admin_key = std::fs::read_to_string(&self.admin_key_file).expect("the admin key");
        let admin_key = admin_key.trim();
        let mut admin = AdminServiceClient::new(self.channel().await.expect("connects"));
        let before = resyncs(metrics).await;
        let deadline = Instant::now() + Duration::from_mins(5);
        let mut slowest = Duration::ZERO;
        let mut mints = 0_u32;
        while resyncs(metrics).await.0 < before.0 + 2.0 {
            assert!(Instant::now() < deadline, "no two resyncs within 5 minutes");
            let started = Instant::now();
            admin
                .mint_key(authed(admin_key, pb::MintKeyRequest::default()))
                .await
                .expect("a mint during the resync");
            slowest = slowest.max(started.elapsed());
            mints += 1;
        }
        let after = resyncs(metrics).await;
        println!(
            "  periodic resync: {:.2} s on average, holding the write turn {:.1} ms on average; \
             {mints} mints meanwhile, the slowest {:.1} ms",
            (after.1 - before.1) / (after.0 - before.0),
            (after.3 - before.3) / (after.2 - before.2) * 1e3,
            slowest.as_secs_f64() * 1e3
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resyncs done so far and the seconds they took, then the write turns they
/// held and the seconds those took, from the server's metrics.
async fn resyncs(metrics: SocketAddr) -> (f64, f64, f64, f64) {
    let mut stream = tokio::net::TcpStream::connect(metrics)
        .await
        .expect("metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await
        .expect("sent");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("read");
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (
        value("keyward_resync_duration_seconds_count "),
        value("keyward_resync_duration_seconds_sum "),
        value("keyward_resync_write_turn_duration_seconds_count "),
        value("keyward_resync_write_turn_duration_seconds_sum "),
    )
}

fn report(store: &str, results: &[Measured]) {
    println!("{store}:");
    println!("| keys | fill | keys/s | start to first Validate | RSS | Validate calls/s |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for measured in results {
        #[allow(clippy::cast_precision_loss, reason = "key counts")]
        let rate = measured.keys as f64 / measured.fill.as_secs_f64();
        println!(
            "| {} | {:.2} s | {rate:.0} | {:.2} s | {:.1} MiB | {:.0} |",
            measured.keys,
            measured.fill.as_secs_f64(),
            measured.start.as_secs_f64(),
            measured.rss_mib,
            measured.validate_per_second
        );
    }
    if let [small, .., large] = results {
        #[allow(clippy::cast_precision_loss, reason = "key counts")]
        let per_key =
            (large.rss_mib - small.rss_mib) * 1024.0 * 1024.0 / (large.keys - small.keys) as f64;
        println!(
            "  memory per key: {per_key:.0} bytes; Validate at {} keys / at {} keys: {:.3}",
            large.keys,
            small.keys,
            large.validate_per_second / small.validate_per_second
        );
    }
}

fn free_address() -> SocketAddr {
    let probe = TcpListener::bind("127.0.0.1:0").expect("a free port");
    probe.local_addr().expect("its address")
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the server runs");
    let kib: u32 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a kB figure");
    f64::from(kib) / 1024.0
}

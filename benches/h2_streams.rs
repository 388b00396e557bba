//! Bodiless HTTP/2 streams against the real `keyward` binary (release
//! profile), the attack of security review issue 12 item 2: streams that send
//! a Validate call's headers and never a body (authentication waits for the
//! body), so no credential is needed.
//!
//! Starts `keyward serve` on a fresh SQLite database, warms it up with 1,000
//! Validate calls, then runs two attacks, each on one new connection, reading
//! the server's `VmRSS` from `/proc/PID/status` before, while the connection
//! is open, and after it is closed:
//!
//! 1. **raw**: HEADERS frames for 20,000 streams written straight to the
//!    socket, ignoring what the server advertises (as an attacker would);
//! 2. **h2 client**: the `h2` client opening as many of 20,000 such streams
//!    as the server lets it (it honours `SETTINGS_MAX_CONCURRENT_STREAMS`).
//!
//! Run: `cargo bench --bench h2_streams`. `KEYWARD_BIN=/path/to/keyward`
//! measures another build of the binary (e.g. one from before the limits).

mod common;

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use keyward::{
    pb::{self, admin_service_client::AdminServiceClient, key_service_client::KeyServiceClient},
    testing::authed,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::transport::Channel;

/// Streams each attack opens on its one connection.
const STREAMS: u32 = 20_000;
/// How long the server gets to settle before each RSS reading.
const SETTLE: Duration = Duration::from_secs(2);

fn main() {
    if common::only_listing() {
        return;
    }
    let binary =
        std::env::var("KEYWARD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_keyward").to_owned());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let addr = free_address();
    let mut server = start(&binary, dir.path(), addr);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let admin_key = wait_until_serving(dir.path(), addr).await;
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("a URL")
            .connect()
            .await
            .expect("connects");
        let caller = mint_validator(&channel, &admin_key).await;
        let mut client = KeyServiceClient::new(channel);
        for _ in 0..1_000 {
            assert!(validate(&mut client, &caller).await, "a warm-up Validate");
        }
        tokio::time::sleep(SETTLE).await;

        println!("binary: {binary}");
        println!("{STREAMS} bodiless streams on one connection; server VmRSS in MiB");
        println!(
            "| attack | before | connection open | closed | server's answer | Validate after |"
        );
        println!("| --- | --- | --- | --- | --- | --- |");
        let pid = server.id();
        let before = rss_mib(pid);
        let (answer, attacker) = raw_flood(addr).await;
        tokio::time::sleep(SETTLE).await;
        let open = rss_mib(pid);
        drop(attacker);
        tokio::time::sleep(SETTLE).await;
        let closed = rss_mib(pid);
        let after = timed_validate(&mut client, &caller).await;
        println!("| raw frames | {before:.1} | {open:.1} | {closed:.1} | {answer} | {after} |");

        let before = rss_mib(pid);
        let (answer, attacker) = h2_client_flood(addr).await;
        tokio::time::sleep(SETTLE).await;
        let open = rss_mib(pid);
        drop(attacker);
        tokio::time::sleep(SETTLE).await;
        let closed = rss_mib(pid);
        let after = timed_validate(&mut client, &caller).await;
        println!("| h2 client | {before:.1} | {open:.1} | {closed:.1} | {answer} | {after} |");
        println!("peak VmHWM: {:.1} MiB", status_mib(pid, "VmHWM:"));
    });
    let _ = server.kill();
    let _ = server.wait();
}

/// A port nobody listens on right now.
fn free_address() -> SocketAddr {
    let probe = TcpListener::bind("127.0.0.1:0").expect("a free port");
    probe.local_addr().expect("its address")
}

fn start(binary: &str, dir: &Path, addr: SocketAddr) -> Child {
    Command::new(binary)
        .arg("serve")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.join("keyward.db").display()))
        .arg("--bootstrap-key-file")
        .arg(dir.join("admin.key"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("keyward starts")
}

/// Waits for the first admin key and the listening port; returns the key.
async fn wait_until_serving(dir: &Path, addr: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        if let Ok(key) = std::fs::read_to_string(dir.join("admin.key"))
            && TcpStream::connect(addr).await.is_ok()
        {
            return key.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "keyward did not start in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn mint_validator(channel: &Channel, admin_key: &str) -> String {
    let request = pb::MintKeyRequest {
        roles: vec!["validator".into()],
        ..Default::default()
    };
    AdminServiceClient::new(channel.clone())
        .mint_key(authed(admin_key, request))
        .await
        .expect("mint")
        .into_inner()
        .plaintext
}

async fn validate(client: &mut KeyServiceClient<Channel>, caller: &str) -> bool {
    let request = pb::ValidateRequest {
        key: caller.to_owned(),
        ..Default::default()
    };
    client
        .validate(authed(caller, request))
        .await
        .is_ok_and(|response| response.into_inner().valid)
}

/// How a Validate on the benchmark's own connection went, for the table.
async fn timed_validate(client: &mut KeyServiceClient<Channel>, caller: &str) -> String {
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(10), validate(client, caller)).await {
        Ok(true) => format!("valid in {:.1} ms", started.elapsed().as_secs_f64() * 1e3),
        Ok(false) => "refused or failed".to_owned(),
        Err(_) => "no answer in 10 s".to_owned(),
    }
}

fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// A `kB` line of `/proc/PID/status`, in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the server runs");
    let kib: u32 = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a kB figure");
    f64::from(kib) / 1024.0
}

/// Writes HEADERS for [`STREAMS`] streams on one raw connection while
/// counting what comes back; returns what the server did, and the
/// connection's write half, still open if the server kept it.
async fn raw_flood(addr: SocketAddr) -> (String, tokio::net::tcp::OwnedWriteHalf) {
    let (mut reader, mut writer) = TcpStream::connect(addr)
        .await
        .expect("connects")
        .into_split();
    let counting = tokio::spawn(async move {
        // (refused streams, GOAWAY reason, closed by the server)
        let mut seen = (0_u32, None, false);
        let mut header = [0_u8; 9];
        loop {
            if reader.read_exact(&mut header).await.is_err() {
                seen.2 = true;
                return seen;
            }
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0; length];
            if reader.read_exact(&mut payload).await.is_err() {
                seen.2 = true;
                return seen;
            }
            match header[3] {
                RST_STREAM if payload[..4] == REFUSED_STREAM.to_be_bytes() => seen.0 += 1,
                GOAWAY => seen.1 = Some(u32::from_be_bytes(payload[4..8].try_into().expect("4"))),
                _ => {}
            }
        }
    });
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    let mut written = 0;
    if writer.write_all(&hello).await.is_ok() {
        for first in (0..STREAMS).step_by(500) {
            if writer
                .write_all(&bodiless_streams(first..first + 500))
                .await
                .is_err()
            {
                break;
            }
            written = first + 500;
        }
    }
    tokio::time::sleep(SETTLE).await;
    let (refused, go_away, closed) = if counting.is_finished() {
        counting.await.expect("the counting task")
    } else {
        counting.abort();
        (0, None, false)
    };
    let answer = match (go_away, closed) {
        (Some(reason), _) => format!(
            "{refused} refused, then GOAWAY {}; {written} written",
            reason_name(reason)
        ),
        (None, true) => format!("{refused} refused, then closed; {written} written"),
        (None, false) => format!("all {written} streams held open"),
    };
    (answer, writer)
}

/// Opens as many of [`STREAMS`] bodiless Validate streams as the server's
/// advertised limit lets an `h2` client; returns how many, and what keeps
/// the connection and its streams open.
async fn h2_client_flood(addr: SocketAddr) -> (String, Held) {
    let tcp = TcpStream::connect(addr).await.expect("connects");
    let (mut send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    let driver = tokio::spawn(connection);
    // One round trip, so the server's SETTINGS have arrived.
    let (response, mut body) = send
        .send_request(request(addr), false)
        .expect("a stream opens");
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("a body");
    let _ = response.await;
    let mut streams = Vec::new();
    while streams.len() < usize::try_from(STREAMS).expect("small") {
        // Pending while a stream waits in the client for a free slot.
        let ready = std::future::poll_fn(|cx| send.poll_ready(cx));
        match tokio::time::timeout(Duration::from_millis(200), ready).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => break,
        }
        match send.send_request(request(addr), false) {
            Ok(stream) => streams.push(stream),
            Err(_) => break,
        }
    }
    let limit = send.current_max_send_streams();
    let answer = if streams.len() > limit {
        format!("{limit} open (the advertised limit), the client holds back the rest")
    } else {
        format!("all {} open", streams.len())
    };
    (
        answer,
        Held {
            _streams: (send, streams),
            driver,
        },
    )
}

/// An `h2` connection and its streams, open until dropped.
struct Held {
    _streams: (
        h2::client::SendRequest<Bytes>,
        Vec<(h2::client::ResponseFuture, h2::SendStream<Bytes>)>,
    ),
    driver: tokio::task::JoinHandle<Result<(), h2::Error>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

fn request(addr: SocketAddr) -> http::Request<()> {
    http::Request::post(format!("http://{addr}/keyward.v1.KeyService/Validate"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a valid request")
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_HEADERS: u8 = 0x4;
const REFUSED_STREAM: u32 = 0x7;

fn reason_name(reason: u32) -> String {
    match reason {
        0x0 => "NO_ERROR".to_owned(),
        0xb => "ENHANCE_YOUR_CALM".to_owned(),
        other => format!("{other:#x}"),
    }
}

/// HEADERS frames opening the `n`th streams of `streams` (ids 2n + 1), each
/// a Validate call's headers: HPACK literals, no body, no credential.
fn bodiless_streams(streams: std::ops::Range<u32>) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/keyward.v1.KeyService/Validate"),
        (":authority", "keyward"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0);
        for text in [name, value] {
            block.push(u8::try_from(text.len()).expect("a short string"));
            block.extend_from_slice(text.as_bytes());
        }
    }
    streams
        .flat_map(|n| frame(HEADERS, END_HEADERS, 2 * n + 1, &block))
        .collect()
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).expect("a small frame");
    let mut frame = length.to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

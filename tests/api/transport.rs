//! The HTTP/2, request and connection limits (security review, issue 12
//! item 2): one connection must not be able to hold an unbounded number of
//! requests that never send a body, since authentication waits for the body,
//! and clients must not be able to hold an unbounded number of connections.
//!
//! Each test speaks HTTP/2 itself, with the `h2` client or with frames
//! written by hand (as an attacker would, ignoring what the server
//! advertises), and ends by checking that the server still answers a normal
//! Validate. The limits live in the transport, below the store, so these run
//! on SQLite only.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use keyward::{
    pb,
    server::Settings,
    testing::{Backend, TestApp, authed, spawn_app, spawn_with},
};
use tokio::{io::AsyncWriteExt, net::TcpStream, task::JoinHandle};
use tonic::Code;

/// How long a test waits for something the server must do "at once".
const PATIENCE: Duration = Duration::from_secs(10);

const VALIDATE: &str = "/keyward.v1.KeyService/Validate";

/// `grpc-status` of CANCELLED, what a request cut by the timeout answers.
const CANCELLED: &str = "1";

/// The server still serves a normal client: a validator key validates.
async fn still_serves(app: &TestApp) {
    let (_, key) = app.mint_with_roles(&["validator"]).await;
    let response = app
        .validate_as(&key, &key, &["keyward:validate"])
        .await
        .expect("Validate answers");
    assert!(response.valid, "{response:?}");
}

/// An `h2` client connection, driven in the background; the task ends when
/// the connection does.
async fn h2_connect(app: &TestApp) -> (h2::client::SendRequest<Bytes>, JoinHandle<()>) {
    let tcp = TcpStream::connect(app.addr).await.expect("connects");
    let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    let driver = tokio::spawn(async move {
        // A GOAWAY or reset from the server is what some tests wait for.
        let _ = connection.await;
    });
    (send, driver)
}

/// A Validate call's headers, with no credential.
fn validate_headers(server: SocketAddr) -> http::Request<()> {
    http::Request::post(format!("http://{server}{VALIDATE}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a valid request")
}

/// Opens a Validate stream and sends its headers only: no body, no end of
/// stream. Keep both halves: dropping them resets the stream.
async fn open_bodiless(
    send: &mut h2::client::SendRequest<Bytes>,
    app: &TestApp,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    std::future::poll_fn(|cx| send.poll_ready(cx))
        .await
        .expect("the connection is open");
    send.send_request(validate_headers(app.addr), false)
        .expect("the stream opens")
}

/// A whole Validate call with an empty message (so no credential).
async fn empty_validate(
    send: &mut h2::client::SendRequest<Bytes>,
    server: SocketAddr,
) -> h2::client::ResponseFuture {
    std::future::poll_fn(|cx| send.poll_ready(cx))
        .await
        .expect("the connection is open");
    let (response, mut body) = send
        .send_request(validate_headers(server), false)
        .expect("the stream opens");
    // A gRPC message: not compressed, length 0.
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("the body is sent");
    response
}

/// The `grpc-status` of an answer: in its headers (a trailers-only answer)
/// or in its trailers.
async fn grpc_status(response: h2::client::ResponseFuture) -> String {
    let response = response.await.expect("an answer");
    if let Some(status) = response.headers().get("grpc-status") {
        return status.to_str().expect("ASCII").to_owned();
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        data.expect("the body");
    }
    let trailers = body.trailers().await.expect("trailers").expect("trailers");
    trailers["grpc-status"].to_str().expect("ASCII").to_owned()
}

#[tokio::test]
async fn the_server_advertises_its_stream_limit() {
    let app = spawn_app(Backend::Sqlite).await;
    let (mut send, _driver) = h2_connect(&app).await;
    // One round trip, so the server's SETTINGS have certainly arrived.
    let status = grpc_status(empty_validate(&mut send, app.addr).await).await;
    assert_eq!(status, (Code::Unauthenticated as i32).to_string());
    assert_eq!(
        send.current_max_send_streams(),
        usize::try_from(Settings::default().max_concurrent_streams).unwrap()
    );
    still_serves(&app).await;
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused() {
    let limit = 32;
    let app = spawn_with(
        Backend::Sqlite,
        Settings {
            max_concurrent_streams: limit,
            ..Settings::default()
        },
    )
    .await;
    let excess = 100;
    let mut attacker = raw::Connection::open(&app).await;
    attacker.open_bodiless_streams(limit + excess).await;

    let mut refused = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        while refused.len() < usize::try_from(excess).unwrap() {
            match attacker.next_frame().await {
                Some(raw::Frame::Reset { stream, reason }) => {
                    assert_eq!(reason, raw::REFUSED_STREAM, "stream {stream}");
                    refused.push(stream);
                }
                Some(raw::Frame::GoAway { reason, .. }) => {
                    panic!("GOAWAY ({reason}) after {} refusals", refused.len())
                }
                Some(raw::Frame::Ping | raw::Frame::Other) => {}
                None => panic!("closed after {} refusals", refused.len()),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "only {} of {limit} + {excess} bodiless streams were refused",
        refused.len()
    );
    // Exactly the streams past the limit, in the order they were opened.
    let expected: Vec<u32> = (limit..limit + excess).map(raw::stream_id).collect();
    assert_eq!(refused, expected);
    still_serves(&app).await;
}

#[tokio::test]
async fn a_client_that_keeps_ignoring_the_limit_is_disconnected() {
    let app = spawn_app(Backend::Sqlite).await;
    let attacker = raw::Connection::open(&app).await;
    let opened = 2_000;
    // Written in the background: once the server hangs up, writes fail.
    let (mut reader, mut writer) = attacker.split();
    let flood = tokio::spawn(async move {
        for first in (0..opened).step_by(100) {
            if writer
                .write_all(&raw::bodiless_streams(first..first + 100))
                .await
                .is_err()
            {
                return;
            }
        }
    });

    let (mut refused, mut go_away) = (0_u32, None);
    let read = tokio::time::timeout(PATIENCE, async {
        while let Some(frame) = reader.next_frame().await {
            match frame {
                raw::Frame::Reset { reason, .. } if reason == raw::REFUSED_STREAM => refused += 1,
                raw::Frame::GoAway {
                    reason,
                    last_stream,
                } => go_away = Some((reason, last_stream)),
                _ => {}
            }
        }
    })
    .await;
    flood.abort();
    assert!(
        read.is_ok(),
        "the connection is still open after {opened} bodiless streams ({refused} refused)"
    );
    let (reason, last_stream) = go_away.expect("a GOAWAY before the server hung up");
    assert_eq!(reason, raw::ENHANCE_YOUR_CALM);
    assert!(refused > 0);
    // The GOAWAY names the last stream the server took on: it took on its
    // limit of them and refused the rest.
    let limit = Settings::default().max_concurrent_streams;
    assert_eq!(last_stream, raw::stream_id(limit - 1));
    still_serves(&app).await;
}

#[tokio::test]
async fn a_request_that_never_sends_its_body_is_ended_by_the_request_timeout() {
    let (limit, timeout) = (8, Duration::from_millis(500));
    let app = spawn_with(
        Backend::Sqlite,
        Settings {
            max_concurrent_streams: limit,
            request_timeout: timeout,
            ..Settings::default()
        },
    )
    .await;
    let (mut send, _driver) = h2_connect(&app).await;
    // One round trip first, so the client knows the limit (before the
    // server's SETTINGS arrive, h2 assumes none, and the server would refuse
    // the excess).
    grpc_status(empty_validate(&mut send, app.addr).await).await;
    let started = Instant::now();
    let mut bodiless = Vec::new();
    for _ in 0..limit {
        bodiless.push(open_bodiless(&mut send, &app).await);
    }
    // Every stream the connection may have is taken; this call waits in the
    // client's queue until the timeout frees one.
    let queued = tokio::spawn({
        let (mut send, server) = (send.clone(), app.addr);
        async move {
            let started = Instant::now();
            let status = grpc_status(empty_validate(&mut send, server).await).await;
            (status, started.elapsed())
        }
    });

    for (response, _body) in bodiless {
        let status = tokio::time::timeout(PATIENCE, grpc_status(response))
            .await
            .expect("a bodiless request is answered within the request timeout");
        assert_eq!(status, CANCELLED);
    }
    assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());

    let (status, waited) = tokio::time::timeout(PATIENCE, queued)
        .await
        .expect("the queued call is answered once a stream is free")
        .expect("the queued call's task");
    assert_eq!(status, (Code::Unauthenticated as i32).to_string());
    assert!(waited < PATIENCE, "{waited:?}");
    still_serves(&app).await;
}

#[tokio::test]
async fn an_oversized_message_is_refused_before_authentication() {
    let app = spawn_app(Backend::Sqlite).await;
    let limit = Settings::default().max_message_size;
    let request = pb::ValidateRequest {
        key: "k".repeat(limit * 2),
        ..Default::default()
    };
    let status = app
        .key_client()
        .await
        .validate(request)
        .await
        .expect_err("an oversized message is refused");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains(&limit.to_string()), "{status:?}");
    still_serves(&app).await;
}

#[tokio::test]
async fn the_largest_admin_request_fits_the_message_limit() {
    let app = spawn_app(Backend::Sqlite).await;
    // 64 of everything, each at its longest.
    let roles: Vec<String> = (0..64)
        .map(|i| format!("{}{i:03}", "r".repeat(61)))
        .collect();
    for role in &roles {
        app.create_role(role, &["deploy:read"], None)
            .await
            .expect("the role is created");
    }
    let request = pb::MintKeyRequest {
        roles,
        labels: (0..64)
            .map(|i| (format!("{}{i:03}", "l".repeat(253)), "v".repeat(256)))
            .collect(),
        owner: "o".repeat(256),
        description: "d".repeat(1024),
        permissions: (0..64)
            .map(|i| format!("{}:{i:03}", "p".repeat(252)))
            .collect(),
        allowed_cidrs: (0..64)
            .map(|i| format!("ffff:ffff:ffff:ffff:ffff:ffff:ffff:{i:04x}/128"))
            .collect(),
        expiry: Some(pb::mint_key_request::Expiry::Ttl(
            Duration::from_hours(1).try_into().unwrap(),
        )),
        ..Default::default()
    };
    let size = prost::Message::encoded_len(&request);
    // What the default was chosen from: at most half of it.
    assert!(
        (56 * 1024..=Settings::default().max_message_size / 2).contains(&size),
        "{size} bytes"
    );
    let minted = app
        .admin_client()
        .await
        .mint_key(authed(&app.admin_key, request))
        .await
        .expect("the largest MintKey is accepted")
        .into_inner();
    assert_eq!(minted.key.expect("a key").allowed_cidrs.len(), 64);
    still_serves(&app).await;
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_disconnected() {
    let app = spawn_with(
        Backend::Sqlite,
        Settings {
            keepalive_interval: Duration::from_millis(200),
            keepalive_timeout: Duration::from_millis(200),
            ..Settings::default()
        },
    )
    .await;
    // Says hello, then never answers anything.
    let mut silent = raw::Connection::open(&app).await;
    let mut pinged = false;
    let read = tokio::time::timeout(PATIENCE, async {
        while let Some(frame) = silent.next_frame().await {
            pinged |= matches!(frame, raw::Frame::Ping);
        }
    })
    .await;
    assert!(read.is_ok(), "a silent peer is still connected");
    assert!(pinged, "closed without a ping");
    still_serves(&app).await;
}

#[tokio::test]
async fn connections_past_their_max_age_are_closed_gracefully_and_clients_reconnect() {
    let age = Duration::from_millis(500);
    let app = spawn_with(
        Backend::Sqlite,
        Settings {
            max_connection_age: age,
            ..Settings::default()
        },
    )
    .await;
    let (_, key) = app.mint_with_roles(&["validator"]).await;
    let mut client = app.key_client().await;
    let mut validate = async || {
        client
            .validate(authed(
                &key,
                pb::ValidateRequest {
                    key: key.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect("Validate answers")
            .into_inner()
            .valid
    };
    assert!(validate().await);

    let (_send, driver) = h2_connect(&app).await;
    tokio::time::timeout(PATIENCE, driver)
        .await
        .expect("the server closes a connection past its age")
        .expect("the connection task");

    // The same client, on a new connection of its own.
    tokio::time::sleep(age * 2).await;
    assert!(validate().await);
}

#[tokio::test]
async fn past_max_connections_a_client_waits_until_a_connection_closes() {
    let app = spawn_with(
        Backend::Sqlite,
        Settings {
            max_connections: 2,
            ..Settings::default()
        },
    )
    .await;
    let (_, key) = app.mint_with_roles(&["validator"]).await;
    let validate = async || {
        app.validate_as(&key, &key, &["keyward:validate"])
            .await
            .expect("Validate answers")
            .valid
    };
    // Two connections that do nothing but stay open take both slots.
    let (first, first_driver) = h2_connect(&app).await;
    let (_second, _second_driver) = h2_connect(&app).await;
    assert!(
        tokio::time::timeout(Duration::from_secs(1), validate())
            .await
            .is_err(),
        "a third connection was served past --max-connections 2"
    );

    drop(first);
    first_driver.abort();
    let answered = tokio::time::timeout(PATIENCE, validate()).await;
    assert_eq!(answered.ok(), Some(true), "served once a connection closed");
}

/// Just enough HTTP/2 to open streams the way an attacker would: every
/// header a literal, no flow control, no regard for the server's SETTINGS,
/// nothing ever acknowledged.
mod raw {
    use std::ops::Range;

    use keyward::testing::TestApp;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt, BufReader},
        net::{
            TcpStream,
            tcp::{OwnedReadHalf, OwnedWriteHalf},
        },
    };

    pub const REFUSED_STREAM: u32 = 0x7;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const GOAWAY: u8 = 0x7;
    const END_HEADERS: u8 = 0x4;

    /// What the tests look at in a frame from the server.
    #[derive(Debug)]
    pub enum Frame {
        Reset { stream: u32, reason: u32 },
        GoAway { last_stream: u32, reason: u32 },
        Ping,
        Other,
    }

    /// The id of the `n`th stream a client opens (0-based): 1, 3, 5, …
    pub fn stream_id(n: u32) -> u32 {
        2 * n + 1
    }

    /// A connection whose client preface (and empty SETTINGS) is sent.
    pub struct Connection {
        reader: Reader,
        writer: OwnedWriteHalf,
    }

    /// The server's side of a [`Connection`], frame by frame.
    pub struct Reader {
        frames: BufReader<OwnedReadHalf>,
    }

    impl Connection {
        pub async fn open(app: &TestApp) -> Self {
            let tcp = TcpStream::connect(app.addr).await.expect("connects");
            let (reader, mut writer) = tcp.into_split();
            let mut hello = PREFACE.to_vec();
            hello.extend(frame(SETTINGS, 0, 0, &[]));
            writer.write_all(&hello).await.expect("the preface is sent");
            Self {
                reader: Reader {
                    frames: BufReader::new(reader),
                },
                writer,
            }
        }

        /// Opens streams 0..`count` (see [`stream_id`]), each a Validate
        /// call's headers with no body and no credential.
        pub async fn open_bodiless_streams(&mut self, count: u32) {
            self.writer
                .write_all(&bodiless_streams(0..count))
                .await
                .expect("the streams are sent");
        }

        pub async fn next_frame(&mut self) -> Option<Frame> {
            self.reader.next_frame().await
        }

        pub fn split(self) -> (Reader, OwnedWriteHalf) {
            (self.reader, self.writer)
        }
    }

    impl Reader {
        /// The next frame, or `None` once the server has closed the
        /// connection (or reset it).
        pub async fn next_frame(&mut self) -> Option<Frame> {
            let mut header = [0_u8; 9];
            self.frames.read_exact(&mut header).await.ok()?;
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0; length];
            self.frames.read_exact(&mut payload).await.ok()?;
            let word = |at: usize| {
                u32::from_be_bytes(payload[at..at + 4].try_into().expect("4 bytes")) & 0x7fff_ffff
            };
            Some(match header[3] {
                RST_STREAM => Frame::Reset {
                    stream: u32::from_be_bytes(header[5..9].try_into().expect("4 bytes")),
                    reason: word(0),
                },
                GOAWAY => Frame::GoAway {
                    last_stream: word(0),
                    reason: word(4),
                },
                PING => Frame::Ping,
                _ => Frame::Other,
            })
        }
    }

    /// HEADERS frames opening `streams` (see [`stream_id`]).
    pub fn bodiless_streams(streams: Range<u32>) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", super::VALIDATE),
            (":authority", "keyward"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            // HPACK: a literal field, not indexed, with a literal name;
            // every string here is shorter than 127 bytes.
            block.push(0);
            for text in [name, value] {
                block.push(u8::try_from(text.len()).expect("a short string"));
                block.extend_from_slice(text.as_bytes());
            }
        }
        streams
            .flat_map(|n| frame(HEADERS, END_HEADERS, stream_id(n), &block))
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
}

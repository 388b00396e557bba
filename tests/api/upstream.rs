//! What the tests of real proxies (nginx, Caddy) share: the server behind
//! them, a backend with no keyward code that records what reaches it, free
//! ports, and starting the proxy.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use keyward::{
    gateway::GatewaySettings,
    pb,
    server::Settings,
    testing::{TestApp, running_in_ci},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::gateway::{Keys, http};

/// Whether `program` runs here (`program args` succeeds); panics under CI
/// when it does not, since `.ci/run` installs every proxy a test runs.
pub(crate) fn proxy_ready(program: &str, args: &[&str]) -> bool {
    let missing = match Command::new(program).args(args).output() {
        Ok(output) if output.status.success() => return true,
        Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        Err(error) => format!("{program}: {error}"),
    };
    assert!(
        !running_in_ci(),
        "CI=true and {program} cannot run (apt-get install {program}): {missing}"
    );
    eprintln!("skipped: the {program} example needs {program} on PATH ({missing})");
    false
}

/// The requests the backend received: each one's headers, names lowercased.
pub(crate) type Seen = Arc<Mutex<Vec<HashMap<String, String>>>>;

/// A backend that answers every request `200 backend` and records it.
pub(crate) async fn backend() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head);
                let headers = head
                    .lines()
                    .skip(1)
                    .filter_map(|line| line.split_once(':'))
                    .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
                    .collect();
                record.lock().unwrap().push(headers);
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nbackend",
                    )
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A port free a moment ago.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server with an HTTP listener that believes `x-forwarded-for` from
/// 127.0.0.1, where the proxy under test runs, and the gateway tests' keys.
pub(crate) async fn server_behind_a_proxy() -> (TestApp, Keys) {
    let app = TestApp::builder()
        .settings(Settings {
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            gateway: GatewaySettings {
                trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
                ..GatewaySettings::default()
            },
            ..Settings::default()
        })
        .spawn()
        .await;
    let keys = crate::gateway::keys(&app).await;
    (app, keys)
}

/// The uid and gid a proxy runs as when the test runs as root.
const NOBODY: u32 = 65_534;

/// A command running `program`, as `nobody` when the test runs as root (a
/// proxy under test is never privileged), which then owns `paths`.
pub(crate) fn unprivileged(program: &str, paths: &[&Path]) -> Command {
    if !rustix::process::geteuid().is_root() {
        return Command::new(program);
    }
    for path in paths {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let mut command = Command::new("setpriv");
    command.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        program,
    ]);
    command
}

/// Waits until something listens on `addr`; panics after 20 s.
pub(crate) fn wait_until_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What every proxy example must do, checked through `proxy` in front of
/// the backend that records into `seen`: only a valid key holding the
/// route's permission passes, with keyward's facts about it and none a
/// client forged; each refusal is keyward's.
pub(crate) async fn only_valid_keys_pass(
    proxy: SocketAddr,
    app: &TestApp,
    keys: &Keys,
    seen: &Seen,
) {
    // Valid only from 10.0.0.0/8, which no client here is in.
    let (_, remote_only) = app
        .mint(pb::MintKeyRequest {
            roles: vec!["deployer".to_owned()],
            allowed_cidrs: vec!["10.0.0.0/8".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    let get = |path: &'static str, key: Option<&str>, forged: &[(&'static str, &'static str)]| {
        let authorization = key.map(|key| format!("Bearer {key}"));
        let forged = forged.to_vec();
        async move {
            let mut headers = forged;
            if let Some(value) = &authorization {
                headers.push(("authorization", value));
            }
            http(proxy, "GET", path, &headers, "").await
        }
    };
    let forged_id = [("x-keyward-key-id", "0000000000A")];

    let allowed = get("/deploy/42", Some(&keys.client), &forged_id).await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(allowed.body, "backend");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        // The client's forged x-keyward-key-id never reaches the backend,
        // nor does the proxy's own key.
        assert_eq!(seen[0]["x-keyward-key-id"], keys.client_id);
        assert_eq!(seen[0]["x-keyward-owner"], "ci");
        assert_eq!(seen[0]["x-keyward-roles"], "deployer");
        assert!(!seen[0].contains_key("x-keyward-gateway-key"));
    }

    let missing = get("/deploy/42", None, &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.headers["www-authenticate"],
        r#"Bearer realm="keyward""#
    );
    let tampered = format!("{}x", keys.client);
    assert_eq!(get("/deploy/42", Some(&tampered), &[]).await.status, 401);
    // Valid, but the route needs reports:read.
    assert_eq!(get("/reports/1", Some(&keys.client), &[]).await.status, 403);
    // The proxy sends keyward the client's own address, not one it claims.
    let elsewhere = get(
        "/deploy/3",
        Some(&remote_only),
        &[("x-forwarded-for", "10.1.2.3")],
    )
    .await;
    assert_eq!(elsewhere.status, 403, "{}", elsewhere.body);

    // The limited key has no owner: keyward's answer has no
    // x-keyward-owner, and the client's forged one must not pass either.
    let first = get(
        "/deploy/1",
        Some(&keys.limited),
        &[("x-keyward-owner", "root")],
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let over = get("/deploy/2", Some(&keys.limited), &[]).await;
    assert_eq!(over.status, 429, "{}", over.body);
    let wait: u64 = over.headers["retry-after"].parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");

    // Only the allowed requests reached the backend.
    let seen = seen.lock().unwrap();
    let ids: Vec<&str> = seen
        .iter()
        .map(|h| h["x-keyward-key-id"].as_str())
        .collect();
    assert_eq!(ids, [keys.client_id.as_str(), keys.limited_id.as_str()]);
    assert!(
        seen[1].get("x-keyward-owner").is_none_or(String::is_empty),
        "a client's x-keyward-owner reached the backend: {:?}",
        seen[1]
    );
}

//! `examples/nginx/nginx.conf` run by a real nginx in front of a backend
//! with no keyward code (a few lines of tokio below), against the real
//! server's forward-auth endpoint.
//!
//! nginx runs in a directory of its own (prefix, temp paths, pid, logs) on
//! free ports; as root it runs as `nobody` (`setpriv`), never privileged.
//! Needs `nginx` with the `auth_request` module (Debian's `nginx`; `.ci/run`
//! installs it): skipped with the reason printed when it is missing, failed
//! under `CI=true`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use keyward::{
    gateway::GatewaySettings,
    server::Settings,
    testing::{TestApp, running_in_ci},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::gateway::http;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/nginx/nginx.conf");

/// The uid and gid nginx runs as when the test runs as root.
const NOBODY: u32 = 65_534;

/// Whether nginx can run here; panics under CI when it cannot.
fn nginx_ready() -> bool {
    let missing = match Command::new("nginx").arg("-v").output() {
        Ok(output) if output.status.success() => return true,
        Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        Err(error) => format!("nginx: {error}"),
    };
    assert!(
        !running_in_ci(),
        "CI=true and nginx cannot run (apt-get install nginx): {missing}"
    );
    eprintln!("skipped: the nginx example needs nginx on PATH ({missing})");
    false
}

/// The requests the backend received: each one's headers, names lowercased.
type Seen = Arc<Mutex<Vec<HashMap<String, String>>>>;

/// A backend that answers every request `200 backend` and records it.
async fn backend() -> (SocketAddr, Seen) {
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
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx running the example, killed on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    /// A fast shutdown (SIGTERM), so the master stops its workers: killing
    /// the master alone would leave them running.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// The example with its addresses and gateway key replaced, and the
    /// paths nginx writes moved into a directory of its own.
    fn start(keyward: SocketAddr, backend: SocketAddr, gateway_key: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let root = root.as_path();
        let port = free_port();
        let temp_paths = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .map(|kind| format!("    {kind}_temp_path {};\n", root.join(kind).display()))
            .concat();
        let config = std::fs::read_to_string(EXAMPLE)
            .unwrap()
            .replace("127.0.0.1:8080", &keyward.to_string())
            .replace("127.0.0.1:9000", &backend.to_string())
            .replace("127.0.0.1:8000", &format!("127.0.0.1:{port}"))
            .replace("kw_REPLACE_WITH_THE_GATEWAY_KEY", gateway_key)
            .replacen(
                "http {\n",
                &format!(
                    "http {{\n{temp_paths}    access_log {};\n",
                    root.join("access.log").display()
                ),
                1,
            );
        assert!(
            config.contains(gateway_key),
            "the example names its gateway key"
        );
        let conf = root.join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let as_root = rustix::process::geteuid().is_root();
        if as_root {
            // Workers, and the master too, run as nobody.
            std::os::unix::fs::chown(root, Some(NOBODY), Some(NOBODY)).unwrap();
            std::os::unix::fs::chown(&conf, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let globals = format!(
            "daemon off; master_process on; pid {}; error_log stderr warn;",
            root.join("nginx.pid").display()
        );
        let mut command = if as_root {
            let mut command = Command::new("setpriv");
            command.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                "nginx",
            ]);
            command
        } else {
            Command::new("nginx")
        };
        let child = command
            .arg("-p")
            .arg(root)
            .arg("-e")
            .arg("stderr")
            .arg("-c")
            .arg(&conf)
            .arg("-g")
            .arg(globals)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx starts");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let nginx = Self {
            child,
            addr,
            _dir: dir,
        };
        nginx.wait_until_listening(root);
        nginx
    }

    fn wait_until_listening(&self, root: &Path) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {} (its directory: {})",
                self.addr,
                root.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nginx_example_lets_through_only_valid_keys_with_their_permission() {
    if !nginx_ready() {
        return;
    }
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
    let crate::gateway::Keys {
        gateway: gateway_key,
        client_id,
        client,
        limited_id,
        limited,
    } = crate::gateway::keys(&app).await;
    let (backend_addr, seen) = backend().await;
    let nginx = Nginx::start(app.http_addr.unwrap(), backend_addr, &gateway_key);
    let get = |path: &'static str, key: Option<&str>| {
        let authorization = key.map(|key| format!("Bearer {key}"));
        async move {
            let mut headers = vec![("x-keyward-key-id", "0000000000A")];
            if let Some(value) = &authorization {
                headers.push(("authorization", value));
            }
            http(nginx.addr, "GET", path, &headers, "").await
        }
    };

    let allowed = get("/deploy/42", Some(&client)).await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(allowed.body, "backend");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        // The client's forged x-keyward-key-id never reaches the backend.
        assert_eq!(seen[0]["x-keyward-key-id"], client_id);
        assert_eq!(seen[0]["x-keyward-owner"], "ci");
        assert_eq!(seen[0]["x-keyward-roles"], "deployer");
        assert!(!seen[0].contains_key("x-keyward-gateway-key"));
    }

    let missing = get("/deploy/42", None).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.headers["www-authenticate"],
        r#"Bearer realm="keyward""#
    );
    let tampered = format!("{client}x");
    assert_eq!(get("/deploy/42", Some(&tampered)).await.status, 401);
    // Valid, but the location needs reports:read.
    assert_eq!(get("/reports/1", Some(&client)).await.status, 403);

    assert_eq!(get("/deploy/1", Some(&limited)).await.status, 200);
    let over = get("/deploy/2", Some(&limited)).await;
    assert_eq!(over.status, 429, "{}", over.body);
    let wait: u64 = over.headers["retry-after"].parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");

    // Only the allowed requests reached the backend.
    let ids: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|h| h["x-keyward-key-id"].clone())
        .collect();
    assert_eq!(ids, [client_id, limited_id]);
}

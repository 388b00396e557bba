//! `examples/caddy/Caddyfile` run by a real Caddy in front of a backend with
//! no keyward code, against the real server's forward-auth endpoint.
//!
//! Caddy runs with its home and data in a directory of its own, on a free
//! port, as `nobody` when the test runs as root. Needs `caddy` (Debian's;
//! `.ci/run` installs it): skipped with the reason printed when it is
//! missing, failed under `CI=true`.

use std::{
    net::SocketAddr,
    process::{Child, Stdio},
};

use crate::upstream::{
    backend, free_port, only_valid_keys_pass, proxy_ready, server_behind_a_proxy, unprivileged,
    wait_until_listening,
};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/caddy/Caddyfile");

/// Caddy running the example, stopped on drop.
struct Caddy {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Caddy {
    /// The example with its addresses and gateway key replaced.
    fn start(keyward: SocketAddr, backend: SocketAddr, gateway_key: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let port = free_port();
        let config = std::fs::read_to_string(EXAMPLE)
            .unwrap()
            .replace("127.0.0.1:8080", &keyward.to_string())
            .replace("127.0.0.1:9000", &backend.to_string())
            .replace(":8000 {", &format!(":{port} {{"))
            .replace("kw_REPLACE_WITH_THE_GATEWAY_KEY", gateway_key);
        assert!(
            config.contains(gateway_key) && config.contains(&format!(":{port} {{")),
            "the example names its gateway key and its port"
        );
        let caddyfile = root.join("Caddyfile");
        std::fs::write(&caddyfile, config).unwrap();
        let mut command = unprivileged("caddy", &[root, &caddyfile]);
        let child = command
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&caddyfile)
            .env("HOME", root)
            .env("XDG_DATA_HOME", root)
            .env("XDG_CONFIG_HOME", root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("caddy starts");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_until_listening(addr, "caddy");
        Self {
            child,
            addr,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caddy_example_lets_through_only_valid_keys_with_their_permission() {
    if !proxy_ready("caddy", &["version"]) {
        return;
    }
    let (app, keys) = server_behind_a_proxy().await;
    let (backend_addr, seen) = backend().await;
    let caddy = Caddy::start(app.http_addr.unwrap(), backend_addr, &keys.gateway);
    only_valid_keys_pass(caddy.addr, &app, &keys, &seen).await;
}

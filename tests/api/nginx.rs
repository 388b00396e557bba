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
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

use crate::upstream::{
    backend, free_port, only_valid_keys_pass, proxy_ready, server_behind_a_proxy, unprivileged,
    wait_until_listening,
};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/nginx/nginx.conf");

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
        let globals = format!(
            "daemon off; master_process on; pid {}; error_log stderr warn;",
            root.join("nginx.pid").display()
        );
        // Workers, and the master too, run as nobody.
        let mut command = unprivileged("nginx", &[root, &conf]);
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
        wait_until_listening(addr, "nginx");
        Self {
            child,
            addr,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nginx_example_lets_through_only_valid_keys_with_their_permission() {
    if !proxy_ready("nginx", &["-v"]) {
        return;
    }
    let (app, keys) = server_behind_a_proxy().await;
    let (backend_addr, seen) = backend().await;
    let nginx = Nginx::start(app.http_addr.unwrap(), backend_addr, &keys.gateway);
    only_valid_keys_pass(nginx.addr, &app, &keys, &seen).await;
}

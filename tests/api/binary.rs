//! The `keyward` binary run as an operator runs it, for the tests of what
//! only a process has: signals, exit codes, stderr, the config file.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use keyward::tls::TlsFiles;
use tonic::transport::{Channel, ClientTlsConfig};

/// The example config, as shipped.
pub const EXAMPLE_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/keyward.toml");

/// How long the server gets to start, or to stop once asked.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A `keyward serve` process in a directory of its own, its stderr read line
/// by line. Killed on drop if still running.
pub struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    pub log: Vec<String>,
    /// The working directory.
    cwd: PathBuf,
    /// Kept until the process is gone, when the directory is the server's own.
    own_dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts `keyward serve ARGS` with `env`, on a fresh SQLite database
    /// in a new directory (the working directory, so relative paths in
    /// `ARGS` land there).
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self::start_in(dir.path(), args, env);
        server.own_dir = Some(dir);
        server
    }

    /// `keyward serve` from `examples/keyward.toml` (JSON logs, TLS) with
    /// `tls`'s files, on free ports (gRPC and metrics). The example's paths under `/var/lib`
    /// are replaced by the server's own directory, through the environment
    /// (which outranks the file); the first admin key goes to `admin.key`
    /// there.
    pub fn start_from_example_config(tls: &TlsFiles) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database = format!("sqlite://{}", dir.path().join("keyward.db").display());
        let key_file = dir.path().join("admin.key");
        let mut args = vec![
            "--config",
            EXAMPLE_CONFIG,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--tls-cert",
            tls.cert.to_str().unwrap(),
            "--tls-key",
            tls.key.to_str().unwrap(),
        ];
        if let Some(client_ca) = &tls.client_ca {
            args.extend(["--tls-client-ca", client_ca.to_str().unwrap()]);
        }
        let mut server = Self::start_in(
            dir.path(),
            &args,
            &[
                ("KEYWARD_DATABASE_URL", &database),
                ("KEYWARD_BOOTSTRAP_KEY_FILE", key_file.to_str().unwrap()),
            ],
        );
        server.own_dir = Some(dir);
        server
    }

    /// [`Server::start`] in the directory `cwd`, which outlives the server.
    pub fn start_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keyward"));
        command
            .arg("serve")
            .args(args)
            .current_dir(cwd)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars() {
            if name.starts_with("KEYWARD_") {
                command.env_remove(name);
            }
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("keyward starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            log: Vec::new(),
            cwd: cwd.to_owned(),
            own_dir: None,
        }
    }

    /// Waits for a line containing `needle`; returns it.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(why) => panic!(
                    "no line with {needle:?} ({why}); the log so far: {:#?}",
                    self.log
                ),
            }
        }
    }

    /// The address from the "keyward listening" line.
    pub fn wait_until_listening(&mut self) -> SocketAddr {
        address_in(&self.wait_for_line("keyward listening"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; its status.
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The rest of the log.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.log.push(line);
                }
                return status;
            }
            assert!(Instant::now() < deadline, "still running: {:#?}", self.log);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.cwd.join(name)
    }

    /// Sends SIGTERM, checks for a clean exit (status 0), and returns the
    /// whole log.
    pub fn terminate(mut self) -> String {
        self.signal("TERM");
        let status = self.wait_for_exit();
        assert!(status.success(), "graceful shutdown exits 0, got {status}");
        self.log.join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in a "keyward listening" line, text or JSON.
pub fn address_in(line: &str) -> SocketAddr {
    let pattern = regex::Regex::new(r#"addr(?:=|":")([0-9.:\[\]]+)"#).unwrap();
    pattern.captures(line).expect("the line names the address")[1]
        .parse()
        .expect("an address")
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connects")
}

/// A TLS connection to `addr` with `tls`.
pub async fn tls_channel(addr: SocketAddr, tls: ClientTlsConfig) -> Channel {
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("connects over TLS")
}

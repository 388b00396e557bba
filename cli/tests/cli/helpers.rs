//! What the CLI tests add to `keyward::testing`: the real `keywardctl`
//! binary run against a [`TestApp`] on a runtime of its own (the tests are
//! synchronous), with a check that no secret ever appears in its output.

use std::{cell::RefCell, path::PathBuf, time::Duration};

use assert_cmd::Command;
use keyward::{
    clock::SystemClock,
    server::Settings,
    testing::{Builder, TestApp},
};
use tempfile::TempDir;
use tokio::runtime::Runtime;

/// Every environment variable keywardctl reads: removed from each command so
/// that a value in the developer's shell cannot change a test.
const KEYWARD_ENV: &[&str] = &[
    "KEYWARD_SERVER",
    "KEYWARD_ADMIN_KEY",
    "KEYWARD_ADMIN_KEY_FILE",
    "KEYWARD_DATABASE_URL",
    "KEYWARD_CA_CERT",
    "KEYWARD_CLIENT_CERT",
    "KEYWARD_CLIENT_KEY",
];

/// `keywardctl` with a clean environment and a timeout, so a hang fails the
/// test instead of stalling the suite.
pub fn keywardctl() -> Command {
    let mut cmd = Command::cargo_bin("keywardctl").expect("the keywardctl binary is built");
    for var in KEYWARD_ENV {
        cmd.env_remove(var);
    }
    cmd.timeout(Duration::from_secs(30));
    cmd
}

/// What a command did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        assert!(self.stderr.is_empty(), "unexpected stderr: {self:#?}");
        &self.stdout
    }

    /// Asserts exit `code` with nothing on stdout and one `error: ` line on
    /// stderr containing every one of `needles`; returns that line.
    #[track_caller]
    pub fn fails(&self, code: i32, needles: &[&str]) -> &str {
        assert_eq!(self.code, code, "expected exit {code}: {self:#?}");
        assert!(self.stdout.is_empty(), "unexpected stdout: {self:#?}");
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "stderr lacks {needle:?}: {self:#?}"
            );
        }
        &self.stderr
    }

    /// Asserts a keywardctl error (exit 1, exactly one `error: ` line).
    #[track_caller]
    pub fn error(&self, needles: &[&str]) -> &str {
        let stderr = self.fails(1, needles);
        assert!(stderr.starts_with("error: "), "{self:#?}");
        assert_eq!(stderr.lines().count(), 1, "one line: {self:#?}");
        stderr
    }

    /// Parses stdout as JSON after asserting success.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {self:#?}"))
    }
}

/// Runs `cmd` with `stdin` and collects the outcome.
pub fn run(cmd: &mut Command, stdin: Option<&str>) -> Run {
    if let Some(stdin) = stdin {
        cmd.write_stdin(stdin);
    }
    let output = cmd.output().expect("keywardctl runs");
    Run {
        code: output.status.code().expect("keywardctl exited, not killed"),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

/// A running keyward server (on the wall clock, which `keywardctl` and the
/// rate limiter live by), stopped on drop.
pub struct TestServer {
    pub url: String,
    pub admin_key: String,
    pub admin_key_file: PathBuf,
    /// Keys that must never be printed (the admin key, keys being verified).
    secrets: RefCell<Vec<String>>,
    app: Option<TestApp<SystemClock>>,
    /// The directory of a database the test made itself.
    _database_dir: Option<TempDir>,
    runtime: Runtime,
}

impl TestServer {
    /// Starts a server on a fresh, uninitialised SQLite database: it
    /// initialises it and writes the first admin key to its bootstrap file.
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Like [`TestServer::start`], with `configure` changing the server's
    /// settings first (e.g. a short usage flush interval).
    pub fn start_with(configure: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = Settings::default();
        configure(&mut settings);
        let server = Self::spawn(
            TestApp::builder().clock(SystemClock).settings(settings),
            None,
        );
        assert!(
            !server.admin_key.is_empty(),
            "the server wrote no bootstrap key"
        );
        server
    }

    /// Starts a server on the existing database at `database_url` (inside
    /// `dir`, kept until the server stops, if it is a SQLite file). The admin
    /// key is empty when the database had been initialised before, since the
    /// server then writes none.
    pub fn start_on(dir: Option<TempDir>, database_url: &str) -> Self {
        Self::spawn(
            TestApp::builder()
                .clock(SystemClock)
                .database_url(database_url),
            dir,
        )
    }

    fn spawn(app: Builder<SystemClock>, database_dir: Option<TempDir>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let app = runtime.block_on(app.spawn());
        Self {
            url: app.url(),
            secrets: RefCell::new(
                Some(app.admin_key.clone())
                    .filter(|k| !k.is_empty())
                    .into_iter()
                    .collect(),
            ),
            admin_key: app.admin_key.clone(),
            admin_key_file: app.admin_key_file(),
            app: Some(app),
            _database_dir: database_dir,
            runtime,
        }
    }

    /// `keywardctl ARGS` against this server, authenticated through
    /// `KEYWARD_ADMIN_KEY`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = keywardctl();
        cmd.env("KEYWARD_SERVER", &self.url)
            .env("KEYWARD_ADMIN_KEY", &self.admin_key)
            .args(args);
        cmd
    }

    /// Runs `keywardctl ARGS` against this server and checks that no secret
    /// this test knows of appears in its output.
    pub fn run(&self, args: &[&str]) -> Run {
        self.check(run(&mut self.cmd(args), None))
    }

    /// Like [`TestServer::run`] with `stdin`.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Run {
        self.check(run(&mut self.cmd(args), Some(stdin)))
    }

    /// Runs an arbitrary command and applies the same secret check.
    pub fn run_cmd(&self, cmd: &mut Command, stdin: Option<&str>) -> Run {
        self.check(run(cmd, stdin))
    }

    /// Adds a key that must never be printed from now on (e.g. a minted key,
    /// once its mint output has been read).
    pub fn forbid_printing(&self, secret: &str) {
        assert!(!secret.is_empty(), "an empty secret would match everything");
        self.secrets.borrow_mut().push(secret.to_owned());
    }

    #[track_caller]
    fn check(&self, run: Run) -> Run {
        for secret in self.secrets.borrow().iter() {
            assert!(
                !run.stdout.contains(secret.as_str()) && !run.stderr.contains(secret.as_str()),
                "a secret key was printed: {run:#?}"
            );
        }
        run
    }

    /// Runs `future` on the server's runtime, where what it spawns (a fake
    /// OIDC issuer, say) keeps running for as long as the server.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Mints a key with `args` and returns `(id, plaintext)` from the JSON
    /// output.
    pub fn mint(&self, args: &[&str]) -> (String, String) {
        let mut full = vec!["mint", "--output", "json"];
        full.extend_from_slice(args);
        let json = self.run(&full).json();
        let id = json["id"].as_str().expect("id").to_owned();
        let key = json["key"].as_str().expect("key").to_owned();
        (id, key)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut app) = self.app.take() {
            // Wait for a clean stop, but never hang the suite on it; the
            // server's store goes with the runtime it was made on.
            self.runtime.block_on(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), app.stop()).await;
                drop(app);
            });
        }
    }
}

/// The value of `name` in `name  value` output, if present.
pub fn field<'a>(stdout: &'a str, name: &str) -> Option<&'a str> {
    let prefix = format!("{name}  ");
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .map(str::trim)
}

/// The cells of each line of a table (cells hold no spaces in these tests).
pub fn table_rows(stdout: &str) -> Vec<Vec<&str>> {
    stdout
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect()
}

//! The `keyward` binary as an operator runs it: settings from a config file,
//! the environment and flags in that order; log formats; and draining on
//! SIGTERM with calls in flight (issue 11).

use std::{
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::binary::{PATIENCE, Server, address_in, channel};
use keyward::{
    pb::{self, admin_service_client::AdminServiceClient},
    testing::authed,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_call_in_flight_then_exits_0() {
    const CALLS: usize = 200;
    let mut server = Server::start(&["--listen", "127.0.0.1:0", "--drain-timeout", "20s"], &[]);
    let addr = server.wait_until_listening();
    let admin_key = std::fs::read_to_string(server.path("keyward-admin.key")).unwrap();
    let admin_key = admin_key.trim().to_owned();

    // A load balancer watching health, on a connection of its own.
    let mut watch = HealthClient::new(channel(addr).await)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    // Mints queue for the one write turn, so most are still in flight when
    // the signal comes.
    let admin = AdminServiceClient::new(channel(addr).await);
    let answered = Arc::new(AtomicUsize::new(0));
    let calls: Vec<_> = (0..CALLS)
        .map(|n| {
            let mut admin = admin.clone();
            let answered = answered.clone();
            let request = authed(
                &admin_key,
                pb::MintKeyRequest {
                    owner: format!("drain-{n}"),
                    ..Default::default()
                },
            );
            tokio::spawn(async move {
                let result = admin.mint_key(request).await;
                answered.fetch_add(1, Ordering::SeqCst);
                result
            })
        })
        .collect();
    while answered.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.signal("TERM");
    let answered_before = answered.load(Ordering::SeqCst);
    assert!(
        answered_before < CALLS,
        "every call was answered before the signal; nothing was in flight"
    );

    // The process writes no core file, whatever its parent's limit.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let core = limits
        .lines()
        .find(|line| line.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );

    // Health turns NOT_SERVING at once, while the calls finish.
    let next = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .expect("health changes at once")
        .unwrap()
        .unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    drop(watch);

    for call in calls {
        let result = call.await.unwrap();
        assert!(
            result.is_ok(),
            "a call in flight at SIGTERM failed: {result:?}"
        );
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait_for_exit();
        (status, server)
    })
    .await
    .unwrap();
    let (status, server) = status;
    assert!(status.success(), "{status:?}: {:#?}", server.log);
    assert!(
        server
            .log
            .iter()
            .any(|line| line.contains("keyward stopped")),
        "{:#?}",
        server.log
    );
    // The listener is closed.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after exit"
    );
    // Every acknowledged mint is in the database: a restart lists them.
    let mut restarted = Server::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &format!("sqlite://{}", server.path("keyward.db").display()),
        ],
        &[],
    );
    let addr = restarted.wait_until_listening();
    let listed = AdminServiceClient::new(channel(addr).await)
        .list_keys(authed(
            &admin_key,
            pb::ListKeysRequest {
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let minted = listed
        .keys
        .iter()
        .filter(|key| key.owner.starts_with("drain-"))
        .count();
    assert_eq!(minted, CALLS);
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn settings_come_from_the_file_then_the_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    // The file asks for port 9 and text logs; a flag overrides the port and
    // the environment the log format.
    let config = write(
        dir.path(),
        "keyward.toml",
        "listen = \"127.0.0.1:9\"\nlog_format = \"text\"\ndrain_timeout = \"1s\"\n",
    );
    let mut server = Server::start(
        &["--config", &config, "--listen", "127.0.0.1:0"],
        &[("KEYWARD_LOG_FORMAT", "json")],
    );
    let line = server.wait_for_line("keyward listening");
    assert!(
        line.starts_with('{') && line.ends_with('}'),
        "not JSON: {line}"
    );
    assert!(line.contains(r#""level":"INFO""#), "{line}");
    let addr = address_in(&line);
    assert_ne!(addr.port(), 9, "the file won over the flag");
}

#[test]
fn a_bad_config_file_fails_start_up_naming_the_file_the_key_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "request_timeout = \"0s\"\n",
            "key `request_timeout`: must be longer than zero",
        ),
        (
            "listen = \"0.0.0.0:50051\"\nlisten_adress = \"x\"\n",
            "key `listen_adress`: unknown setting",
        ),
        (
            "max_concurrent_streams = [1]\n",
            "key `max_concurrent_streams`: expected a string or an integer, found array",
        ),
        (
            "log_format = \"xml\"\n",
            "key `log_format`: expected one of: text, json",
        ),
        (
            "database_url = \"postgres://kw:hunter2@db/keys\"\nlisten = \n",
            "line 2: not valid TOML",
        ),
    ];
    for (text, expected) in cases {
        let config = write(dir.path(), "bad.toml", text);
        let output = Command::new(env!("CARGO_BIN_EXE_keyward"))
            .args(["serve", "--config", &config, "--listen", "127.0.0.1:0"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(1), "{text}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{text}: one line: {stderr}");
        assert!(
            stderr.starts_with(&format!("keyward: error: config file {config}: ")),
            "{stderr}"
        );
        assert!(stderr.contains(expected), "{text}: {stderr}");
        assert!(!stderr.contains("hunter2"), "a secret was echoed: {stderr}");
    }
    // Nothing was started or created.
    assert!(!dir.path().join("keyward.db").exists());
}

#[test]
fn the_example_config_starts_a_server_that_reloads_certificates_on_sighup() {
    let pki = keyward::testing::tls::TestPki::new(false);
    let mut server = Server::start_from_example_config(&pki.files);
    // The example asks for metrics, JSON logs and TLS.
    server.wait_for_line("metrics served on /metrics");
    let line = server.wait_for_line("keyward listening");
    assert!(line.starts_with('{'), "{line}");
    assert!(line.contains(r#""tls":true"#), "{line}");
    // SIGHUP re-reads the certificates, and never ends the process.
    server.signal("HUP");
    server.wait_for_line("SIGHUP: TLS certificate files unchanged");
    keyward::testing::tls::TestCa::new("rotated")
        .server_identity()
        .write_to(pki.dir(), "server");
    server.signal("HUP");
    server.wait_for_line("TLS certificates reloaded");
    server.signal("TERM");
    assert!(server.wait_for_exit().success(), "{:#?}", server.log);
}

#[test]
fn the_systemd_unit_runs_flags_that_exist_and_is_hardened() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/systemd/keyward.service"
    ))
    .unwrap();
    let directive = |name: &str| {
        unit.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("the unit has no {name}="))
            .to_owned()
    };
    let exec_start = directive("ExecStart");
    let mut words = exec_start.split_whitespace();
    assert!(words.next().unwrap().ends_with("/keyward"));
    assert_eq!(words.next(), Some("serve"));
    let args: Vec<&str> = words.collect();
    // Every flag is one `keyward serve` takes: parsing them with `--help`
    // appended fails on an unknown flag, and the help names each.
    let output = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("serve")
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for flag in args.iter().filter(|arg| arg.starts_with("--")) {
        assert!(help.contains(flag), "{flag} is not a flag of keyward serve");
    }
    for (name, value) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "keyward"),
        ("StateDirectoryMode", "0700"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("LimitCORE", "0"),
    ] {
        assert_eq!(directive(name), value, "{name}");
    }
    // Its state lives in the state directory.
    assert!(exec_start.contains("/var/lib/keyward/"), "{exec_start}");
}

/// Refused credentials are the client's to cause at will: a flood of them
/// writes a few log lines a second, not one each (security review, issue 12:
/// 1,300–1,850 lines a second from one client buried every other line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_credentials_writes_a_few_log_lines() {
    const CALLS: usize = 500;
    let mut server = Server::start(&["--listen", "127.0.0.1:0"], &[]);
    let addr = server.wait_until_listening();
    let mut admin = AdminServiceClient::new(channel(addr).await);
    let started = std::time::Instant::now();
    for n in 0..CALLS {
        let bad = authed(&format!("kw_not-a-key-{n}"), pb::ListKeysRequest::default());
        let status = admin.list_keys(bad).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
    let seconds = started.elapsed().as_secs() + 1;
    // The first line of a later second says how many were held back.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let late = authed("kw_not-a-key-late", pb::ListKeysRequest::default());
    admin.list_keys(late).await.unwrap_err();
    let log = server.terminate();
    let refusals = log
        .lines()
        .filter(|line| line.contains("caller key refused"))
        .count();
    assert!(refusals > 0, "refusals are still logged: {log}");
    // Ten a second over the seconds the flood spanned, and the late one.
    let budget = usize::try_from(10 * (seconds + 1) + 1).unwrap();
    assert!(
        refusals <= budget,
        "{refusals} lines for {CALLS} refusals in {seconds} s (budget {budget})"
    );
    let held_back = regex::Regex::new(r"held_back=([0-9]+)").unwrap();
    let reported: usize = held_back
        .captures_iter(&log)
        .map(|found| found[1].parse::<usize>().unwrap())
        .sum();
    assert_eq!(
        reported + refusals - 1,
        CALLS,
        "every refusal is either logged or counted as held back"
    );
}

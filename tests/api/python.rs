//! A client no one here wrote: the Python example (`examples/python/`,
//! grpcio with stubs generated at run time) validates keys over TLS against
//! the `keyward` binary started from the example config (issue 11).
//!
//! Needs `python3` with `grpcio` and `grpcio-tools` (`.ci/run` installs
//! them): skipped with the reason printed when they are missing, failed
//! under `CI=true`.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use keyward::{
    pb::{self, admin_service_client::AdminServiceClient},
    testing::{
        authed, running_in_ci,
        tls::{TestPki, client_config},
    },
};

use crate::binary::{Server, address_in, tls_channel};

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/python/validate_key.py"
);

/// Whether Python can run the example; panics under CI when it cannot.
fn python_ready() -> bool {
    let check = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output();
    let missing = match check {
        Ok(output) if output.status.success() => return true,
        Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        Err(error) => format!("python3: {error}"),
    };
    assert!(
        !running_in_ci(),
        "CI=true and the Python example cannot run (pip install grpcio grpcio-tools): {missing}"
    );
    eprintln!("skipped: the Python example needs python3 with grpcio and grpcio-tools ({missing})");
    false
}

/// Runs the example with `presented` on stdin; (exit code, stdout, stderr).
fn run_example(args: &[&str], validator_key: &str, presented: &str) -> (i32, String, String) {
    let mut child = Command::new("python3")
        .arg(EXAMPLE)
        .args(args)
        .env("KEYWARD_VALIDATOR_KEY", validator_key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    writeln!(child.stdin.take().unwrap(), "{presented}").unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().expect("exited"),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_validates_keys_over_mtls() {
    if !python_ready() {
        return;
    }
    let pki = TestPki::new(true);
    let mut server = Server::start_from_example_config(&pki.files);
    let addr = address_in(&server.wait_for_line("keyward listening"));
    let admin_key = std::fs::read_to_string(server.path("admin.key"))
        .unwrap()
        .trim()
        .to_owned();

    let operator = pki.client_ca.client_identity("operator");
    let admin = AdminServiceClient::new(
        tls_channel(addr, client_config(&pki.server_ca, Some(&operator))).await,
    );
    let mint = |request: pb::MintKeyRequest| {
        let mut admin = admin.clone();
        let request = authed(&admin_key, request);
        async move { admin.mint_key(request).await.unwrap().into_inner() }
    };
    let validator = mint(pb::MintKeyRequest {
        roles: vec!["validator".to_owned()],
        owner: "python-backend".to_owned(),
        ..Default::default()
    })
    .await;
    let client = mint(pb::MintKeyRequest {
        permissions: vec!["deploy:write".to_owned()],
        owner: "ci".to_owned(),
        ..Default::default()
    })
    .await;
    let client_id = client.key.unwrap().id;

    let (backend_cert, backend_key) = pki
        .client_ca
        .client_identity("python-backend")
        .write_to(pki.dir(), "python-backend");
    let server_arg = format!("localhost:{}", addr.port());
    let ca = pki.server_ca_path();
    let args = |permission: &'static str| {
        vec![
            "--server".to_owned(),
            server_arg.clone(),
            "--ca-cert".to_owned(),
            ca.display().to_string(),
            "--client-cert".to_owned(),
            backend_cert.display().to_string(),
            "--client-key".to_owned(),
            backend_key.display().to_string(),
            "--permission".to_owned(),
            permission.to_owned(),
        ]
    };
    let run = |args: Vec<String>, presented: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_example(&args, &validator.plaintext, presented)
    };

    let (code, stdout, stderr) = run(args("deploy:write"), &client.plaintext);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(r#""valid": true"#), "{stdout}");
    assert!(
        stdout.contains(&format!(r#""key_id": "{client_id}""#)),
        "{stdout}"
    );
    assert!(stdout.contains(r#""owner": "ci""#), "{stdout}");

    let (code, stdout, _) = run(args("deploy:admin"), &client.plaintext);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains(r#""denial": "FORBIDDEN""#), "{stdout}");

    let tampered = format!("{}x", client.plaintext);
    let (code, stdout, _) = run(args("deploy:write"), &tampered);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains(r#""denial": "INVALID""#), "{stdout}");

    // Without its client certificate the backend is refused at the handshake.
    let mut no_certificate = args("deploy:write");
    no_certificate.drain(4..8);
    let (code, stdout, stderr) = run(no_certificate, &client.plaintext);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("UNAVAILABLE"), "{stderr}");

    for output in [&stdout, &stderr] {
        assert!(!output.contains(&client.plaintext), "a key was printed");
    }
    server.signal("TERM");
    assert!(server.wait_for_exit().success(), "{:#?}", server.log);
}

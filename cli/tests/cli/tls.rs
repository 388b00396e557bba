//! keywardctl over TLS: `https://` URLs, `--ca-cert`, and client
//! certificates for a server that requires them (mTLS).

use keyward::testing::tls::TestPki;

use crate::helpers::TestServer;

fn https(server: &TestServer) -> String {
    server.url.replacen("http://", "https://", 1)
}

#[test]
fn keywardctl_speaks_tls_to_a_server_it_trusts() {
    let pki = TestPki::new(false);
    let server = TestServer::start_with(|settings| settings.tls = Some(pki.files.clone()));
    let ca = pki.server_ca_path();
    let ca = ca.to_str().unwrap();

    let mut trusted = server.cmd(&["list", "--ca-cert", ca]);
    trusted.env("KEYWARD_SERVER", https(&server));
    let listed = server.run_cmd(&mut trusted, None);
    assert!(listed.ok().contains("admin"), "{listed:#?}");

    // The same through the environment.
    let mut from_env = server.cmd(&["list"]);
    from_env
        .env("KEYWARD_SERVER", https(&server))
        .env("KEYWARD_CA_CERT", ca);
    server.run_cmd(&mut from_env, None).ok();

    // Without --ca-cert the system's CAs are trusted, and none of them signed
    // the test certificate: refused before the admin key is sent.
    let mut untrusted = server.cmd(&["list"]);
    untrusted.env("KEYWARD_SERVER", https(&server));
    server
        .run_cmd(&mut untrusted, None)
        .error(&["cannot reach keyward"]);

    // Plaintext to a TLS port gets nowhere.
    server.run(&["list"]).error(&[
        "cannot reach keyward",
        "does it serve TLS? then use an https:// URL",
    ]);

    // Certificates for an http:// URL: the operator expects TLS and would
    // not get it.
    server
        .run(&["list", "--ca-cert", ca])
        .fails(2, &["need an https:// server URL"]);
}

#[test]
fn keywardctl_presents_its_client_certificate() {
    let pki = TestPki::new(true);
    let server = TestServer::start_with(|settings| settings.tls = Some(pki.files.clone()));
    let (cert, key) = pki
        .client_ca
        .client_identity("ops-laptop")
        .write_to(pki.dir(), "client");
    let ca = pki.server_ca_path();
    let args = |extra: &[&str]| {
        let mut args = vec!["list", "--ca-cert", ca.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = server.cmd(&args);
        cmd.env("KEYWARD_SERVER", https(&server));
        server.run_cmd(&mut cmd, None)
    };

    run(args(&[
        "--client-cert",
        cert.to_str().unwrap(),
        "--client-key",
        key.to_str().unwrap(),
    ]))
    .ok();
    run(args(&[])).error(&[
        "cannot reach keyward",
        "does it require a client certificate",
    ]);
    // One without the other is a usage error.
    run(args(&["--client-cert", cert.to_str().unwrap()])).fails(2, &["--client-key"]);
}

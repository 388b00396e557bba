//! End-to-end tests of `keywardctl trust ...`, `exchange` and
//! `revoke --self`: a CI job's path from an OIDC identity token (signed by
//! `keyward::testing::oidc::FakeIssuer`) to a key it uses and then ends.

use std::io::Write as _;

use keyward::testing::oidc::FakeIssuer;
use serde_json::json;

use crate::helpers::{TestServer, field, table_rows};

/// A server allowing the fake issuer's `http://`, with role `deployer`.
fn server_and_issuer() -> (TestServer, FakeIssuer) {
    let server = TestServer::start_with(|settings| settings.oidc.allow_http_issuers = true);
    let issuer = server.block_on(FakeIssuer::start());
    server
        .run(&["role", "create", "deployer", "--permission", "deploy:write"])
        .ok();
    (server, issuer)
}

/// `trust create deploy` for `acme/api`'s tokens, role `deployer` for ten
/// minutes, and `extra` flags.
fn create_deploy(server: &TestServer, issuer: &FakeIssuer, extra: &[&str]) -> String {
    let mut args = vec![
        "trust",
        "create",
        "deploy",
        "--issuer",
        issuer.url(),
        "--audience",
        "keyward",
        "--claim",
        "repository=acme/api",
        "--role",
        "deployer",
        "--ttl",
        "10m",
    ];
    args.extend_from_slice(extra);
    server.run(&args).ok().to_owned()
}

/// A token for `acme/api` on `main`, audience `keyward`.
fn job_token(issuer: &FakeIssuer) -> String {
    issuer.sign(&issuer.claims(
        "keyward",
        &json!({"repository": "acme/api", "ref": "refs/heads/main"}),
    ))
}

#[test]
fn trust_create_list_show_update_delete_round_trip() {
    let (server, issuer) = server_and_issuer();
    let created = create_deploy(
        &server,
        &issuer,
        &["--claim", "ref=refs/heads/main", "--label", "team=payments"],
    );
    let stdout = created.as_str();
    assert!(
        stdout.starts_with("Created trust policy deploy.\n\n"),
        "{stdout}"
    );
    assert_eq!(field(stdout, "issuer"), Some(issuer.url()));
    assert_eq!(
        field(stdout, "required claims"),
        Some("ref=refs/heads/main, repository=acme/api")
    );
    assert_eq!(field(stdout, "ttl"), Some("10m"));

    let list = server.run(&["trust", "list"]);
    let rows = table_rows(list.ok());
    assert_eq!(rows[0][0], "NAME");
    assert_eq!(rows[1][0], "deploy");
    let json = server.run(&["trust", "list", "--output", "json"]).json();
    assert_eq!(json[0]["name"], "deploy");
    assert_eq!(json[0]["ttl_seconds"], 600);

    let updated = server.run(&[
        "trust",
        "update",
        "deploy",
        "--ttl",
        "5m",
        "--claim",
        "repository=acme/*",
    ]);
    assert!(updated.ok().starts_with("Updated trust policy deploy."));
    let shown = server
        .run(&["trust", "show", "deploy", "--output", "json"])
        .json();
    assert_eq!(shown["ttl"], "5m");
    assert_eq!(shown["required_claims"], json!({"repository": "acme/*"}));
    assert_eq!(shown["roles"], json!(["deployer"]), "kept: not given");
    assert_eq!(shown["labels"], json!({"team": "payments"}));

    // The server's checks come back naming the field.
    server
        .run(&["trust", "update", "deploy", "--ttl", "2h"])
        .fails(1, &["invalid argument", "ttl"]);
    // Flags clap checks: a create without an issuer is a usage error.
    server
        .run(&["trust", "create", "x", "--audience", "a", "--ttl", "1m"])
        .fails(2, &["--issuer"]);

    let deleted = server.run(&["trust", "delete", "deploy", "--output", "json"]);
    assert_eq!(deleted.json(), json!({"name": "deploy", "deleted": true}));
    server
        .run(&["trust", "show", "deploy"])
        .fails(1, &["not found"]);
}

/// The job: an identity token, no keyward secret; a key it uses, then
/// revokes itself.
#[test]
fn a_job_exchanges_its_token_uses_the_key_and_revokes_it() {
    let (server, issuer) = server_and_issuer();
    create_deploy(&server, &issuer, &[]);

    // From a file, as GitLab CI writes one; JSON like mint's.
    let token = job_token(&issuer);
    server.forbid_printing(&token);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "{token}").unwrap();
    let path = file.path().to_str().unwrap();
    // The job has no admin key at all.
    let mut cmd = server.cmd(&[
        "exchange",
        "--policy",
        "deploy",
        "--token-file",
        path,
        "--output",
        "json",
    ]);
    cmd.env_remove("KEYWARD_ADMIN_KEY");
    let json = server.run_cmd(&mut cmd, None).json();
    let (id, key) = (
        json["id"].as_str().unwrap().to_owned(),
        json["key"].as_str().unwrap().to_owned(),
    );
    assert_eq!(json["roles"], json!(["deployer"]));
    assert_eq!(json["labels"]["oidc.claim.repository"], "acme/api");

    // The same token again: refused, with the one generic message.
    let mut again = server.cmd(&["exchange", "--policy", "deploy", "--token-file", path]);
    again.env_remove("KEYWARD_ADMIN_KEY");
    server
        .run_cmd(&mut again, None)
        .error(&["identity token was refused", "log says why"]);

    // From stdin, as text.
    let second = job_token(&issuer);
    server.forbid_printing(&second);
    let text = server.run_with_stdin(&["exchange", "--policy", "deploy"], &second);
    let stdout = text.ok();
    assert!(
        stdout.starts_with("Exchanged the token for key "),
        "{stdout}"
    );
    let other_key = field(stdout, "key").unwrap().to_owned();
    assert!(other_key.starts_with("kw_"));

    // The key works, for what the policy grants.
    server
        .run_with_stdin(&["verify", "--permission", "deploy:write"], &key)
        .ok();

    // The job's last step: the key revokes itself.
    let mut revoke = server.cmd(&["revoke", "--self"]);
    revoke.env("KEYWARD_ADMIN_KEY", &key);
    let revoked = server.run_cmd(&mut revoke, None);
    assert!(
        revoked.ok().starts_with(&format!("Revoked key {id}")),
        "{revoked:?}"
    );
    server.forbid_printing(&key);
    let refused = server.run_with_stdin(&["verify"], &key);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stdout.contains("INVALID"), "{refused:?}");
    // And it cannot revoke itself twice: it is no longer a key.
    let mut twice = server.cmd(&["revoke", "--self"]);
    twice.env("KEYWARD_ADMIN_KEY", &key);
    server.run_cmd(&mut twice, None).error(&["not accepted"]);
    // The other key is untouched.
    server
        .run_with_stdin(&["verify", "--permission", "deploy:write"], &other_key)
        .ok();
    // No token on stdin or in the file is a clear error.
    server
        .run_with_stdin(&["exchange", "--policy", "deploy"], "  \n")
        .error(&["no identity token"]);
}

//! The real `keyward` binary: secrets never reach disk or logs, the audit
//! log records every change, shutdown is graceful, and start-up failures are
//! one clear line.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use keyward::{
    pb::{self, admin_service_client::AdminServiceClient, key_service_client::KeyServiceClient},
    testing::authed,
};
use sqlx::{Connection, Row, SqliteConnection};

use crate::binary::{Server, address_in, channel};

/// Starts `keyward serve` on a database in `dir`, logging at trace level,
/// and waits until it listens.
/// Returns the server and its gRPC, metrics and HTTP addresses.
fn start_server(dir: &Path) -> (Server, SocketAddr, SocketAddr, SocketAddr) {
    let database = format!("sqlite://{}", dir.join("keyward.db").display());
    let key_file = dir.join("admin.key").display().to_string();
    let mut server = Server::start_in(
        dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &database,
            "--bootstrap-key-file",
            &key_file,
            "--metrics-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
        &[("RUST_LOG", "trace")],
    );
    let metrics = address_in(&server.wait_for_line("metrics served on /metrics"));
    let http = address_in(&server.wait_for_line("HTTP served on"));
    let addr = server.wait_until_listening();
    (server, addr, metrics, http)
}

fn serve_command(dir: &Path, listen: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyward"));
    command
        .arg("serve")
        .args(["--listen", listen])
        .args([
            "--database-url",
            &format!("sqlite://{}", dir.join("keyward.db").display()),
        ])
        .args([
            "--bootstrap-key-file",
            &dir.join("admin.key").display().to_string(),
        ])
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_database_or_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr, metrics, http) = start_server(dir.path());
    let admin_key = std::fs::read_to_string(dir.path().join("admin.key"))
        .unwrap()
        .trim()
        .to_owned();
    let mut admin = AdminServiceClient::new(channel(addr).await);
    let mut keys = KeyServiceClient::new(channel(addr).await);

    let mut plaintexts = vec![admin_key.clone()];
    let minted = admin
        .mint_key(authed(
            &admin_key,
            pb::MintKeyRequest {
                roles: vec!["validator".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    plaintexts.push(minted.plaintext.clone());
    let id = minted.key.unwrap().id;
    for presented in [
        minted.plaintext.clone(),
        format!("{}x", &minted.plaintext[..minted.plaintext.len() - 1]),
    ] {
        let request = pb::ValidateRequest {
            key: presented.clone(),
            required_permissions: vec!["keyward:validate".into()],
            ..Default::default()
        };
        keys.validate(authed(&admin_key, request)).await.unwrap();
        gateway_checks(addr, http, &admin_key, &presented).await;
    }
    let rotated = admin
        .rotate_key(authed(
            &admin_key,
            pb::RotateKeyRequest {
                id: id.clone(),
                grace: Some(Duration::from_mins(1).try_into().unwrap()),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    plaintexts.push(rotated.plaintext.clone());
    let successor = rotated.key.unwrap().id;
    admin
        .revoke_key(authed(
            &admin_key,
            pb::RevokeKeyRequest {
                id: successor.clone(),
                reason: "test".into(),
            },
        ))
        .await
        .unwrap();
    // The other writes: a rate limit on a key, a bulk revocation by label
    // of a key minted for it, and a role's whole life.
    admin
        .update_key(authed(
            &admin_key,
            pb::UpdateKeyRequest {
                id: id.clone(),
                rate_limit: Some(pb::RateLimit {
                    requests: 10,
                    per: Some(Duration::from_secs(1).try_into().unwrap()),
                    burst: 10,
                }),
                clear_rate_limit: false,
            },
        ))
        .await
        .unwrap();
    let batch = admin
        .mint_key(authed(
            &admin_key,
            pb::MintKeyRequest {
                roles: vec!["validator".into()],
                labels: [("batch".to_owned(), "leaked".to_owned())].into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    plaintexts.push(batch.plaintext.clone());
    let batch_id = batch.key.unwrap().id;
    let revoked = admin
        .revoke_keys(authed(
            &admin_key,
            pb::RevokeKeysRequest {
                labels: [("batch".to_owned(), "leaked".to_owned())].into(),
                reason: "test".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.key_ids, std::slice::from_ref(&batch_id));
    admin
        .create_role(authed(
            &admin_key,
            pb::CreateRoleRequest {
                name: "deployer".into(),
                permissions: vec!["deploy:write".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    admin
        .update_role(authed(
            &admin_key,
            pb::UpdateRoleRequest {
                name: "deployer".into(),
                add_permissions: vec!["deploy:read".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    admin
        .get_role(authed(
            &admin_key,
            pb::GetRoleRequest {
                name: "deployer".into(),
            },
        ))
        .await
        .unwrap();
    admin
        .delete_role(authed(
            &admin_key,
            pb::DeleteRoleRequest {
                name: "deployer".into(),
            },
        ))
        .await
        .unwrap();
    // A caller presenting a key with a wrong secret (the admin key's id):
    // refused and logged, by id only.
    let wrong_caller = format!("{}x", &admin_key[..admin_key.len() - 1]);
    let refused = admin
        .get_key(authed(&wrong_caller, pb::GetKeyRequest { id: id.clone() }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    plaintexts.push(wrong_caller);

    // The reads, which change nothing: what they answer and log holds no
    // secret either.
    let get = |id: &str| pb::GetKeyRequest { id: id.to_owned() };
    admin.get_key(authed(&admin_key, get(&id))).await.unwrap();
    admin
        .list_keys(authed(&admin_key, pb::ListKeysRequest::default()))
        .await
        .unwrap();
    admin
        .list_audit_records(authed(&admin_key, pb::ListAuditRecordsRequest::default()))
        .await
        .unwrap();
    admin
        .list_roles(authed(&admin_key, pb::ListRolesRequest::default()))
        .await
        .unwrap();
    let (_, _, scraped) = crate::metrics::http_get(metrics, "/metrics").await;
    assert!(scraped.contains("keyward_validate_total"), "{scraped}");
    let log = server.terminate();

    assert!(
        log.contains("admin.key"),
        "the log names the bootstrap key file"
    );
    assert!(log.contains(&id), "the log identifies keys by id");
    let mut files = vec![
        ("log".to_owned(), log.into_bytes()),
        ("metrics".to_owned(), scraped.into_bytes()),
    ];
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "admin.key" {
            files.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    assert!(files.len() >= 2, "the database file was read");
    for plaintext in &plaintexts {
        let secret = &plaintext[3 + 11..3 + 44];
        for (name, bytes) in &files {
            let text = String::from_utf8_lossy(bytes);
            assert!(!text.contains(secret), "a secret leaked into {name}");
        }
    }

    // Every change left one audit record, with its actor and no secret.
    let url = format!("sqlite://{}", dir.path().join("keyward.db").display());
    let mut db = SqliteConnection::connect(&url).await.unwrap();
    let rows = sqlx::query("SELECT actor, action, target FROM audit_log ORDER BY seq")
        .fetch_all(&mut db)
        .await
        .unwrap();
    let admin_id = &admin_key[3..14];
    let records: Vec<(Option<String>, String, String)> = rows
        .iter()
        .map(|row| (row.get("actor"), row.get("action"), row.get("target")))
        .collect();
    assert_eq!(
        records,
        [
            (None, "initialize".to_owned(), admin_id.to_owned()),
            (Some(admin_id.to_owned()), "key.mint".to_owned(), id.clone()),
            (
                Some(admin_id.to_owned()),
                "key.rotate".to_owned(),
                id.clone()
            ),
            (
                Some(admin_id.to_owned()),
                "key.mint".to_owned(),
                successor.clone()
            ),
            (
                Some(admin_id.to_owned()),
                "key.revoke".to_owned(),
                successor
            ),
            (
                Some(admin_id.to_owned()),
                "key.update".to_owned(),
                id.clone()
            ),
            (
                Some(admin_id.to_owned()),
                "key.mint".to_owned(),
                batch_id.clone()
            ),
            (Some(admin_id.to_owned()), "key.revoke".to_owned(), batch_id),
            (
                Some(admin_id.to_owned()),
                "role.create".to_owned(),
                "deployer".to_owned()
            ),
            (
                Some(admin_id.to_owned()),
                "role.update".to_owned(),
                "deployer".to_owned()
            ),
            (
                Some(admin_id.to_owned()),
                "role.delete".to_owned(),
                "deployer".to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn bootstrap_key_file_is_private_and_never_logged() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (server, _, _, _) = start_server(dir.path());
    let key_file = dir.path().join("admin.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    let db_mode = std::fs::metadata(dir.path().join("keyward.db"))
        .unwrap()
        .permissions()
        .mode();
    let admin_key = std::fs::read_to_string(&key_file).unwrap();
    let log = server.terminate();
    assert_eq!((mode & 0o777, db_mode & 0o777), (0o600, 0o600));
    assert!(!log.contains(admin_key.trim()));

    // A second start on the same database keeps the file and mints nothing.
    let (again, _, _, _) = start_server(dir.path());
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), admin_key);
    let log = again.terminate();
    assert!(!log.contains("initialised a new database"), "{log}");
}

/// Runs `serve`, which must fail to start, and returns its stderr: one line.
fn start_fails(serve: &mut Command) -> String {
    let output = serve.env("RUST_LOG", "off").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn a_port_in_use_is_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let stderr = start_fails(&mut serve_command(dir.path(), &addr));
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

#[test]
fn an_unwritable_database_path_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = start_fails(
        Command::new(env!("CARGO_BIN_EXE_keyward"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                "sqlite:///dev/null/keyward.db",
            ])
            .current_dir(dir.path()),
    );
    assert!(
        stderr.contains("cannot create database file /dev/null/keyward.db"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_postgres_is_one_line_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: refused at once, whatever the machine runs.
    let url = "postgres://keyward:hunter2@127.0.0.1:1/keyward";
    let stderr = start_fails(
        Command::new(env!("CARGO_BIN_EXE_keyward"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-acquire-timeout",
                "1s",
            ])
            .env("KEYWARD_DATABASE_URL", url)
            .current_dir(dir.path()),
    );
    assert!(
        stderr.contains("cannot open database postgres://127.0.0.1:1/keyward"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let help = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["serve", "--help"])
        .env("KEYWARD_DATABASE_URL", url)
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("KEYWARD_DATABASE_URL"), "{help}");
    assert!(!help.contains("hunter2"), "{help}");
}

/// Every gateway path sees `presented`: ext_authz `Check`, forward-auth,
/// JSON Validate (well-formed, and in a body that is not JSON).
async fn gateway_checks(grpc: SocketAddr, http: SocketAddr, caller: &str, presented: &str) {
    use envoy_types::pb::envoy::service::auth::v3::{
        AttributeContext, CheckRequest,
        attribute_context::{HttpRequest, Request},
        authorization_client::AuthorizationClient,
    };
    let bearer = format!("Bearer {presented}");
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    headers: [("authorization".to_owned(), bearer.clone())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    AuthorizationClient::new(channel(grpc).await)
        .check(authed(caller, request))
        .await
        .unwrap();
    let forwarded = crate::gateway::http(
        http,
        "GET",
        "/v1/forward-auth",
        &[
            ("x-keyward-gateway-key", caller),
            ("authorization", &bearer),
        ],
        "",
    )
    .await;
    assert!(forwarded.status == 200 || forwarded.status == 401);
    let caller = format!("Bearer {caller}");
    for body in [
        format!(r#"{{"key":"{presented}"}}"#),
        format!(r#"{{"key":["{presented}"]}}"#),
    ] {
        crate::gateway::http(
            http,
            "POST",
            "/v1/keys:validate",
            &[("authorization", &caller)],
            &body,
        )
        .await;
    }
}

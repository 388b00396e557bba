//! A client no one here wrote: the Python example (`examples/python/`,
//! grpcio with stubs generated at run time) validates keys over TLS against
//! the `keyward` binary started from the example config (issue 11).
//!
//! Envoy's ext_authz `Check` is called by `examples/envoy/check.py`, with
//! the generated code of Envoy's API that Envoy's project publishes
//! (`xds-protos`), for each outcome.
//!
//! Needs `python3` with `grpcio`, `grpcio-tools` and `xds-protos` (`.ci/run`
//! installs them): skipped with the reason printed when they are missing,
//! failed under `CI=true`.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use keyward::{
    pb::{self, admin_service_client::AdminServiceClient},
    testing::{
        TestApp, authed, running_in_ci,
        tls::{TestPki, client_config},
    },
};

use crate::binary::{Server, address_in, tls_channel};

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/python/validate_key.py"
);

/// Envoy's side of ext_authz, with Envoy's own generated Python code
/// (`xds-protos`).
const CHECK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/envoy/check.py");

/// Whether Python can import `modules` (installed by `pip install
/// packages`); panics under CI when it cannot.
fn python_ready(modules: &str, packages: &str) -> bool {
    let check = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output();
    let missing = match check {
        Ok(output) if output.status.success() => return true,
        Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        Err(error) => format!("python3: {error}"),
    };
    assert!(
        !running_in_ci(),
        "CI=true and the Python example cannot run (pip install {packages}): {missing}"
    );
    eprintln!("skipped: the Python example needs python3 with {packages} ({missing})");
    false
}

/// Runs the example with `presented` on stdin; (exit code, stdout, stderr).
fn run_example(args: &[&str], validator_key: &str, presented: &str) -> (i32, String, String) {
    run_script(
        EXAMPLE,
        args,
        ("KEYWARD_VALIDATOR_KEY", validator_key),
        presented,
    )
}

/// Runs a Python `script` with `args`, one variable of the environment
/// (`env`: the caller's key), and `presented` on stdin; (exit code, stdout,
/// stderr).
fn run_script(
    script: &str,
    args: &[&str],
    env: (&str, &str),
    presented: &str,
) -> (i32, String, String) {
    let mut child = Command::new("python3")
        .arg(script)
        .args(args)
        .env(env.0, env.1)
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
    if !python_ready("grpc, grpc_tools", "grpcio grpcio-tools") {
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

/// A denial to expect: the script's arguments, the key, the gRPC code, the
/// HTTP status, and the header that goes with it.
type Case<'a> = (&'a [&'a str], &'a str, i64, i64, Option<&'a str>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_xds_protos_client_gets_each_answer_of_ext_authz() {
    if !python_ready(
        "grpc, envoy.service.auth.v3.external_auth_pb2_grpc",
        "grpcio xds-protos",
    ) {
        return;
    }
    let app = TestApp::builder().spawn().await;
    let crate::gateway::Keys {
        gateway,
        client_id,
        client,
        limited,
        ..
    } = crate::gateway::keys(&app).await;
    let server = app.addr.to_string();
    let check = |gateway: &str, key: &str, extra: &[&str]| {
        let mut args = vec!["--server", server.as_str()];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) =
            run_script(CHECK, &args, ("KEYWARD_GATEWAY_KEY", gateway), key);
        for output in [&stdout, &stderr] {
            for key in [&client, &limited, &gateway.to_owned()] {
                assert!(!output.contains(key.as_str()), "a key was printed");
            }
        }
        let answer = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
        (code, answer, stderr)
    };

    let (code, ok, stderr) = check(
        &gateway,
        &client,
        &[
            "--permissions",
            "deploy:write",
            "--header",
            "x-keyward-key-id=0000000000A",
            "--header",
            "x-keyward-tenant=forged",
        ],
    );
    assert_eq!(code, 0, "{ok}{stderr}");
    assert_eq!(ok["code"], 0);
    assert_eq!(ok["headers"]["x-keyward-key-id"], client_id.as_str());
    assert_eq!(ok["headers"]["x-keyward-owner"], "ci");
    assert_eq!(ok["headers"]["x-keyward-roles"], "deployer");
    assert_eq!(
        ok["headers_to_remove"],
        serde_json::json!(["x-keyward-tenant"])
    );
    assert_eq!(ok["dynamic_metadata"]["key_id"], client_id.as_str());

    let tampered = format!("{client}x");
    let cases: [Case; 3] = [
        (&[], "", 16, 401, Some("www-authenticate")),
        (&[], &tampered, 16, 401, Some("www-authenticate")),
        (&["--permissions", "build:write"], &client, 7, 403, None),
    ];
    for (args, key, rpc, status, header) in cases {
        let (code, answer, stderr) = check(&gateway, key, args);
        assert_eq!(code, 1, "{args:?}: {answer}{stderr}");
        assert_eq!(answer["code"], rpc, "{answer}");
        assert_eq!(answer["status"], status, "{answer}");
        assert_eq!(answer["headers"]["content-type"], "application/json");
        if let Some(header) = header {
            assert!(answer["headers"][header].is_string(), "{answer}");
        }
        assert!(answer["body"]["error"].is_string(), "{answer}");
    }

    assert_eq!(check(&gateway, &limited, &[]).0, 0);
    let (code, limited_answer, _) = check(&gateway, &limited, &[]);
    assert_eq!(code, 1);
    assert_eq!(limited_answer["code"], 8);
    assert_eq!(limited_answer["status"], 429);
    let wait: u64 = limited_answer["headers"]["retry-after"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");

    // The gateway itself needs keyward:validate: the call fails.
    let (code, _, stderr) = check(&client, &client, &[]);
    assert_eq!(code, 2);
    assert!(stderr.starts_with("PERMISSION_DENIED"), "{stderr}");
}

/// Parses `examples/envoy/envoy.yaml` into Envoy's `Bootstrap` with Envoy's
/// own API definitions (a field or enum value Envoy does not know fails),
/// and prints what keyward depends on: each route's `keyward_permissions`
/// and the ext_authz filter's `initial_metadata`.
const PARSE_ENVOY_CONFIG: &str = r#"
import json, sys, yaml
from google.protobuf import json_format
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

with open(sys.argv[1]) as file:
    bootstrap = json_format.ParseDict(yaml.safe_load(file), bootstrap_pb2.Bootstrap())
manager = hcm.HttpConnectionManager()
bootstrap.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.Unpack(manager)
routes = {}
for route in manager.route_config.virtual_hosts[0].routes:
    per_route = route.typed_per_filter_config.get("envoy.filters.http.ext_authz")
    permissions = None
    if per_route is not None:
        settings = ext_authz_pb2.ExtAuthzPerRoute()
        per_route.Unpack(settings)
        permissions = settings.check_settings.context_extensions["keyward_permissions"]
    routes[route.match.prefix] = permissions
ext_authz = ext_authz_pb2.ExtAuthz()
manager.http_filters[0].typed_config.Unpack(ext_authz)
metadata = {m.key: m.value for m in ext_authz.grpc_service.initial_metadata}
allowed = [json_format.MessageToDict(p) for p in ext_authz.allowed_headers.patterns]
print(json.dumps({"routes": routes, "metadata": metadata, "allowed_headers": allowed, "cluster": ext_authz.grpc_service.envoy_grpc.cluster_name}))
"#;

#[test]
fn the_envoy_example_is_an_envoy_bootstrap_asking_keyward_per_route() {
    if !python_ready(
        "yaml, envoy.config.bootstrap.v3.bootstrap_pb2",
        "pyyaml xds-protos",
    ) {
        return;
    }
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/envoy/envoy.yaml");
    let output = Command::new("python3")
        .args(["-c", PARSE_ENVOY_CONFIG, config])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        parsed["routes"],
        serde_json::json!({"/deploy/": "deploy:write", "/reports/": "reports:read", "/": null})
    );
    assert_eq!(
        parsed["metadata"]["authorization"],
        "Bearer kw_REPLACE_WITH_THE_GATEWAY_KEY"
    );
    assert_eq!(parsed["cluster"], "keyward");
    assert_eq!(
        parsed["allowed_headers"],
        serde_json::json!([{"exact": "authorization"}, {"prefix": "x-keyward-"}])
    );
}

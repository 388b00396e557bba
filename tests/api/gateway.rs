//! Gateways on the real server: Envoy's ext_authz `Check` over gRPC (with
//! the `envoy-types` client), and the HTTP listener's `GET
//! /v1/forward-auth` and `POST /v1/keys:validate`, for every outcome.

use std::{collections::HashMap, fmt::Write as _, net::SocketAddr, time::Duration};

use envoy_types::pb::envoy::{
    config::core::v3::{
        Address, HeaderMap, HeaderValue, SocketAddress, address, socket_address::PortSpecifier,
    },
    service::auth::v3::{
        AttributeContext, CheckRequest, CheckResponse,
        attribute_context::{HttpRequest, Peer, Request},
        authorization_client::AuthorizationClient,
        check_response::HttpResponse,
    },
};
use keyward::{
    gateway::GatewaySettings,
    pb,
    server::Settings,
    testing::{Backend, TestApp, authed, on_both_stores},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tonic::Code;

on_both_stores!(
    ext_authz_allows_a_valid_key_and_sets_the_upstream_headers,
    ext_authz_denies_each_failure_with_its_http_status,
    ext_authz_refuses_a_gateway_without_keyward_validate,
    forward_auth_allows_and_denies_like_ext_authz,
    json_validate_answers_what_validate_answers,
);

/// A server with an HTTP listener and `gateway` settings.
async fn spawn(backend: Backend, gateway: GatewaySettings) -> TestApp {
    TestApp::builder()
        .backend(backend)
        .settings(Settings {
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            gateway,
            ..Settings::default()
        })
        .spawn()
        .await
}

/// What the gateway tests mint: a gateway key (role `validator`), a role
/// `deployer` (`deploy:*`), a key holding it owned by `ci`, and one limited
/// to a request a minute. Also used by the nginx and Python tests.
pub(crate) struct Keys {
    pub gateway: String,
    pub client_id: String,
    pub client: String,
    pub limited_id: String,
    pub limited: String,
}

pub(crate) async fn keys(app: &TestApp) -> Keys {
    app.create_role("deployer", &["deploy:*"], None)
        .await
        .unwrap();
    let (_, gateway) = app.mint_with_roles(&["validator"]).await;
    let (client_id, client) = app
        .mint(pb::MintKeyRequest {
            roles: vec!["deployer".to_owned()],
            owner: "ci".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (limited_id, limited) = mint_limited(app).await;
    Keys {
        gateway,
        client_id,
        client,
        limited_id,
        limited,
    }
}

/// A `deployer` key allowed only from 203.0.113.0/24.
async fn mint_fenced(app: &TestApp) -> String {
    mint_deployer(
        app,
        pb::MintKeyRequest {
            allowed_cidrs: vec!["203.0.113.0/24".to_owned()],
            ..Default::default()
        },
    )
    .await
}

/// A `deployer` key limited to one request a minute: (id, key).
async fn mint_limited(app: &TestApp) -> (String, String) {
    let request = pb::MintKeyRequest {
        roles: vec!["deployer".to_owned()],
        rate_limit: Some(pb::RateLimit {
            requests: 1,
            per: Some(Duration::from_mins(1).try_into().unwrap()),
            burst: 1,
        }),
        ..Default::default()
    };
    app.mint(request).await.unwrap()
}

async fn mint_deployer(app: &TestApp, request: pb::MintKeyRequest) -> String {
    let request = pb::MintKeyRequest {
        roles: vec!["deployer".to_owned()],
        ..request
    };
    app.mint(request).await.unwrap().1
}

/// A `CheckRequest` as Envoy sends it: the request's headers, the route's
/// `keyward_permissions`, and the client address.
pub(crate) fn check_request(
    headers: &[(&str, &str)],
    permissions: Option<&str>,
    source: &str,
) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: source.to_owned(),
                        port_specifier: Some(PortSpecifier::PortValue(40_000)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".to_owned(),
                    path: "/deploy".to_owned(),
                    headers: headers
                        .iter()
                        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: permissions
                .map(|p| [("keyward_permissions".to_owned(), p.to_owned())].into())
                .unwrap_or_default(),
            ..Default::default()
        }),
    }
}

pub(crate) async fn check(
    app: &TestApp,
    gateway_key: &str,
    request: CheckRequest,
) -> Result<CheckResponse, tonic::Status> {
    AuthorizationClient::new(app.channel().await)
        .check(authed(gateway_key, request))
        .await
        .map(tonic::Response::into_inner)
}

/// An OK response's upstream headers, by name.
fn upstream(response: &CheckResponse) -> (HashMap<String, String>, Vec<String>) {
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("not an OK response: {response:?}");
    };
    let headers = ok
        .headers
        .iter()
        .map(|option| {
            let header = option.header.as_ref().unwrap();
            assert_eq!(option.append_action, 2, "overwrites: {option:?}");
            (header.key.clone(), header.value.clone())
        })
        .collect();
    (headers, ok.headers_to_remove.clone())
}

/// A denied response's status, headers and body.
pub(crate) fn denied(response: &CheckResponse) -> (i32, HashMap<String, String>, String) {
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("not a denied response: {response:?}");
    };
    let headers = denied
        .headers
        .iter()
        .map(|option| {
            let header = option.header.as_ref().unwrap();
            (header.key.clone(), header.value.clone())
        })
        .collect();
    (
        denied.status.as_ref().unwrap().code,
        headers,
        denied.body.clone(),
    )
}

async fn ext_authz_allows_a_valid_key_and_sets_the_upstream_headers(backend: Backend) {
    let app = spawn(backend, GatewaySettings::default()).await;
    let keys = keys(&app).await;
    let bearer = format!("Bearer {}", keys.client);
    let response = check(
        &app,
        &keys.gateway,
        check_request(
            &[
                ("authorization", &bearer),
                // Forgeries a client could send: overwritten or removed.
                ("x-keyward-key-id", "0000000000A"),
                ("x-keyward-tenant", "someone-else"),
                ("x-request-id", "kept"),
            ],
            Some("deploy:write, deploy:read"),
            "192.0.2.1",
        ),
    )
    .await
    .unwrap();
    assert_eq!(response.status.as_ref().unwrap().code, 0, "{response:?}");
    let (headers, removed) = upstream(&response);
    assert_eq!(headers["x-keyward-key-id"], keys.client_id);
    assert_eq!(headers["x-keyward-owner"], "ci");
    assert_eq!(headers["x-keyward-roles"], "deployer");
    assert_eq!(removed, ["x-keyward-tenant"]);
    let metadata = &response.dynamic_metadata.as_ref().unwrap().fields;
    let text = |name: &str| match &metadata[name].kind {
        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(text)) => text.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(text("key_id"), keys.client_id);
    assert_eq!(text("owner"), "ci");
    assert_eq!(text("roles"), "deployer");

    // Envoy with `encode_raw_headers: true` sends `header_map` instead.
    let mut raw = check_request(&[], Some("deploy:write"), "192.0.2.1");
    let http = raw
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.header_map = Some(HeaderMap {
        headers: vec![
            HeaderValue {
                key: "authorization".to_owned(),
                raw_value: bearer.clone().into_bytes(),
                ..Default::default()
            },
            HeaderValue {
                key: "x-keyward-tenant".to_owned(),
                raw_value: b"someone-else".to_vec(),
                ..Default::default()
            },
        ],
    });
    let (headers, removed) = upstream(&check(&app, &keys.gateway, raw).await.unwrap());
    assert_eq!(headers["x-keyward-key-id"], keys.client_id);
    assert_eq!(removed, ["x-keyward-tenant"]);

    // The key header, when configured, is read first.
    drop(app);
    let app = spawn(
        backend,
        GatewaySettings {
            key_header: Some("x-api-key".parse().unwrap()),
            ..GatewaySettings::default()
        },
    )
    .await;
    let keys = self::keys(&app).await;
    let response = check(
        &app,
        &keys.gateway,
        check_request(&[("x-api-key", &keys.client)], None, "192.0.2.1"),
    )
    .await
    .unwrap();
    assert_eq!(upstream(&response).0["x-keyward-key-id"], keys.client_id);
}

async fn ext_authz_denies_each_failure_with_its_http_status(backend: Backend) {
    let app = spawn(backend, GatewaySettings::default()).await;
    let keys = keys(&app).await;
    let fenced = mint_fenced(&app).await;
    let limited = keys.limited.clone();
    let tampered = format!("{}x", keys.client);
    let ask = |key: Option<&str>, permissions: &str, source: &str| {
        let bearer = key.map(|key| format!("Bearer {key}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| vec![("authorization", b)])
            .unwrap_or_default();
        check_request(&headers, Some(permissions), source)
    };
    let cases = [
        (
            ask(None, "", "192.0.2.1"),
            16,
            401,
            Some(r#"Bearer realm="keyward""#),
        ),
        (
            ask(Some(&tampered), "", "192.0.2.1"),
            16,
            401,
            Some(r#"Bearer realm="keyward", error="invalid_token""#),
        ),
        (
            ask(Some(&keys.client), "build:write", "192.0.2.1"),
            7,
            403,
            None,
        ),
        (ask(Some(&fenced), "deploy:x", "192.0.2.1"), 7, 403, None),
    ];
    for (request, code, status, authenticate) in cases {
        let response = check(&app, &keys.gateway, request).await.unwrap();
        assert_eq!(response.status.as_ref().unwrap().code, code, "{response:?}");
        let (http, headers, body) = denied(&response);
        assert_eq!(http, status);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(
            headers.get("www-authenticate").map(String::as_str),
            authenticate
        );
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(body["error"].is_string(), "{body}");
        for key in [&keys.client, &tampered, &fenced, &keys.gateway] {
            assert!(!body.to_string().contains(key.as_str()));
        }
    }
    // Inside its allow-list, the fenced key passes.
    let inside = check(
        &app,
        &keys.gateway,
        ask(Some(&fenced), "deploy:x", "203.0.113.7"),
    )
    .await
    .unwrap();
    upstream(&inside);

    let first = check(&app, &keys.gateway, ask(Some(&limited), "", "192.0.2.1"))
        .await
        .unwrap();
    upstream(&first);
    let second = check(&app, &keys.gateway, ask(Some(&limited), "", "192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(second.status.as_ref().unwrap().code, 8);
    let (http, headers, _) = denied(&second);
    assert_eq!(http, 429);
    let wait: u64 = headers["retry-after"].parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
}

async fn ext_authz_refuses_a_gateway_without_keyward_validate(backend: Backend) {
    let app = spawn(backend, GatewaySettings::default()).await;
    let keys = keys(&app).await;
    let bearer = format!("Bearer {}", keys.client);
    let request = || check_request(&[("authorization", &bearer)], None, "192.0.2.1");
    let mut client = AuthorizationClient::new(app.channel().await);
    let anonymous = client.check(request()).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    // A key with no keyward:validate cannot use the gateway to probe keys.
    let not_a_gateway = check(&app, &keys.client, request()).await.unwrap_err();
    assert_eq!(not_a_gateway.code(), Code::PermissionDenied);
    assert!(!not_a_gateway.message().contains(&keys.client));
    // Malformed route permissions are the proxy's fault: an error, not a
    // denial that blames the client.
    let bad_route = check(
        &app,
        &keys.gateway,
        check_request(&[("authorization", &bearer)], Some("a b"), "192.0.2.1"),
    )
    .await
    .unwrap_err();
    assert_eq!(bad_route.code(), Code::InvalidArgument);
    assert!(bad_route.message().contains("required_permissions"));
}

/// A response read off the wire: status code, headers (names lowercased)
/// and body.
pub(crate) struct HttpAnswer {
    pub status_line: String,
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// One HTTP/1.1 request on a new connection.
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpAnswer {
    let stream = TcpStream::connect(addr).await.expect("HTTP listener");
    http_over(stream, addr, method, path, headers, body).await
}

/// One HTTP/1.1 request on `stream` (plaintext or TLS) to `addr`.
pub(crate) async fn http_over(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpAnswer {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        let _ = write!(request, "{name}: {value}\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    // A TLS peer may close without `close_notify` once it has answered.
    let _ = stream.read_to_string(&mut raw).await;
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let mut lines = head.lines();
    let status = lines.next().unwrap();
    HttpAnswer {
        status_line: status.to_owned(),
        status: status.split(' ').nth(1).unwrap().parse().unwrap(),
        headers: lines
            .filter_map(|line| line.split_once(": "))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned()))
            .collect(),
        body: body.to_owned(),
    }
}

async fn forward_auth_allows_and_denies_like_ext_authz(backend: Backend) {
    let app = spawn(
        backend,
        GatewaySettings {
            trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
            ..GatewaySettings::default()
        },
    )
    .await;
    let addr = app.http_addr.expect("an HTTP listener");
    let keys = keys(&app).await;
    let fenced = mint_fenced(&app).await;
    let limited = keys.limited.clone();
    let forward = |key: Option<String>, extra: Vec<(&'static str, String)>| {
        let gateway = keys.gateway.clone();
        async move {
            let mut headers = vec![("x-keyward-gateway-key", gateway)];
            headers.extend(key.map(|key| ("authorization", format!("Bearer {key}"))));
            headers.extend(extra);
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            http(addr, "GET", "/v1/forward-auth", &headers, "").await
        }
    };
    let permission = |p: &str| vec![("x-keyward-permissions", p.to_owned())];

    let allowed = forward(Some(keys.client.clone()), permission("deploy:write")).await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(allowed.headers["x-keyward-key-id"], keys.client_id);
    assert_eq!(allowed.headers["x-keyward-owner"], "ci");
    assert_eq!(allowed.headers["x-keyward-roles"], "deployer");
    // A key with no owner: the header is still there, empty, so a proxy
    // copying it sets it rather than keeping a client's own.
    let ownerless = mint_deployer(&app, pb::MintKeyRequest::default()).await;
    let ownerless = forward(Some(ownerless), permission("deploy:write")).await;
    assert_eq!(ownerless.status, 200, "{}", ownerless.body);
    assert!(!ownerless.headers["x-keyward-key-id"].is_empty());
    assert_eq!(ownerless.headers["x-keyward-owner"], "");

    let missing = forward(None, vec![]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.headers["www-authenticate"],
        r#"Bearer realm="keyward""#
    );
    let tampered = format!("{}x", keys.client);
    let invalid = forward(Some(tampered.clone()), vec![]).await;
    assert_eq!(invalid.status, 401);
    assert!(!invalid.body.contains(&tampered));
    let forbidden = forward(Some(keys.client.clone()), permission("build:write")).await;
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.headers["content-type"], "application/json");
    assert!(
        forbidden.body.contains(r#""error":"forbidden""#),
        "{}",
        forbidden.body
    );

    // The client address: from x-forwarded-for, as the peer (127.0.0.1) is
    // a trusted proxy.
    let xff = |ip: &str| vec![("x-forwarded-for", ip.to_owned())];
    assert_eq!(
        forward(Some(fenced.clone()), xff("203.0.113.9"))
            .await
            .status,
        200
    );
    assert_eq!(
        forward(Some(fenced.clone()), xff("192.0.2.9")).await.status,
        403
    );

    assert_eq!(forward(Some(limited.clone()), vec![]).await.status, 200);
    let limited_answer = forward(Some(limited.clone()), vec![]).await;
    assert_eq!(limited_answer.status, 429);
    assert!(
        limited_answer.headers["retry-after"]
            .parse::<u64>()
            .unwrap()
            >= 1
    );

    // The proxy's own credential: missing, or not a gateway's. Answered 500,
    // so the proxy fails closed without blaming the client's key.
    let anonymous = http(
        addr,
        "GET",
        "/v1/forward-auth",
        &[("authorization", &format!("Bearer {}", keys.client))],
        "",
    )
    .await;
    assert_eq!(anonymous.status, 500, "{}", anonymous.body);
    assert!(anonymous.body.contains("x-keyward-gateway-key"));
    let not_a_gateway = http(
        addr,
        "GET",
        "/v1/forward-auth",
        &[
            ("x-keyward-gateway-key", &keys.client),
            ("authorization", &format!("Bearer {}", keys.client)),
        ],
        "",
    )
    .await;
    assert_eq!(not_a_gateway.status, 500);
    assert!(!not_a_gateway.body.contains(&keys.client));

    // Without trusted proxies, x-forwarded-for is the client's to forge and
    // is ignored: the peer (127.0.0.1) is outside the allow-list.
    drop(app);
    let app = spawn(backend, GatewaySettings::default()).await;
    let addr = app.http_addr.unwrap();
    let keys = self::keys(&app).await;
    let fenced = mint_fenced(&app).await;
    let forged = http(
        addr,
        "GET",
        "/v1/forward-auth",
        &[
            ("x-keyward-gateway-key", &keys.gateway),
            ("authorization", &format!("Bearer {fenced}")),
            ("x-forwarded-for", "203.0.113.9"),
        ],
        "",
    )
    .await;
    assert_eq!(forged.status, 403);
}

async fn json_validate_answers_what_validate_answers(backend: Backend) {
    let app = spawn(backend, GatewaySettings::default()).await;
    let addr = app.http_addr.unwrap();
    let keys = keys(&app).await;
    let caller = format!("Bearer {}", keys.gateway);
    let post = |body: String, caller: Option<&str>| {
        let caller = caller.map(str::to_owned);
        async move {
            let headers: Vec<(&str, &str)> = caller
                .as_deref()
                .map(|c| vec![("authorization", c), ("content-type", "application/json")])
                .unwrap_or_default();
            http(addr, "POST", "/v1/keys:validate", &headers, &body).await
        }
    };

    let valid = post(
        format!(
            r#"{{"key":"{}","requiredPermissions":["deploy:write"]}}"#,
            keys.client
        ),
        Some(&caller),
    )
    .await;
    assert_eq!(valid.status, 200, "{}", valid.body);
    assert_eq!(valid.headers["content-type"], "application/json");
    let answer: serde_json::Value = serde_json::from_str(&valid.body).unwrap();
    let grpc = app.validate(&keys.client, &["deploy:write"]).await;
    assert_eq!(answer["valid"], true);
    assert_eq!(answer["keyId"], grpc.key_id);
    assert_eq!(answer["denial"], "DENIAL_UNSPECIFIED");
    assert_eq!(answer["roles"], serde_json::json!(grpc.roles));
    assert_eq!(answer["permissions"], serde_json::json!(grpc.permissions));
    assert_eq!(answer["owner"], "ci");

    let tampered = format!("{}x", keys.client);
    let invalid = post(format!(r#"{{"key":"{tampered}"}}"#), Some(&caller)).await;
    assert_eq!(invalid.status, 200);
    let answer: serde_json::Value = serde_json::from_str(&invalid.body).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"valid": false, "denial": "INVALID"})
    );

    let bad_json = post(format!(r#"{{"key": "{}""#, keys.client), Some(&caller)).await;
    assert_eq!(bad_json.status, 400);
    assert!(bad_json.body.contains("invalid body"), "{}", bad_json.body);
    assert!(!bad_json.body.contains(&keys.client));
    let bad_permission = post(
        format!(
            r#"{{"key":"{}","requiredPermissions":["a b"]}}"#,
            keys.client
        ),
        Some(&caller),
    )
    .await;
    assert_eq!(bad_permission.status, 400);
    assert!(bad_permission.body.contains("required_permissions"));

    let anonymous = post(format!(r#"{{"key":"{}"}}"#, keys.client), None).await;
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.headers.contains_key("www-authenticate"));
    let not_a_validator = post(
        format!(r#"{{"key":"{}"}}"#, keys.client),
        Some(&format!("Bearer {}", keys.client)),
    )
    .await;
    assert_eq!(not_a_validator.status, 403);

    let too_big = post(
        "x".repeat(keyward::gateway::http::MAX_BODY_BYTES + 1),
        Some(&caller),
    )
    .await;
    assert_eq!(too_big.status, 413);

    let wrong_method = http(addr, "GET", "/v1/keys:validate", &[], "").await;
    assert_eq!(wrong_method.status, 405);
}

#[tokio::test]
async fn gateway_checks_are_counted_by_front_outcome_and_route() {
    let app = TestApp::builder()
        .settings(Settings {
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..Settings::default()
        })
        .spawn()
        .await;
    let keys = keys(&app).await;
    let bearer = format!("Bearer {}", keys.client);
    for permissions in ["deploy:write", "deploy:write", "build:read"] {
        check(
            &app,
            &keys.gateway,
            check_request(
                &[("authorization", &bearer)],
                Some(permissions),
                "192.0.2.1",
            ),
        )
        .await
        .unwrap();
    }
    let forwarded = http(
        app.http_addr.unwrap(),
        "GET",
        "/v1/forward-auth",
        &[("x-keyward-gateway-key", &keys.gateway)],
        "",
    )
    .await;
    assert_eq!(forwarded.status, 401);
    let (_, _, text) = crate::metrics::http_get(app.metrics_addr.unwrap(), "/metrics").await;
    for (series, value) in [
        (
            r#"keyward_gateway_checks_total{front="ext_authz",result="valid",reason="none"}"#,
            "2",
        ),
        (
            r#"keyward_gateway_checks_total{front="ext_authz",result="forbidden",reason="missing_permission"}"#,
            "1",
        ),
        (
            r#"keyward_gateway_checks_total{front="forward_auth",result="invalid",reason="missing_key"}"#,
            "1",
        ),
        (
            r#"keyward_gateway_route_checks_total{permissions="deploy:write",result="valid"}"#,
            "2",
        ),
        (
            r#"keyward_gateway_route_checks_total{permissions="build:read",result="forbidden"}"#,
            "1",
        ),
        (
            r#"keyward_gateway_route_checks_total{permissions="none",result="invalid"}"#,
            "1",
        ),
        ("keyward_gateway_check_duration_seconds_count", "4"),
    ] {
        assert!(
            text.lines().any(|line| line == format!("{series} {value}")),
            "{series} {value} not in:\n{text}"
        );
    }
    assert!(!text.contains(&keys.client_id));
}

#[tokio::test]
async fn the_http_listener_serves_tls_with_the_grpc_certificates() {
    use keyward::testing::tls::{TestPki, client_config};
    use tokio_rustls::{
        TlsConnector,
        rustls::{
            ClientConfig, RootCertStore,
            crypto::ring::default_provider,
            pki_types::{CertificateDer, ServerName, pem::PemObject},
        },
    };
    let pki = TestPki::new(false);
    let app = TestApp::builder()
        .settings(Settings {
            tls: Some(pki.files.clone()),
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..Settings::default()
        })
        .spawn()
        .await
        .with_client_tls(client_config(&pki.server_ca, None));
    let addr = app.http_addr.unwrap();
    let keys = keys(&app).await;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.server_ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let mut config = ClientConfig::builder_with_provider(std::sync::Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("a TLS handshake with the gRPC port's certificate");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let bearer = format!("Bearer {}", keys.client);
    let answer = http_over(
        tls,
        addr,
        "GET",
        "/v1/forward-auth",
        &[
            ("x-keyward-gateway-key", &keys.gateway),
            ("authorization", &bearer),
        ],
        "",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.headers["x-keyward-key-id"], keys.client_id);

    // Plaintext to the TLS listener: no HTTP answer at all.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(format!("GET /v1/forward-auth HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut raw)).await;
    assert!(!String::from_utf8_lossy(&raw).contains("200 OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_answers_a_request_in_flight_when_the_server_stops() {
    let mut app = spawn(Backend::Sqlite, GatewaySettings::default()).await;
    let addr = app.http_addr.unwrap();
    let keys = keys(&app).await;
    let body = format!(
        r#"{{"key": "{}", "requiredPermissions": ["deploy:write"]}}"#,
        keys.client
    );
    let (first, rest) = body.split_at(body.len() / 2);

    // A request whose head, and half its body, have arrived.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/keys:validate HTTP/1.1\r\nHost: {addr}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
        keys.gateway,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // An idle connection, which the drain closes.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let stopping = tokio::spawn(async move { app.stop().await });
    // The listener closes first: new connections are refused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the HTTP listener stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The server waits for the request (a process would exit, cutting it).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "the server stopped with a request in flight"
    );

    stream.write_all(rest.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""valid":true"#), "{answer}");
    let mut nothing = Vec::new();
    assert_eq!(idle.read_to_end(&mut nothing).await.unwrap(), 0);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the server stops once its connections closed")
        .unwrap();
}

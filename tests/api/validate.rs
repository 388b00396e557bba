//! Validate: every rule of the product brief, over gRPC.

use std::time::Duration;

use keyward::{
    key::KeyId,
    pb::{self, Denial, key_service_client::KeyServiceClient},
    testing::{Backend, authed, denial, forge, on_both_stores, spawn_app},
};
use tonic::{Code, Request};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

async fn a_live_key_is_valid_and_described(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, key) = app
        .mint(pb::MintKeyRequest {
            roles: vec!["validator".into()],
            labels: [("env".to_owned(), "prod".to_owned())].into(),
            owner: "payments".into(),
            expiry: Some(pb::mint_key_request::Expiry::Ttl(
                Duration::from_hours(1).try_into().unwrap(),
            )),
            ..Default::default()
        })
        .await
        .unwrap();

    let response = app.validate(&key, &["keyward:validate"]).await;
    assert!(response.valid);
    assert_eq!(denial(&response), Denial::Unspecified);
    assert_eq!(response.key_id, id);
    assert_eq!(response.roles, ["validator"]);
    assert_eq!(response.permissions, ["keyward:validate"]);
    assert_eq!(response.labels.get("env").map(String::as_str), Some("prod"));
    assert_eq!(response.owner, "payments");
    let expires = response
        .expires_at
        .expect("a key with a TTL reports its expiry");
    let now = app.clock_seconds();
    assert_eq!(expires.seconds - now, 3600);
}

async fn every_kind_of_bad_key_is_just_invalid(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, key) = app.mint_with_roles(&["validator"]).await;
    let (_, other) = app.mint_with_roles(&["validator"]).await;
    let (revoked_id, revoked) = app.mint_with_roles(&[]).await;
    app.revoke(&revoked_id, "test").await.unwrap();

    let body = &key[3..];
    let mut bad_checksum = key.clone().into_bytes();
    let last = bad_checksum.len() - 1;
    bad_checksum[last] = if bad_checksum[last] == b'a' {
        b'b'
    } else {
        b'a'
    };
    let bad_checksum = String::from_utf8(bad_checksum).unwrap();
    // Right id, someone else's secret (with a correct checksum): a forgery.
    let wrong_secret = forge(id.parse().unwrap(), &other);
    // An id no key has, with a correct checksum.
    let unknown = forge(KeyId::from_u64(10), &other);

    let cases = [
        ("empty", String::new()),
        ("100 KB", format!("kw_{}", "A".repeat(100 * 1024))),
        ("non-ASCII", format!("kw_{}é", &body[..body.len() - 2])),
        ("wrong prefix", format!("ci_{body}")),
        ("bad checksum", bad_checksum),
        ("wrong secret", wrong_secret),
        ("unknown id", unknown),
        ("revoked", revoked),
    ];
    for (what, presented) in cases {
        let response = app.validate(&presented, &[]).await;
        assert!(!response.valid, "{what}");
        assert_eq!(denial(&response), Denial::Invalid, "{what}");
        assert!(
            response.key_id.is_empty(),
            "{what}: an invalid key reveals no id"
        );
        assert!(
            response.roles.is_empty() && response.permissions.is_empty(),
            "{what}"
        );
    }
}

async fn expiry_follows_the_clock(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, key) = app
        .mint(pb::MintKeyRequest {
            expiry: Some(pb::mint_key_request::Expiry::Ttl(
                Duration::from_mins(30).try_into().unwrap(),
            )),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(app.validate(&key, &[]).await.valid);
    app.clock.advance(Duration::from_secs(1799));
    assert!(app.validate(&key, &[]).await.valid);
    app.clock.advance(Duration::from_secs(1));
    assert_eq!(denial(&app.validate(&key, &[]).await), Denial::Invalid);
}

async fn missing_permissions_are_forbidden_with_the_key_described(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, key) = app.mint_with_roles(&["validator"]).await;
    let response = app
        .validate(&key, &["keyward:validate", "deploy:write"])
        .await;
    assert!(!response.valid);
    assert_eq!(denial(&response), Denial::Forbidden);
    assert_eq!(response.key_id, id);
    assert_eq!(response.permissions, ["keyward:validate"]);
    // The admin role's `keyward:*` grants any keyward permission, nothing else.
    let admin = app
        .validate(&app.admin_key, &["keyward:anything", "keyward:x:y"])
        .await;
    assert!(admin.valid);
    assert_eq!(
        denial(&app.validate(&app.admin_key, &["deploy:write"]).await),
        Denial::Forbidden
    );
}

async fn malformed_requests_are_invalid_argument_without_the_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, key) = app.mint_with_roles(&[]).await;
    let too_many: Vec<String> = (0..65).map(|i| format!("p:{i}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let oversized = "a".repeat(300);
    let cases: [(&str, Vec<&str>); 3] = [
        ("required_permissions", too_many),
        ("longer than", vec![oversized.as_str()]),
        ("required_permissions", vec!["Deploy:Write"]),
    ];
    for (expected, required) in cases {
        let status = app
            .validate_as(&app.admin_key, &key, &required)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(expected), "{}", status.message());
        assert!(
            !status.message().contains(&key[3..]),
            "the key is never echoed"
        );
    }
    // The server keeps serving.
    assert!(app.validate(&key, &[]).await.valid);
}

async fn callers_must_present_a_key_with_keyward_validate(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, key) = app.mint_with_roles(&[]).await;
    let (_, validator) = app.mint_with_roles(&["validator"]).await;
    let (_, unprivileged) = app.mint_with_roles(&[]).await;
    let request = || pb::ValidateRequest {
        key: key.clone(),
        required_permissions: vec![],
        ..Default::default()
    };
    let mut client: KeyServiceClient<_> = app.key_client().await;

    let none = client.validate(Request::new(request())).await.unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);
    assert!(
        none.message().contains("authorization"),
        "{}",
        none.message()
    );

    let (_, revoked) = app.mint_with_roles(&["validator"]).await;
    let revoked_id = &revoked[3..14];
    app.revoke(revoked_id, "").await.unwrap();
    for bad in [
        "garbage",
        revoked.as_str(),
        &format!("{}x", &validator[..validator.len() - 1]),
    ] {
        let status = client.validate(authed(bad, request())).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{bad}");
        assert!(
            !status.message().contains(bad),
            "the caller's key is never echoed"
        );
    }

    let denied = client
        .validate(authed(&unprivileged, request()))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("keyward:validate"));

    let ok = client
        .validate(authed(&validator, request()))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.valid);
}

async fn validating_a_known_key_issues_no_query(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, key) = app.mint_with_roles(&["validator"]).await;
    let (_, caller) = app.mint_with_roles(&["validator"]).await;
    let before = app.store.operations();
    for _ in 0..100 {
        let response = app
            .validate_as(&caller, &key, &["keyward:validate"])
            .await
            .unwrap();
        assert!(response.valid);
    }
    let unknown = app
        .validate_as(&caller, "kw_0000000000A", &[])
        .await
        .unwrap();
    assert!(!unknown.valid);
    assert_eq!(app.store.operations(), before);
    // The counter does move on a store operation, so the assertion above can fail.
    app.get(&key[3..14]).await.unwrap();
    assert_eq!(app.store.operations(), before + 1);
}

async fn health_and_reflection_are_served(backend: Backend) {
    let app = spawn_app(backend).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "keyward.v1.KeyService", "keyward.v1.AdminService"] {
        let response = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }

    let mut reflection = ServerReflectionClient::new(app.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("reflection answers ListServices");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "keyward.v1.KeyService",
        "keyward.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
}

on_both_stores!(
    a_live_key_is_valid_and_described,
    every_kind_of_bad_key_is_just_invalid,
    expiry_follows_the_clock,
    missing_permissions_are_forbidden_with_the_key_described,
    malformed_requests_are_invalid_argument_without_the_key,
    callers_must_present_a_key_with_keyward_validate,
    validating_a_known_key_issues_no_query,
    health_and_reflection_are_served,
);

/// A connection remembers the caller credential it proved, so later calls
/// on it skip parsing and hashing that key: a change to the caller's key or
/// role in the middle of the connection applies to its very next call all
/// the same.
#[tokio::test]
async fn a_caller_changed_mid_connection_is_judged_anew() {
    let app = spawn_app(Backend::Sqlite).await;
    app.create_role("checker", &["keyward:validate"], None)
        .await
        .unwrap();
    let (caller_id, caller) = app.mint_with_roles(&["checker"]).await;
    let (_, key) = app.mint_with_roles(&[]).await;
    let request = || {
        authed(
            &caller,
            pb::ValidateRequest {
                key: key.clone(),
                ..Default::default()
            },
        )
    };
    // One client: one HTTP/2 connection for every call below.
    let mut client = app.key_client().await;
    for _ in 0..3 {
        assert!(client.validate(request()).await.unwrap().into_inner().valid);
    }

    let update_checker = |add: &[&str], remove: &[&str]| {
        let request = pb::UpdateRoleRequest {
            name: "checker".into(),
            add_permissions: add.iter().map(|p| (*p).to_owned()).collect(),
            remove_permissions: remove.iter().map(|p| (*p).to_owned()).collect(),
            ..Default::default()
        };
        let app = &app;
        async move {
            app.admin_client()
                .await
                .update_role(authed(&app.admin_key, request))
                .await
                .unwrap();
        }
    };
    update_checker(&["deploy:read"], &["keyward:validate"]).await;
    let status = client.validate(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    update_checker(&["keyward:validate"], &[]).await;
    assert!(client.validate(request()).await.unwrap().into_inner().valid);

    app.revoke(&caller_id, "").await.unwrap();
    let status = client.validate(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

/// Each answer, failed or not, carries the request id its log lines carry:
/// the client's when usable, else a new one.
#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut client = app.key_client().await;
    let validate = |request_id: Option<&str>| {
        let mut request = authed(
            &app.admin_key,
            pb::ValidateRequest {
                key: "kw_not-a-key".into(),
                ..Default::default()
            },
        );
        if let Some(id) = request_id {
            request
                .metadata_mut()
                .insert("x-request-id", id.parse().unwrap());
        }
        request
    };
    let answered_id = |metadata: &tonic::metadata::MetadataMap| {
        metadata
            .get("x-request-id")
            .expect("x-request-id in the response metadata")
            .to_str()
            .unwrap()
            .to_owned()
    };

    let response = client.validate(validate(Some("trace-7f3a"))).await.unwrap();
    assert_eq!(answered_id(response.metadata()), "trace-7f3a");

    let first = client.validate(validate(None)).await.unwrap();
    let second = client
        .validate(validate(Some("not usable!")))
        .await
        .unwrap();
    let (first, second) = (
        answered_id(first.metadata()),
        answered_id(second.metadata()),
    );
    assert_eq!(first.len(), 16, "{first}");
    assert_ne!(first, second);

    // A refused call carries one too.
    let mut unauthenticated = validate(Some("refused-1"));
    unauthenticated.metadata_mut().remove("authorization");
    let status = client.validate(unauthenticated).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(answered_id(status.metadata()), "refused-1");
}

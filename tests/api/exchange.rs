//! CI without stored secrets: a job's OIDC identity token exchanged for a
//! short-lived key under a trust policy (`ExchangeService/Exchange`), every
//! attack on the token refused with one generic error, the key revoking
//! itself (`RevokeSelf`), and trust policies' administration. The issuer
//! is `keyward::testing::oidc::FakeIssuer`, on 127.0.0.1 over plain HTTP.

use std::{collections::HashMap, process::Command, time::Duration};

use keyward::{
    exchange::{DENIED, OidcSettings},
    pb::{
        self, exchange_service_client::ExchangeServiceClient,
        trust_service_client::TrustServiceClient,
    },
    server::Settings,
    testing::{
        Backend, TestApp, authed, denial, oidc::FakeIssuer, on_both_stores, postgres_reachable,
        running_in_ci,
    },
};
use serde_json::{Value, json};
use tonic::{Code, Request, Status};

use crate::metrics::http_get;

const AUDIENCE: &str = "https://keyward.example";

/// Server settings allowing the fake issuer's `http://`.
fn settings(refresh: Duration) -> Settings {
    Settings {
        oidc: OidcSettings {
            allow_http_issuers: true,
            jwks_refresh_interval: refresh,
        },
        metrics_listen: Some(([127, 0, 0, 1], 0).into()),
        ..Settings::default()
    }
}

async fn spawn(backend: Backend) -> TestApp {
    TestApp::builder()
        .backend(backend)
        .settings(settings(Duration::from_mins(1)))
        .spawn()
        .await
}

/// The spec of a policy trusting `issuer`'s tokens for `acme/api` on
/// `main`, granting role `deployer` for ten minutes.
fn spec(issuer: &str) -> pb::TrustPolicySpec {
    pb::TrustPolicySpec {
        description: "deploys of acme/api".to_owned(),
        issuer: issuer.to_owned(),
        audience: AUDIENCE.to_owned(),
        required_claims: HashMap::from([
            ("repository".to_owned(), "acme/api".to_owned()),
            ("ref".to_owned(), "refs/heads/main".to_owned()),
            (
                "job_workflow_ref".to_owned(),
                "acme/workflows/.github/workflows/deploy.yml@*".to_owned(),
            ),
        ]),
        roles: vec!["deployer".to_owned()],
        permissions: vec![],
        ttl: Some(Duration::from_mins(10).try_into().unwrap()),
        allowed_cidrs: vec![],
        labels: HashMap::from([("team".to_owned(), "payments".to_owned())]),
    }
}

/// The claims a matching job's token carries.
fn job_claims() -> Value {
    json!({
        "repository": "acme/api",
        "ref": "refs/heads/main",
        "job_workflow_ref": "acme/workflows/.github/workflows/deploy.yml@refs/heads/main",
    })
}

async fn trust(app: &TestApp) -> TrustServiceClient<tonic::transport::Channel> {
    TrustServiceClient::new(app.channel().await)
}

async fn exchanger(app: &TestApp) -> ExchangeServiceClient<tonic::transport::Channel> {
    ExchangeServiceClient::new(app.channel().await)
}

/// Creates policy `name` with `spec` as the admin.
async fn create_policy(
    app: &TestApp,
    caller: &str,
    name: &str,
    spec: pb::TrustPolicySpec,
) -> Result<pb::TrustPolicy, Status> {
    let request = pb::CreateTrustPolicyRequest {
        name: name.to_owned(),
        spec: Some(spec),
    };
    Ok(trust(app)
        .await
        .create_trust_policy(authed(caller, request))
        .await?
        .into_inner())
}

/// Policy `name`, as `caller` reads it.
async fn get_policy(app: &TestApp, caller: &str, name: &str) -> Result<pb::TrustPolicy, Status> {
    let request = pb::GetTrustPolicyRequest {
        name: name.to_owned(),
    };
    Ok(trust(app)
        .await
        .get_trust_policy(authed(caller, request))
        .await?
        .into_inner())
}

/// A server with role `deployer` and policy `deploy` on `issuer`.
async fn with_policy(app: &TestApp, issuer: &FakeIssuer) {
    app.create_role("deployer", &["deploy:write"], Some(Duration::from_hours(1)))
        .await
        .unwrap();
    create_policy(app, &app.admin_key, "deploy", spec(issuer.url()))
        .await
        .unwrap();
}

/// Exchanges `token` under `policy`, with no credential but the token.
async fn exchange(
    app: &TestApp,
    policy: &str,
    token: &str,
) -> Result<pb::ExchangeResponse, Status> {
    let request = pb::ExchangeRequest {
        policy: policy.to_owned(),
        token: token.to_owned(),
    };
    Ok(exchanger(app)
        .await
        .exchange(Request::new(request))
        .await?
        .into_inner())
}

async fn revoke_self(app: &TestApp, key: &str) -> Result<pb::RevokeSelfResponse, Status> {
    Ok(exchanger(app)
        .await
        .revoke_self(authed(key, pb::RevokeSelfRequest {}))
        .await?
        .into_inner())
}

/// Asserts the one generic refusal, which never echoes the token.
#[track_caller]
fn assert_denied(result: Result<pb::ExchangeResponse, Status>, token: &str, case: &str) {
    let status = result.expect_err(case);
    assert_eq!(status.code(), Code::PermissionDenied, "{case}: {status:?}");
    assert_eq!(status.message(), DENIED, "{case}");
    assert!(!status.message().contains(token), "{case}");
}

/// `keyward_exchanges_total` for this result and reason.
async fn exchanges(app: &TestApp, result: &str, reason: &str) -> u64 {
    sample(
        app,
        &format!("keyward_exchanges_total{{result=\"{result}\",reason=\"{reason}\"}}"),
    )
    .await
}

/// The value of counter `series` (name and labels) on `app`.
async fn sample(app: &TestApp, series: &str) -> u64 {
    let (_, _, body) = http_get(app.metrics_addr.expect("metrics"), "/metrics").await;
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in {body}"))
        .parse()
        .unwrap()
}

on_both_stores!(
    a_job_with_only_an_identity_token_gets_a_scoped_key_uses_it_and_revokes_it,
    every_attack_on_the_token_is_refused_with_one_generic_error,
    trust_policies_are_administered_checked_and_audited,
);

async fn a_job_with_only_an_identity_token_gets_a_scoped_key_uses_it_and_revokes_it(
    backend: Backend,
) {
    let issuer = FakeIssuer::start().await;
    let app = spawn(backend).await;
    with_policy(&app, &issuer).await;

    // The job: an identity token, nothing else.
    let claims = issuer.claims(AUDIENCE, &job_claims());
    let token = issuer.sign(&claims);
    let minted = exchange(&app, "deploy", &token).await.unwrap();
    let key = minted.key.unwrap();
    assert!(minted.plaintext.starts_with("kw_"));
    assert_eq!(key.roles, ["deployer"]);
    let labels: HashMap<&str, &str> = key
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(labels["oidc.policy"], "deploy");
    assert_eq!(labels["oidc.issuer"], issuer.url());
    assert_eq!(labels["oidc.subject"], "repo:acme/api:ref:refs/heads/main");
    assert_eq!(labels["oidc.claim.repository"], "acme/api");
    assert_eq!(
        labels["oidc.claim.job_workflow_ref"],
        "acme/workflows/.github/workflows/deploy.yml@refs/heads/main"
    );
    assert_eq!(labels["team"], "payments");
    let lifetime = key.expires_at.unwrap().seconds - app.clock_seconds();
    assert!((599..=600).contains(&lifetime), "{lifetime}");

    // Scoped by the policy: what the role grants, nothing more.
    let granted = app.validate(&minted.plaintext, &["deploy:write"]).await;
    assert!(granted.valid, "{granted:?}");
    assert_eq!(granted.key_id, key.id);
    let beyond = app.validate(&minted.plaintext, &["deploy:admin"]).await;
    assert_eq!(denial(&beyond), pb::Denial::Forbidden);
    // A key is no admin: it cannot mint.
    let refused = app
        .mint_as(&minted.plaintext, pb::MintKeyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    // The audit record names the policy, subject and jti; never the token.
    let audit = app
        .admin_client()
        .await
        .list_audit_records(authed(
            &app.admin_key,
            pb::ListAuditRecordsRequest {
                key_id: key.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .records;
    let record = audit
        .iter()
        .find(|r| r.action == "key.exchange")
        .expect("an exchange record");
    let jti = claims["jti"].as_str().unwrap();
    for expected in ["deploy", "repo:acme/api:ref:refs/heads/main", jti] {
        assert!(record.reason.contains(expected), "{}", record.reason);
    }
    assert!(!record.reason.contains(&token));

    // The job's last step.
    let revoked = revoke_self(&app, &minted.plaintext).await.unwrap();
    assert!(revoked.key.unwrap().revoked_at.is_some());
    assert_eq!(
        denial(&app.validate(&minted.plaintext, &[]).await),
        pb::Denial::Invalid
    );
    let again = revoke_self(&app, &minted.plaintext).await.unwrap_err();
    assert_eq!(again.code(), Code::Unauthenticated);
    assert_eq!(exchanges(&app, "ok", "none").await, 1);
}

async fn every_attack_on_the_token_is_refused_with_one_generic_error(backend: Backend) {
    let issuer = FakeIssuer::start().await;
    let other = FakeIssuer::start().await;
    let app = spawn(backend).await;
    with_policy(&app, &issuer).await;
    create_policy(&app, &app.admin_key, "other", spec(other.url()))
        .await
        .unwrap();
    let good = |changes: &Value| {
        let mut claims = issuer.claims(AUDIENCE, &job_claims());
        for (name, value) in changes.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(name);
            } else {
                claims[name] = value.clone();
            }
        }
        claims
    };
    let now = keyward::testing::oidc::now_seconds();
    let replayed = issuer.sign(&good(&json!({})));
    exchange(&app, "deploy", &replayed).await.unwrap();
    let other_token = other.sign(&other.claims(AUDIENCE, &job_claims()));
    exchange(&app, "other", &other_token).await.unwrap();
    let tampered = {
        let token = issuer.sign(&good(&json!({})));
        let parts: Vec<&str> = token.split('.').collect();
        let forged = issuer.sign(&good(&json!({"repository": "acme/api-evil"})));
        format!(
            "{}.{}.{}",
            parts[0],
            forged.split('.').nth(1).unwrap(),
            parts[2]
        )
    };
    let attacks = [
        (
            "wrong issuer",
            issuer.sign(&good(
                &json!({"iss": "https://token.actions.githubusercontent.com"}),
            )),
            "issuer",
        ),
        (
            "wrong audience",
            issuer.sign(&good(&json!({"aud": "https://other.example"}))),
            "audience",
        ),
        (
            "expired",
            issuer.sign(&good(
                &json!({"exp": now - 600, "iat": now - 900, "nbf": now - 900}),
            )),
            "expired",
        ),
        (
            "not yet valid",
            issuer.sign(&good(&json!({"nbf": now + 600}))),
            "not_yet_valid",
        ),
        ("alg none", issuer.unsigned(&good(&json!({}))), "algorithm"),
        (
            "HS256 signed with the public key",
            issuer.hs256_with_public_key(&good(&json!({}))),
            "algorithm",
        ),
        (
            "unknown kid",
            issuer.sign_with_header(&json!({"kid": "made-up"}), &good(&json!({}))),
            "unknown_key",
        ),
        (
            "a claim that does not match",
            issuer.sign(&good(&json!({"ref": "refs/heads/dev"}))),
            "claim",
        ),
        (
            "a glob that must not match",
            issuer.sign(&good(&json!({"repository": "acme/api-evil"}))),
            "claim",
        ),
        (
            "a workflow outside the glob",
            issuer.sign(&good(&json!({
                "job_workflow_ref": "acme/workflows/.github/workflows/deploy.yml.evil@x"
            }))),
            "claim",
        ),
        ("a replayed jti", replayed.clone(), "replayed"),
        (
            "a token for another policy's issuer",
            other_token.clone(),
            "signature",
        ),
        ("a payload swapped under a signature", tampered, "signature"),
        (
            "no jti",
            issuer.sign(&good(&json!({"jti": null}))),
            "missing_claim",
        ),
        ("garbage", "not.a.jwt".to_owned(), "malformed"),
    ];
    for (case, token, reason) in &attacks {
        let before = exchanges(&app, "refused", reason).await;
        assert_denied(exchange(&app, "deploy", token).await, token, case);
        assert_eq!(
            exchanges(&app, "refused", reason).await,
            before + 1,
            "{case} is refused as {reason}"
        );
    }
    // An unknown policy is refused the same way.
    let token = issuer.sign(&good(&json!({})));
    assert_denied(
        exchange(&app, "nope", &token).await,
        &token,
        "unknown policy",
    );
    assert_eq!(exchanges(&app, "refused", "unknown_policy").await, 1);
    // And the token itself was good: it was refused for the policy only.
    exchange(&app, "deploy", &token).await.unwrap();
}

async fn trust_policies_are_administered_checked_and_audited(backend: Backend) {
    let issuer = FakeIssuer::start().await;
    let app = spawn(backend).await;
    with_policy(&app, &issuer).await;
    let mut client = trust(&app).await;
    let admin = app.admin_key.clone();

    let invalid = |spec: pb::TrustPolicySpec| {
        let app = &app;
        async move {
            create_policy(app, &app.admin_key, "bad", spec)
                .await
                .unwrap_err()
        }
    };
    let github = "https://token.actions.githubusercontent.com";
    let cases: Vec<(pb::TrustPolicySpec, &str)> = vec![
        (
            pb::TrustPolicySpec {
                issuer: "ftp://x".to_owned(),
                ..spec(github)
            },
            "issuer",
        ),
        (
            pb::TrustPolicySpec {
                audience: String::new(),
                ..spec(github)
            },
            "audience",
        ),
        (
            pb::TrustPolicySpec {
                required_claims: HashMap::new(),
                ..spec(github)
            },
            "required_claims",
        ),
        (
            pb::TrustPolicySpec {
                required_claims: HashMap::from([("repository".into(), "acme/*/api".into())]),
                ..spec(github)
            },
            "required_claims",
        ),
        (
            pb::TrustPolicySpec {
                required_claims: HashMap::from([("aud".into(), "x".into())]),
                ..spec(github)
            },
            "required_claims",
        ),
        (
            pb::TrustPolicySpec {
                ttl: Some(Duration::from_mins(61).try_into().unwrap()),
                ..spec(github)
            },
            "ttl",
        ),
        (
            pb::TrustPolicySpec {
                ttl: None,
                ..spec(github)
            },
            "ttl",
        ),
        (
            pb::TrustPolicySpec {
                roles: vec!["nope".into()],
                ..spec(github)
            },
            "roles",
        ),
        (
            pb::TrustPolicySpec {
                labels: HashMap::from([("oidc.subject".into(), "x".into())]),
                ..spec(github)
            },
            "labels",
        ),
    ];
    for (spec, field) in cases {
        let status = invalid(spec).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{field}: {status:?}");
    }
    // A role's lifetime cap bounds the policy's TTL.
    app.create_role("short", &["deploy:read"], Some(Duration::from_mins(5)))
        .await
        .unwrap();
    let status = invalid(pb::TrustPolicySpec {
        roles: vec!["short".into()],
        ..spec(github)
    })
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("role short caps"), "{status:?}");
    // Nothing half-written.
    let list = client
        .list_trust_policies(authed(&admin, pb::ListTrustPoliciesRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.policies
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["deploy"]
    );
    let taken = create_policy(&app, &admin, "deploy", spec(github)).await;
    assert_eq!(taken.unwrap_err().code(), Code::AlreadyExists);

    // Without --oidc-allow-http-issuers, http:// issuers are refused.
    let strict = TestApp::builder().backend(backend).spawn().await;
    let status = create_policy(&strict, &strict.admin_key, "p", spec(issuer.url()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("issuer"), "{status:?}");

    // No escalation: a narrow key may grant only what it holds.
    let (_, narrow) = app
        .mint(pb::MintKeyRequest {
            permissions: vec![
                "keyward:trust:write".into(),
                "keyward:trust:read".into(),
                "deploy:read".into(),
            ],
            owner: "ci".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let escalating = create_policy(&app, &narrow, "mine", spec(github)).await;
    assert_eq!(escalating.unwrap_err().code(), Code::PermissionDenied);
    let mine = create_policy(
        &app,
        &narrow,
        "mine",
        pb::TrustPolicySpec {
            roles: vec![],
            permissions: vec!["deploy:read".into()],
            ..spec(github)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        mine.owner, "ci",
        "the keys it mints are the creator's owner's"
    );
    for denied in [
        client
            .delete_trust_policy(authed(
                &narrow,
                pb::DeleteTrustPolicyRequest {
                    name: "deploy".into(),
                },
            ))
            .await
            .map(|_| ()),
        client
            .update_trust_policy(authed(
                &narrow,
                pb::UpdateTrustPolicyRequest {
                    name: "mine".into(),
                    spec: Some(spec(github)),
                },
            ))
            .await
            .map(|_| ()),
    ] {
        assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);
    }
    // A key without the trust permissions may not even read them.
    let (_, validator) = app.mint_with_roles(&["validator"]).await;
    let status = get_policy(&app, &validator, "deploy").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // Update replaces the settings; delete removes; each is audited.
    let updated = client
        .update_trust_policy(authed(
            &admin,
            pb::UpdateTrustPolicyRequest {
                name: "deploy".into(),
                spec: Some(pb::TrustPolicySpec {
                    audience: "other".into(),
                    ..spec(issuer.url())
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.spec.unwrap().audience, "other");
    let got = get_policy(&app, &admin, "deploy").await.unwrap();
    assert_eq!(got.spec.unwrap().audience, "other");
    client
        .delete_trust_policy(authed(
            &admin,
            pb::DeleteTrustPolicyRequest {
                name: "deploy".into(),
            },
        ))
        .await
        .unwrap();
    let gone = get_policy(&app, &admin, "deploy").await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let actions: Vec<String> = app
        .admin_client()
        .await
        .list_audit_records(authed(&admin, pb::ListAuditRecordsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .records
        .into_iter()
        .filter(|r| r.target == "deploy")
        .map(|r| r.action)
        .collect();
    assert_eq!(actions, ["trust.delete", "trust.update", "trust.create"]);
    // Counted like every admin RPC.
    let counted = |rpc: &str, code: &str| {
        format!("keyward_admin_requests_total{{rpc=\"{rpc}\",code=\"{code}\"}}")
    };
    assert_eq!(sample(&app, &counted("CreateTrustPolicy", "OK")).await, 2);
    assert_eq!(
        sample(&app, &counted("CreateTrustPolicy", "INVALID_ARGUMENT")).await,
        10
    );
    assert_eq!(sample(&app, &counted("DeleteTrustPolicy", "OK")).await, 1);
}

/// A policy made by a narrow admin key mints keys in that key's scope (its
/// owner and tenant, and it may revoke them), with the policy's allow-list.
#[tokio::test]
async fn exchanged_keys_get_the_creators_scope_and_the_policys_allow_list() {
    let issuer = FakeIssuer::start().await;
    let app = spawn(Backend::Sqlite).await;
    let (_, narrow) = app
        .mint(pb::MintKeyRequest {
            permissions: vec![
                "keyward:trust:write".into(),
                "keyward:keys:write".into(),
                "deploy:read".into(),
            ],
            owner: "ci".into(),
            labels: HashMap::from([("tenant".to_owned(), "acme".to_owned())]),
            ..Default::default()
        })
        .await
        .unwrap();
    let policy = create_policy(
        &app,
        &narrow,
        "ci-deploy",
        pb::TrustPolicySpec {
            roles: vec![],
            permissions: vec!["deploy:read".into()],
            allowed_cidrs: vec!["10.0.0.0/8".into()],
            ..spec(issuer.url())
        },
    )
    .await
    .unwrap();
    assert_eq!(policy.spec.unwrap().labels["tenant"], "acme");
    let token = issuer.sign(&issuer.claims(AUDIENCE, &job_claims()));
    let minted = exchange(&app, "ci-deploy", &token).await.unwrap();
    let key = minted.key.unwrap();
    assert_eq!(
        (key.owner.as_str(), key.labels["tenant"].as_str()),
        ("ci", "acme")
    );
    assert_eq!(key.allowed_cidrs, ["10.0.0.0/8"]);
    let from = |client_ip: &str| pb::ValidateRequest {
        key: minted.plaintext.clone(),
        required_permissions: vec!["deploy:read".into()],
        client_ip: client_ip.into(),
    };
    let mut keys = app.key_client().await;
    let inside = keys
        .validate(authed(&app.admin_key, from("10.1.2.3")))
        .await
        .unwrap();
    assert!(inside.into_inner().valid);
    let outside = keys
        .validate(authed(&app.admin_key, from("192.0.2.1")))
        .await
        .unwrap();
    assert_eq!(denial(&outside.into_inner()), pb::Denial::Forbidden);
    // The policy's creator may revoke what its policy minted.
    let revoke = pb::RevokeKeyRequest {
        id: key.id.clone(),
        reason: "job cancelled".into(),
    };
    app.admin_client()
        .await
        .revoke_key(authed(&narrow, revoke))
        .await
        .unwrap();
}

/// Exchange needs no credential, so strangers' garbage must not turn into
/// database reads: unknown policies and malformed or forged tokens are
/// refused from memory (the policies are read at most once per
/// `POLICY_REFRESH`, the issuer's keys at most once per interval).
#[tokio::test]
async fn a_flood_of_bad_exchanges_costs_almost_no_database_reads() {
    let issuer = FakeIssuer::start().await;
    let app = spawn(Backend::Sqlite).await;
    with_policy(&app, &issuer).await;
    let good = issuer.sign(&issuer.claims(AUDIENCE, &job_claims()));
    exchange(&app, "deploy", &good).await.unwrap();
    let before = app.store.operations();
    for n in 0..100 {
        let forged = issuer.sign_with_header(
            &json!({"kid": format!("made-up-{n}")}),
            &issuer.claims(AUDIENCE, &job_claims()),
        );
        for (policy, token) in [
            (format!("no-such-policy-{n}"), good.clone()),
            ("deploy".to_owned(), format!("garbage.{n}.x")),
            (
                "deploy".to_owned(),
                issuer.unsigned(&issuer.claims(AUDIENCE, &job_claims())),
            ),
            ("deploy".to_owned(), forged),
        ] {
            assert_denied(exchange(&app, &policy, &token).await, &token, &policy);
        }
    }
    let reads = app.store.operations() - before;
    // One re-read of the policies if the refresh interval passed meanwhile.
    assert!(
        reads <= 2,
        "{reads} store operations for 400 refused exchanges"
    );
    assert_eq!(issuer.jwks_fetches(), 1);
}

/// The issuer's key rotation is picked up at once (an unknown `kid`
/// refetches), but made-up `kid`s refetch at most once per interval.
#[tokio::test]
async fn unknown_kids_refetch_the_issuers_keys_at_most_once_per_interval() {
    let issuer = FakeIssuer::start().await;
    let app = spawn(Backend::Sqlite).await;
    with_policy(&app, &issuer).await;
    let token = |issuer: &FakeIssuer| issuer.sign(&issuer.claims(AUDIENCE, &job_claims()));
    exchange(&app, "deploy", &token(&issuer)).await.unwrap();
    assert_eq!(issuer.jwks_fetches(), 1);
    for _ in 0..5 {
        let forged = issuer.sign_with_header(
            &json!({"kid": "made-up"}),
            &issuer.claims(AUDIENCE, &job_claims()),
        );
        assert_denied(
            exchange(&app, "deploy", &forged).await,
            &forged,
            "made-up kid",
        );
    }
    assert_eq!(issuer.jwks_fetches(), 1, "within the interval: no refetch");
    // Cached keys still serve.
    exchange(&app, "deploy", &token(&issuer)).await.unwrap();
    assert_eq!(issuer.jwks_fetches(), 1);

    // With no interval, a rotation is picked up by the first token using it.
    let eager = TestApp::builder()
        .settings(settings(Duration::ZERO))
        .spawn()
        .await;
    with_policy(&eager, &issuer).await;
    exchange(&eager, "deploy", &token(&issuer)).await.unwrap();
    issuer.rotate_to("es-2");
    exchange(&eager, "deploy", &token(&issuer)).await.unwrap();
    assert_eq!(issuer.jwks_fetches(), 3);
}

/// A `jti` exchanged on one replica is refused on another, and the key
/// minted on the first validates on the second.
#[tokio::test]
async fn a_jti_used_on_one_replica_is_refused_on_another() {
    if !postgres_reachable().await {
        return;
    }
    let issuer = FakeIssuer::start().await;
    let a = spawn(Backend::Postgres).await;
    let b = a.replica().await;
    with_policy(&a, &issuer).await;
    // B learns of the policy's role through the change feed.
    let start = tokio::time::Instant::now();
    let role = || pb::GetRoleRequest {
        name: "deployer".into(),
    };
    while b
        .admin_client()
        .await
        .get_role(authed(&b.admin_key, role()))
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "B never saw the role"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let token = issuer.sign(&issuer.claims(AUDIENCE, &job_claims()));
    let minted = exchange(&a, "deploy", &token).await.unwrap();
    assert_denied(exchange(&b, "deploy", &token).await, &token, "replay on B");
    assert_eq!(exchanges(&b, "refused", "replayed").await, 1);
    let start = tokio::time::Instant::now();
    while !b.validate(&minted.plaintext, &["deploy:write"]).await.valid {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "B never saw the key"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And a fresh token works on B.
    let fresh = issuer.sign(&issuer.claims(AUDIENCE, &job_claims()));
    exchange(&b, "deploy", &fresh).await.unwrap();
}

/// A token signed by a library no one here wrote: `PyJWT`, RS256, with an
/// RSA key Python's `cryptography` generates at run time.
#[tokio::test]
async fn a_token_signed_by_pyjwt_is_exchanged() {
    const SCRIPT: &str = r#"
import json, sys, jwt
from cryptography.hazmat.primitives.asymmetric import rsa
claims = json.loads(sys.argv[1])
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
jwk.update({"kid": "py-1", "use": "sig", "alg": "RS256"})
token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "py-1"})
print(json.dumps({"jwk": jwk, "token": token}))
"#;
    let check = Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .output();
    let missing = match check {
        Ok(output) if output.status.success() => None,
        Ok(output) => Some(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
        Err(error) => Some(format!("python3: {error}")),
    };
    if let Some(missing) = missing {
        assert!(
            !running_in_ci(),
            "CI=true and PyJWT is missing (pip install PyJWT cryptography): {missing}"
        );
        eprintln!("skipped: needs python3 with PyJWT and cryptography ({missing})");
        return;
    }
    let issuer = FakeIssuer::start().await;
    let app = spawn(Backend::Sqlite).await;
    with_policy(&app, &issuer).await;
    let claims = issuer.claims(AUDIENCE, &job_claims());
    let output = Command::new("python3")
        .args(["-c", SCRIPT, &claims.to_string()])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    issuer.add_jwk(printed["jwk"].clone());
    let token = printed["token"].as_str().unwrap();
    assert!(token.starts_with("eyJ"), "a compact JWS");
    // Tampering with PyJWT's token breaks its RSA signature.
    let (rest, signature) = token.rsplit_once('.').unwrap();
    let mut bytes = signature.as_bytes().to_vec();
    bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
    let forged = format!("{rest}.{}", String::from_utf8(bytes).unwrap());
    assert_denied(
        exchange(&app, "deploy", &forged).await,
        &forged,
        "tampered RS256",
    );
    assert_eq!(exchanges(&app, "refused", "signature").await, 1);
    let minted = exchange(&app, "deploy", token).await.unwrap();
    assert!(
        app.validate(&minted.plaintext, &["deploy:write"])
            .await
            .valid
    );
}

/// The `keyward` binary at trace level: neither an identity token nor the
/// key exchanged for it reaches the log or the database, whether the
/// exchange succeeds or is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_tokens_and_exchanged_keys_never_reach_the_logs_or_the_database() {
    use crate::binary::{Server, channel};

    let issuer = FakeIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("keyward.db").display());
    let key_file = dir.path().join("admin.key").display().to_string();
    let mut server = Server::start_in(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &database,
            "--bootstrap-key-file",
            &key_file,
            "--oidc-allow-http-issuers",
        ],
        &[("RUST_LOG", "trace")],
    );
    let addr = server.wait_until_listening();
    let admin_key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    let channel = channel(addr).await;
    let mut admin = pb::admin_service_client::AdminServiceClient::new(channel.clone());
    let role = pb::CreateRoleRequest {
        name: "deployer".into(),
        permissions: vec!["deploy:write".into()],
        ..Default::default()
    };
    admin.create_role(authed(&admin_key, role)).await.unwrap();
    let policy = pb::CreateTrustPolicyRequest {
        name: "deploy".into(),
        spec: Some(spec(issuer.url())),
    };
    TrustServiceClient::new(channel.clone())
        .create_trust_policy(authed(&admin_key, policy))
        .await
        .unwrap();
    let mut client = ExchangeServiceClient::new(channel);
    let exchange = |token: &str| {
        let request = pb::ExchangeRequest {
            policy: "deploy".into(),
            token: token.to_owned(),
        };
        let mut client = client.clone();
        async move {
            client
                .exchange(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let good = issuer.sign(&issuer.claims(AUDIENCE, &job_claims()));
    let minted = exchange(&good).await.unwrap();
    exchange(&good).await.unwrap_err();
    let forged = issuer.sign(&issuer.claims(AUDIENCE, &json!({"repository": "acme/api-evil"})));
    exchange(&forged).await.unwrap_err();
    client
        .revoke_self(authed(&minted.plaintext, pb::RevokeSelfRequest {}))
        .await
        .unwrap();
    let log = server.terminate();
    assert!(log.contains("exchange refused"), "the refusals are logged");
    assert!(log.contains("replayed"), "with their reason");

    let mut files = vec![("log".to_owned(), log.into_bytes())];
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        files.push((path.display().to_string(), std::fs::read(&path).unwrap()));
    }
    // A token's signature is what makes it a credential; the key's secret
    // follows its prefix and id.
    let secrets = [
        good.rsplit('.').next().unwrap(),
        forged.rsplit('.').next().unwrap(),
        &minted.plaintext[3 + 11..3 + 44],
    ];
    for secret in secrets {
        for (name, bytes) in &files {
            let text = String::from_utf8_lossy(bytes);
            assert!(!text.contains(secret), "a secret leaked into {name}");
        }
    }
}

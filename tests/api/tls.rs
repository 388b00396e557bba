//! TLS on the gRPC port (issue 11): keys never cross the network in clear
//! text, a client without an accepted certificate is refused at the
//! handshake when mTLS is on, and certificates replaced on disk are served
//! to new connections without dropping established ones. Certificates are
//! made at run time (`keyward::testing::tls`).

use std::time::{Duration, Instant};

use keyward::{
    pb::{self, key_service_client::KeyServiceClient},
    server::{Application, Settings, StartupError},
    testing::{
        TestApp, authed,
        tls::{TestCa, TestIdentity, TestPki, client_config},
    },
    tls::TlsFiles,
};
use tonic::transport::{Channel, ClientTlsConfig};

/// Starts a server with `pki`'s files; its harness clients trust the server
/// CA and present `identity`.
async fn tls_app(pki: &TestPki, identity: Option<&TestIdentity>) -> TestApp {
    TestApp::builder()
        .settings(Settings {
            tls: Some(pki.files.clone()),
            ..Settings::default()
        })
        .spawn()
        .await
        .with_client_tls(client_config(&pki.server_ca, identity))
}

/// A Validate over a new connection made with `tls` (or in plaintext), as a
/// backend would: `Err` when the connection or the call fails.
async fn validate_over(
    app: &TestApp,
    tls: Option<ClientTlsConfig>,
    caller: &str,
    key: &str,
) -> Result<pb::ValidateResponse, String> {
    let channel = connect(app, tls).await?;
    let request = pb::ValidateRequest {
        key: key.to_owned(),
        ..Default::default()
    };
    KeyServiceClient::new(channel)
        .validate(authed(caller, request))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| status.to_string())
}

async fn connect(app: &TestApp, tls: Option<ClientTlsConfig>) -> Result<Channel, String> {
    let endpoint = match tls {
        Some(tls) => Channel::from_shared(format!("https://{}", app.addr))
            .unwrap()
            .tls_config(tls)
            .map_err(|error| error.to_string())?,
        None => Channel::from_shared(format!("http://{}", app.addr)).unwrap(),
    };
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|error| format!("{error:?}"))
}

#[tokio::test]
async fn keys_are_validated_over_tls_and_never_in_clear_text() {
    let pki = TestPki::new(false);
    let app = tls_app(&pki, None).await;
    let (_, key) = app.mint_with_roles(&["validator"]).await;
    assert!(app.validate(&key, &[]).await.valid);

    let trusted = validate_over(
        &app,
        Some(client_config(&pki.server_ca, None)),
        &app.admin_key,
        &key,
    )
    .await;
    assert!(trusted.expect("a TLS client is served").valid);

    // A plaintext client is not served: its HTTP/2 preface is not a TLS
    // handshake.
    let plaintext = validate_over(&app, None, &app.admin_key, &key).await;
    assert!(plaintext.is_err(), "{plaintext:?}");

    // A client that does not trust the server's CA gives up at the
    // handshake, before sending its key.
    let stranger = TestCa::new("someone else's CA");
    let untrusted = validate_over(
        &app,
        Some(client_config(&stranger, None)),
        &app.admin_key,
        &key,
    )
    .await;
    assert!(untrusted.is_err(), "{untrusted:?}");
}

#[tokio::test]
async fn mtls_refuses_a_client_without_a_certificate_from_the_client_ca() {
    let pki = TestPki::new(true);
    let backend = pki.client_ca.client_identity("backend-1");
    let app = tls_app(&pki, Some(&backend)).await;
    let (_, key) = app.mint_with_roles(&["validator"]).await;

    let with_certificate = validate_over(
        &app,
        Some(client_config(&pki.server_ca, Some(&backend))),
        &app.admin_key,
        &key,
    )
    .await;
    assert!(with_certificate.expect("served").valid);

    let without = validate_over(
        &app,
        Some(client_config(&pki.server_ca, None)),
        &app.admin_key,
        &key,
    )
    .await;
    assert!(without.is_err(), "{without:?}");

    // Signed, but by a CA the server was not told to accept.
    let impostor = TestCa::new("another client CA").client_identity("backend-1");
    let foreign = validate_over(
        &app,
        Some(client_config(&pki.server_ca, Some(&impostor))),
        &app.admin_key,
        &key,
    )
    .await;
    assert!(foreign.is_err(), "{foreign:?}");

    // Signed by the CA the server's own certificate comes from: trusted by
    // clients, but not named by --tls-client-ca, so not accepted for them.
    let server_ca_signed = pki.server_ca.client_identity("backend-1");
    let wrong_ca = validate_over(
        &app,
        Some(client_config(&pki.server_ca, Some(&server_ca_signed))),
        &app.admin_key,
        &key,
    )
    .await;
    assert!(wrong_ca.is_err(), "{wrong_ca:?}");
}

#[tokio::test]
async fn replaced_certificates_reach_new_connections_and_spare_established_ones() {
    let pki = TestPki::new(false);
    let app = tls_app(&pki, None).await;
    let (_, key) = app.mint_with_roles(&["validator"]).await;
    let mut established = KeyServiceClient::new(
        connect(&app, Some(client_config(&pki.server_ca, None)))
            .await
            .expect("connects"),
    );
    let validate = |key: &str| pb::ValidateRequest {
        key: key.to_owned(),
        ..Default::default()
    };

    // cert-manager writes a certificate from a new CA in place.
    let rotated = TestCa::new("the rotated CA");
    rotated.server_identity().write_to(pki.dir(), "server");

    let deadline = Instant::now() + keyward::tls::RELOAD_CHECK_INTERVAL * 3;
    loop {
        let attempt = validate_over(
            &app,
            Some(client_config(&rotated, None)),
            &app.admin_key,
            &key,
        )
        .await;
        if attempt.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new connections never got the new certificate: {attempt:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // New connections no longer get the old certificate ...
    let old = validate_over(
        &app,
        Some(client_config(&pki.server_ca, None)),
        &app.admin_key,
        &key,
    )
    .await;
    assert!(old.is_err(), "{old:?}");
    // ... while the connection made before the change goes on.
    let answer = established
        .validate(authed(&app.admin_key, validate(&key)))
        .await
        .expect("the established connection still serves")
        .into_inner();
    assert!(answer.valid);
}

#[tokio::test]
async fn a_bad_certificate_fails_start_up_naming_the_file() {
    let pki = TestPki::new(false);
    let dir = tempfile::tempdir().unwrap();
    let start = |files: TlsFiles| {
        let settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: format!("sqlite://{}", dir.path().join("keyward.db").display()),
            bootstrap_key_file: dir.path().join("admin.key"),
            tls: Some(files),
            ..Settings::default()
        };
        async move {
            match Application::build(settings).await {
                Ok(_) => panic!("the server started"),
                Err(error) => error,
            }
        }
    };
    let message = |error: StartupError| {
        assert!(matches!(error, StartupError::Tls(_)), "{error:?}");
        let message = error.to_string();
        assert_eq!(message.lines().count(), 1, "{message}");
        message
    };

    let missing = dir.path().join("missing.crt");
    let error = message(
        start(TlsFiles {
            cert: missing.clone(),
            ..pki.files.clone()
        })
        .await,
    );
    assert!(
        error.contains(&format!("cannot read {}", missing.display())),
        "{error}"
    );

    let garbage = dir.path().join("garbage.crt");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let error = message(
        start(TlsFiles {
            cert: garbage.clone(),
            ..pki.files.clone()
        })
        .await,
    );
    assert!(error.contains(&garbage.display().to_string()), "{error}");
    assert!(error.contains("no PEM certificate"), "{error}");

    // The key of another certificate.
    let (_, other_key) = pki
        .server_ca
        .server_identity()
        .write_to(dir.path(), "other");
    let error = message(
        start(TlsFiles {
            key: other_key.clone(),
            ..pki.files.clone()
        })
        .await,
    );
    assert!(error.contains(&other_key.display().to_string()), "{error}");
    assert!(error.contains("does not belong"), "{error}");

    // No database was made for a server that could not start.
    assert!(!dir.path().join("keyward.db").exists());
}

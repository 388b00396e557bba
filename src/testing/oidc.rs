//! A fake OpenID Connect issuer for the exchange's tests: discovery and a
//! JWKS over plain HTTP on 127.0.0.1 (so the server under test needs
//! `--oidc-allow-http-issuers`), keys generated at run time with ring, and
//! helpers that sign tokens, good ones and the attacks on them.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{Router, extract::State, response::IntoResponse, routing::get};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    hmac,
    rand::{SecureRandom as _, SystemRandom},
    signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _},
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};

/// A signing key of the issuer.
enum Signer {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

struct Key {
    kid: String,
    signer: Signer,
}

impl Key {
    fn generate(kid: &str, eddsa: bool) -> Self {
        let rng = SystemRandom::new();
        let signer = if eddsa {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("ring generates keys");
            Signer::EdDsa(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("its own key"))
        } else {
            let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("ring generates keys");
            Signer::Es256(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("its own key"))
        };
        Self {
            kid: kid.to_owned(),
            signer,
        }
    }

    fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Es256(_) => "ES256",
            Signer::EdDsa(_) => "EdDSA",
        }
    }

    fn public_key(&self) -> &[u8] {
        match &self.signer {
            Signer::Es256(pair) => pair.public_key().as_ref(),
            Signer::EdDsa(pair) => pair.public_key().as_ref(),
        }
    }

    fn jwk(&self) -> Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        match &self.signer {
            Signer::Es256(pair) => {
                let point = pair.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
                       "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            Signer::EdDsa(pair) => json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid,
                                          "use": "sig", "x": b64(pair.public_key().as_ref())}),
        }
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match &self.signer {
            Signer::Es256(pair) => pair
                .sign(&SystemRandom::new(), message)
                .expect("ring signs")
                .as_ref()
                .to_vec(),
            Signer::EdDsa(pair) => pair.sign(message).as_ref().to_vec(),
        }
    }
}

struct Issuer {
    url: String,
    keys: Mutex<Vec<Key>>,
    /// JWKs served besides the issuer's own (e.g. one made by Python).
    extra: Mutex<Vec<Value>>,
    jwks_fetches: AtomicUsize,
}

/// A running fake issuer; stops when dropped.
pub struct FakeIssuer {
    issuer: Arc<Issuer>,
    server: JoinHandle<()>,
}

impl Drop for FakeIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Seconds since the epoch, now.
#[must_use]
pub fn now_seconds() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(since.as_secs()).expect("before 2262")
}

/// A random `jti`.
#[must_use]
pub fn random_jti() -> String {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).expect("OS randomness");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `header.payload` of a JWT with these parts, base64url-encoded.
fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

impl FakeIssuer {
    /// Starts an issuer with an ES256 key `es-1` and an EdDSA key `ed-1`.
    ///
    /// # Panics
    /// When it cannot listen on 127.0.0.1.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds loopback");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let issuer = Arc::new(Issuer {
            url,
            keys: Mutex::new(vec![
                Key::generate("es-1", false),
                Key::generate("ed-1", true),
            ]),
            extra: Mutex::default(),
            jwks_fetches: AtomicUsize::new(0),
        });
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(issuer.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { issuer, server }
    }

    /// The issuer URL: what policies name and tokens carry as `iss`.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.issuer.url
    }

    /// How many times the JWKS was fetched.
    #[must_use]
    pub fn jwks_fetches(&self) -> usize {
        self.issuer.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Serves `jwk` in the JWKS too.
    ///
    /// # Panics
    /// Never, barring a poisoned lock.
    pub fn add_jwk(&self, jwk: Value) {
        self.issuer.extra.lock().unwrap().push(jwk);
    }

    /// Replaces every key by a new ES256 key `kid`.
    ///
    /// # Panics
    /// Never, barring a poisoned lock.
    pub fn rotate_to(&self, kid: &str) {
        *self.issuer.keys.lock().unwrap() = vec![Key::generate(kid, false)];
    }

    /// Good claims for `audience`, changed by `changes` (a `null` removes
    /// a claim): valid for five minutes from now, a fresh `jti`.
    ///
    /// # Panics
    /// When `changes` is not a JSON object.
    #[must_use]
    pub fn claims(&self, audience: &str, changes: &Value) -> Value {
        let now = now_seconds();
        let mut claims = json!({
            "iss": self.url(), "aud": audience, "sub": "repo:acme/api:ref:refs/heads/main",
            "jti": random_jti(), "iat": now, "nbf": now, "exp": now + 300,
        });
        let object = claims.as_object_mut().expect("an object");
        for (name, value) in changes.as_object().expect("changes are an object") {
            if value.is_null() {
                object.remove(name);
            } else {
                object.insert(name.clone(), value.clone());
            }
        }
        claims
    }

    /// `claims` signed with the issuer's first key (ES256).
    #[must_use]
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with(0, claims)
    }

    /// `claims` signed with the issuer's key number `key`.
    ///
    /// # Panics
    /// When there is no such key.
    #[must_use]
    pub fn sign_with(&self, key: usize, claims: &Value) -> String {
        let keys = self.issuer.keys.lock().unwrap();
        let key = &keys[key];
        let header = json!({"alg": key.alg(), "typ": "JWT", "kid": key.kid});
        let input = signing_input(&header, claims);
        let signature = key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// `claims` signed by the first key, with header fields replaced by
    /// `header` (a forged `kid`, say).
    #[must_use]
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let keys = self.issuer.keys.lock().unwrap();
        let key = &keys[0];
        let mut full = json!({"alg": key.alg(), "typ": "JWT", "kid": key.kid});
        for (name, value) in header.as_object().expect("an object") {
            full[name] = value.clone();
        }
        let input = signing_input(&full, claims);
        let signature = key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// `alg: none`, no signature.
    #[must_use]
    pub fn unsigned(&self, claims: &Value) -> String {
        let kid = self.issuer.keys.lock().unwrap()[0].kid.clone();
        format!(
            "{}.",
            signing_input(&json!({"alg": "none", "typ": "JWT", "kid": kid}), claims)
        )
    }

    /// Algorithm confusion: HS256 with the issuer's *public* key as the
    /// HMAC secret, which a verifier trusting the header's `alg` would
    /// accept.
    #[must_use]
    pub fn hs256_with_public_key(&self, claims: &Value) -> String {
        let keys = self.issuer.keys.lock().unwrap();
        let key = &keys[0];
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": key.kid});
        let input = signing_input(&header, claims);
        let secret = hmac::Key::new(hmac::HMAC_SHA256, key.public_key());
        let tag = hmac::sign(&secret, input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }
}

/// `value` as an `application/json` answer.
fn json_response(value: &Value) -> impl IntoResponse + use<> {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
}

async fn discovery(State(issuer): State<Arc<Issuer>>) -> impl IntoResponse {
    json_response(&json!({
        "issuer": issuer.url,
        "jwks_uri": format!("{}/jwks", issuer.url),
        "id_token_signing_alg_values_supported": ["ES256", "EdDSA", "RS256"],
    }))
}

async fn jwks(State(issuer): State<Arc<Issuer>>) -> impl IntoResponse {
    issuer.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let mut keys: Vec<Value> = issuer.keys.lock().unwrap().iter().map(Key::jwk).collect();
    keys.extend(issuer.extra.lock().unwrap().iter().cloned());
    json_response(&json!({ "keys": keys }))
}

//! An issuer's signing keys: OpenID discovery (`/.well-known/openid-configuration`
//! names the `jwks_uri`), the key set it serves, and a cache of both.
//!
//! Keys are cached per issuer for [`MAX_AGE`]. A token naming a `kid` the
//! cache does not hold refetches the set, so an issuer's key rotation is
//! picked up at once, but at most once per refresh interval: tokens with
//! made-up `kid`s cannot turn into a flood of requests to the issuer.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

use super::{Refusal, fetch::Fetcher};
use crate::trust::Issuer;

/// How long a fetched key set is used before it is fetched again.
pub const MAX_AGE: Duration = Duration::from_hours(1);

/// The signature algorithms keyward accepts: asymmetric only. `none` and
/// the HMAC family are never accepted: with HMAC, anyone holding the
/// issuer's *public* key could sign (algorithm confusion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256, keys of 2048 to 8192 bits.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl Algorithm {
    /// The JOSE name, e.g. `RS256`.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "RS256" => Some(Self::Rs256),
            "ES256" => Some(Self::Es256),
            "EdDSA" => Some(Self::EdDsa),
            _ => None,
        }
    }

    /// The JOSE name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }
}

/// A public key from a JWKS, of one of the [`Algorithm`]s' types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyingKey {
    /// `kty: RSA`: modulus and exponent, big-endian.
    Rsa {
        /// The modulus.
        n: Vec<u8>,
        /// The public exponent.
        e: Vec<u8>,
    },
    /// `kty: EC, crv: P-256`: the uncompressed point (`04 || x || y`).
    P256(Vec<u8>),
    /// `kty: OKP, crv: Ed25519`: the 32-byte public key.
    Ed25519(Vec<u8>),
}

impl VerifyingKey {
    /// The one algorithm this key verifies: a key is never used with
    /// another (an RSA key for HS256, say).
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Rsa { .. } => Algorithm::Rs256,
            Self::P256(_) => Algorithm::Es256,
            Self::Ed25519(_) => Algorithm::EdDsa,
        }
    }

    /// Whether `signature` is this key's over `message` with `algorithm`.
    #[must_use]
    pub fn verify(&self, algorithm: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        if algorithm != self.algorithm() {
            return false;
        }
        match self {
            Self::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
            Self::P256(point) => UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(message, signature)
                .is_ok(),
            Self::Ed25519(key) => UnparsedPublicKey::new(&signature::ED25519, key)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

/// One member of a JWKS, as served.
#[derive(Debug, Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Debug, Deserialize)]
struct KeySet {
    keys: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// The keys of a JWKS document by `kid`. Members keyward cannot use (no
/// `kid`, another key type or curve, `use` other than `sig`, an `alg` that
/// does not fit the key) are skipped, not fatal: issuers publish
/// encryption keys and future algorithms alongside.
///
/// # Errors
/// When the document is not a JWKS at all.
pub fn parse_key_set(document: &[u8]) -> Result<HashMap<String, Arc<VerifyingKey>>, String> {
    let set: KeySet = serde_json::from_slice(document).map_err(|e| format!("not a JWKS: {e}"))?;
    Ok(set
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .filter_map(|jwk| {
            let key = verifying_key(&jwk)?;
            Some((jwk.kid?, Arc::new(key)))
        })
        .collect())
}

fn verifying_key(jwk: &Jwk) -> Option<VerifyingKey> {
    if jwk.usage.as_deref().is_some_and(|usage| usage != "sig") {
        return None;
    }
    let decode = |field: &Option<String>| URL_SAFE_NO_PAD.decode(field.as_deref()?).ok();
    let key = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => VerifyingKey::Rsa {
            n: decode(&jwk.n)?,
            e: decode(&jwk.e)?,
        },
        ("EC", Some("P-256")) => {
            let (x, y) = (decode(&jwk.x)?, decode(&jwk.y)?);
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            VerifyingKey::P256([&[4][..], &x, &y].concat())
        }
        ("OKP", Some("Ed25519")) => {
            let x = decode(&jwk.x)?;
            (x.len() == 32).then_some(())?;
            VerifyingKey::Ed25519(x)
        }
        _ => return None,
    };
    match jwk.alg.as_deref() {
        Some(alg) if Algorithm::parse(alg) != Some(key.algorithm()) => None,
        _ => Some(key),
    }
}

/// What is cached of one issuer.
struct Entry {
    keys: HashMap<String, Arc<VerifyingKey>>,
    /// The last fetch that succeeded, if any.
    fetched_at: Option<Instant>,
    /// The last fetch tried, successful or not: the refresh interval counts
    /// from it, so an issuer that is down is not asked again at every token.
    tried_at: Instant,
}

/// The key sets of every issuer in use, fetched on demand.
pub struct Jwks {
    fetcher: Fetcher,
    /// Least time between two fetches for one issuer.
    refresh_interval: Duration,
    /// One lock for all issuers: fetches are rare, bounded by a timeout,
    /// and serialising them means one fetch where many tokens arrive at once.
    entries: tokio::sync::Mutex<HashMap<Issuer, Entry>>,
}

impl Jwks {
    /// A cache fetching with `fetcher`, at most once per `refresh_interval`
    /// for each issuer.
    #[must_use]
    pub fn new(fetcher: Fetcher, refresh_interval: Duration) -> Self {
        Self {
            fetcher,
            refresh_interval,
            entries: tokio::sync::Mutex::default(),
        }
    }

    /// Whether `http://` issuers are allowed.
    #[must_use]
    pub fn allows_http(&self) -> bool {
        self.fetcher.allows_http()
    }

    /// The key `kid` of `issuer`: cached, or fetched when the cache has
    /// none or is older than [`MAX_AGE`], if the refresh interval allows.
    ///
    /// # Errors
    /// [`Refusal::UnknownKey`] when the issuer has no such key (or none was
    /// fetched because the interval has not passed);
    /// [`Refusal::IssuerUnreachable`] when fetching failed.
    pub async fn key(&self, issuer: &Issuer, kid: &str) -> Result<Arc<VerifyingKey>, Refusal> {
        let mut entries = self.entries.lock().await;
        let now = Instant::now();
        if let Some(entry) = entries.get(issuer) {
            let fresh = entry
                .fetched_at
                .is_some_and(|at| now.duration_since(at) < MAX_AGE);
            if fresh && let Some(key) = entry.keys.get(kid) {
                return Ok(key.clone());
            }
            if now.duration_since(entry.tried_at) < self.refresh_interval {
                return match entry.keys.get(kid) {
                    // Stale, but the issuer was asked a moment ago and failed.
                    Some(key) => Ok(key.clone()),
                    None if entry.fetched_at.is_none() => Err(Refusal::IssuerUnreachable),
                    None => Err(Refusal::UnknownKey),
                };
            }
        }
        let fetched = self.fetch(issuer).await;
        let entry = entries.entry(issuer.clone()).or_insert_with(|| Entry {
            keys: HashMap::new(),
            fetched_at: None,
            tried_at: now,
        });
        entry.tried_at = now;
        match fetched {
            Ok(keys) => {
                tracing::info!(%issuer, keys = keys.len(), "OIDC issuer's keys fetched");
                entry.keys = keys;
                entry.fetched_at = Some(now);
                entry.keys.get(kid).cloned().ok_or(Refusal::UnknownKey)
            }
            Err(error) => {
                tracing::warn!(%issuer, %error, "cannot fetch the OIDC issuer's keys");
                Err(Refusal::IssuerUnreachable)
            }
        }
    }

    /// Discovery, then the key set it names.
    async fn fetch(&self, issuer: &Issuer) -> Result<HashMap<String, Arc<VerifyingKey>>, String> {
        let document = self
            .fetcher
            .get(&issuer.discovery_url())
            .await
            .map_err(|e| format!("discovery document: {e}"))?;
        let discovery: Discovery = serde_json::from_slice(&document)
            .map_err(|e| format!("discovery document is not OpenID discovery: {e}"))?;
        // OpenID Connect Discovery 1.0, section 4.3: the document must name
        // the issuer it was fetched for, exactly.
        if discovery.issuer != issuer.as_str() {
            return Err(format!(
                "discovery document names issuer {:?}, not this one",
                discovery.issuer
            ));
        }
        let set = self
            .fetcher
            .get(&discovery.jwks_uri)
            .await
            .map_err(|e| format!("jwks_uri: {e}"))?;
        parse_key_set(&set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_members_are_skipped() {
        let x = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let document = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ok", "x": x},
            {"kty": "OKP", "crv": "Ed25519", "x": x},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": x},
            {"kty": "OKP", "crv": "Ed25519", "kid": "hs", "alg": "HS256", "x": x},
            {"kty": "oct", "kid": "secret", "k": x},
            {"kty": "EC", "crv": "P-384", "kid": "p384", "x": x, "y": x},
            {"kty": "OKP", "crv": "Ed25519", "kid": "short", "x": "AAAA"},
            "not an object"
        ]});
        let keys = parse_key_set(document.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["ok"]);
        assert!(parse_key_set(b"[]").is_err());
    }

    #[test]
    fn a_key_verifies_only_its_own_algorithm() {
        let key = VerifyingKey::Ed25519(vec![0; 32]);
        assert!(!key.verify(Algorithm::Es256, b"m", &[0; 64]));
        assert_eq!(Algorithm::parse("HS256"), None);
        assert_eq!(Algorithm::parse("none"), None);
        assert_eq!(Algorithm::parse("es256"), None);
    }
}

#[cfg(test)]
mod discovery_tests {
    use axum::{Router, routing::get};

    use super::*;

    /// A discovery document must name the issuer it was fetched for: one
    /// naming another is not trusted, and its keys are never fetched.
    #[tokio::test]
    async fn a_discovery_document_for_another_issuer_is_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let document = format!(r#"{{"issuer": "https://evil.example", "jwks_uri": "{url}/jwks"}}"#);
        let router = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { document }),
            )
            .route("/jwks", get(|| async { r#"{"keys": []}"# }));
        tokio::spawn(async move { axum::serve(listener, router).await });
        let issuer = Issuer::parse(&url, true).unwrap();
        let jwks = Jwks::new(Fetcher::new(true), Duration::ZERO);
        assert_eq!(
            jwks.key(&issuer, "k").await,
            Err(Refusal::IssuerUnreachable)
        );
        // Within the refresh interval the issuer is not asked again, and the
        // refusal still says why.
        let jwks = Jwks::new(Fetcher::new(true), Duration::from_hours(1));
        for _ in 0..2 {
            assert_eq!(
                jwks.key(&issuer, "k").await,
                Err(Refusal::IssuerUnreachable)
            );
        }
    }
}

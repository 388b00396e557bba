//! Verifying a JWT identity token against a trust policy, in the order that
//! spends the least on a forged token: shape and algorithm, then the key
//! and the signature, then the claims (which mean nothing before the
//! signature holds).

use std::{collections::BTreeMap, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{
    IdentityToken, Refusal,
    jwks::{Algorithm, Jwks},
};
use crate::{clock::Timestamp, trust::TrustPolicy};

/// Longest token accepted, in bytes (GitHub's are about 1.5 KB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Clock skew allowed between the issuer and keyward, on `exp`, `nbf`, `iat`.
pub const LEEWAY: Duration = Duration::from_mins(1);
/// Tokens valid for longer than this from now are refused: the replay
/// record of a token is kept until it expires. CI tokens live minutes.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_hours(24);
/// Longest `jti` and `sub` accepted, in bytes: both are recorded (the
/// replay table, the key's labels and audit record).
const MAX_ID_BYTES: usize = 256;

/// A token that passed every check: what the exchange records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `sub`.
    pub subject: String,
    /// `jti`: exchanged at most once.
    pub jti: String,
    /// `exp`: until when the `jti` must be remembered.
    pub expires_at: Timestamp,
    /// The policy's required claims and the values that matched them.
    pub matched: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
}

/// A token split into its parts, its header checked: what can be known of
/// it without the issuer's keys. The exchange parses first, so a malformed
/// token or a forbidden algorithm costs no database read or fetch.
pub struct Jws<'a> {
    algorithm: Algorithm,
    kid: String,
    /// `header.payload`: what the signature covers.
    signed: &'a str,
    payload: &'a str,
    signature: Vec<u8>,
}

impl std::fmt::Debug for Jws<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jws")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Splits `token` and checks its header: size, shape, an allowed `alg`, no
/// `crit`, a `kid`.
///
/// # Errors
/// [`Refusal::Malformed`], [`Refusal::Algorithm`] or [`Refusal::UnknownKey`]
/// (no `kid`).
pub fn parse(token: &IdentityToken) -> Result<Jws<'_>, Refusal> {
    let token = token.expose();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Refusal::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Malformed);
    };
    let header_json: Header =
        serde_json::from_slice(&decode(header)?).map_err(|_| Refusal::Malformed)?;
    let algorithm = Algorithm::parse(&header_json.alg).ok_or(Refusal::Algorithm)?;
    // RFC 7515 4.1.11: extensions a verifier does not understand must fail it.
    if header_json.crit.is_some() {
        return Err(Refusal::Algorithm);
    }
    Ok(Jws {
        algorithm,
        kid: header_json.kid.ok_or(Refusal::UnknownKey)?,
        signed: &token[..header.len() + 1 + payload.len()],
        payload,
        signature: decode(signature)?,
    })
}

fn decode(part: &str) -> Result<Vec<u8>, Refusal> {
    URL_SAFE_NO_PAD.decode(part).map_err(|_| Refusal::Malformed)
}

/// Verifies `token` against `policy` at `now`, with the issuer's keys from
/// `jwks`.
///
/// # Errors
/// The first [`Refusal`] met.
pub async fn verify(
    token: &Jws<'_>,
    policy: &TrustPolicy,
    jwks: &Jwks,
    now: Timestamp,
) -> Result<Verified, Refusal> {
    let key = jwks.key(&policy.spec.issuer, &token.kid).await?;
    if !key.verify(token.algorithm, token.signed.as_bytes(), &token.signature) {
        return Err(Refusal::Signature);
    }
    let claims: Map<String, Value> =
        serde_json::from_slice(&decode(token.payload)?).map_err(|_| Refusal::Malformed)?;
    check_claims(&claims, policy, now)
}

/// The checks on a token's claims, once its signature holds.
///
/// # Errors
/// The first [`Refusal`] met.
///
/// # Panics
/// Never: the leeway and the lifetime bound are constants that fit.
pub fn check_claims(
    claims: &Map<String, Value>,
    policy: &TrustPolicy,
    now: Timestamp,
) -> Result<Verified, Refusal> {
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    if text("iss") != Some(policy.spec.issuer.as_str()) {
        return Err(Refusal::Issuer);
    }
    let audience = policy.spec.audience.as_str();
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(audience)),
        _ => false,
    };
    if !audience_ok {
        return Err(Refusal::Audience);
    }
    let now_ms = now.as_millis();
    let leeway = i64::try_from(LEEWAY.as_millis()).expect("a minute");
    let time = |name: &str| -> Result<Option<i64>, Refusal> {
        match claims.get(name) {
            None => Ok(None),
            // NumericDate: seconds, possibly fractional.
            Some(Value::Number(n)) => n
                .as_f64()
                .filter(|s| s.is_finite() && s.abs() < 1e13)
                // Bounded above, so the milliseconds fit an i64.
                .map(|s| {
                    #[allow(clippy::cast_possible_truncation)]
                    Some((s * 1000.0) as i64)
                })
                .ok_or(Refusal::Malformed),
            Some(_) => Err(Refusal::Malformed),
        }
    };
    let exp = time("exp")?.ok_or(Refusal::Expired)?;
    if now_ms > exp + leeway {
        return Err(Refusal::Expired);
    }
    for not_before in [time("nbf")?, time("iat")?].into_iter().flatten() {
        if not_before > now_ms + leeway {
            return Err(Refusal::NotYetValid);
        }
    }
    let max_lifetime = i64::try_from(MAX_TOKEN_LIFETIME.as_millis()).expect("a day");
    if exp - now_ms > max_lifetime {
        return Err(Refusal::TooLongLived);
    }
    let id = |name: &str| {
        text(name)
            .filter(|v| !v.is_empty() && crate::text::check(v, MAX_ID_BYTES).is_ok())
            .map(str::to_owned)
            .ok_or(Refusal::MissingClaim)
    };
    let (subject, jti) = (id("sub")?, id("jti")?);
    let mut matched = BTreeMap::new();
    for (name, pattern) in &policy.spec.claims {
        match text(name) {
            Some(value) if pattern.matches(value) => {
                matched.insert(name.clone(), value.to_owned());
            }
            _ => {
                tracing::info!(claim = %name, "required claim missing or not matching");
                return Err(Refusal::Claim);
            }
        }
    }
    Ok(Verified {
        subject,
        jti,
        // The replay record outlives the leeway too.
        expires_at: Timestamp::from_millis(exp + leeway),
        matched,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        model::Labels,
        trust::{ClaimPattern, Issuer, PolicySpec},
    };

    fn policy() -> TrustPolicy {
        TrustPolicy {
            name: "deploy".parse().unwrap(),
            spec: PolicySpec {
                description: String::new(),
                issuer: Issuer::parse("https://issuer.example", false).unwrap(),
                audience: "keyward".to_owned(),
                claims: [
                    (
                        "repository".to_owned(),
                        ClaimPattern::parse("acme/api").unwrap(),
                    ),
                    (
                        "ref".to_owned(),
                        ClaimPattern::parse("refs/heads/*").unwrap(),
                    ),
                ]
                .into(),
                roles: vec![],
                permissions: vec![],
                ttl: Duration::from_mins(10),
                allowed_cidrs: vec![],
                labels: Labels::default(),
            },
            owner: String::new(),
            created_by: None,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
        }
    }

    const NOW: i64 = 1_800_000_000;

    fn claims(changes: &Value) -> Map<String, Value> {
        let mut claims = json!({
            "iss": "https://issuer.example", "aud": "keyward", "sub": "repo:acme/api",
            "jti": "j1", "exp": NOW + 300, "iat": NOW, "nbf": NOW,
            "repository": "acme/api", "ref": "refs/heads/main",
        });
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims.as_object().unwrap().clone()
    }

    fn check(changes: &Value) -> Result<Verified, Refusal> {
        check_claims(
            &claims(changes),
            &policy(),
            Timestamp::from_millis(NOW * 1000),
        )
    }

    fn any_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            any::<String>().prop_map(Value::from),
            "(acme/api|refs/heads/main|keyward|https://issuer.example)".prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            (NOW - 100_000..NOW + 200_000).prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            Just(Value::Null),
            proptest::collection::vec(any::<String>().prop_map(Value::from), 0..3)
                .prop_map(Value::from),
        ]
    }

    proptest::proptest! {
        /// Whatever a signed token's claims hold, checking them never
        /// panics, and what passes carries every required claim.
        #[test]
        fn any_claims_are_checked_without_panicking(
            changes in proptest::collection::btree_map(
                "(iss|aud|exp|nbf|iat|jti|sub|repository|ref|x)", any_value(), 0..8,
            ),
        ) {
            let changes = Value::Object(changes.into_iter().collect());
            if let Ok(verified) = check(&changes) {
                proptest::prop_assert_eq!(verified.matched.len(), 2);
                proptest::prop_assert!(!verified.jti.is_empty());
            }
        }
    }

    #[test]
    fn each_claim_check_refuses_what_it_should() {
        let ok = check(&json!({})).unwrap();
        assert_eq!(
            (ok.subject.as_str(), ok.jti.as_str()),
            ("repo:acme/api", "j1")
        );
        assert_eq!(ok.matched["ref"], "refs/heads/main");
        assert!(check(&json!({"aud": ["other", "keyward"]})).is_ok());
        assert!(check(&json!({"exp": NOW - 30})).is_ok(), "within leeway");
        let cases = [
            (json!({"iss": "https://issuer.example/"}), Refusal::Issuer),
            (json!({"iss": null}), Refusal::Issuer),
            (json!({"aud": "keyward-other"}), Refusal::Audience),
            (json!({"aud": ["a", "b"]}), Refusal::Audience),
            (json!({"aud": null}), Refusal::Audience),
            (json!({"exp": NOW - 61}), Refusal::Expired),
            (json!({"exp": null}), Refusal::Expired),
            (json!({"exp": "soon"}), Refusal::Malformed),
            (json!({"nbf": NOW + 120}), Refusal::NotYetValid),
            (json!({"iat": NOW + 120}), Refusal::NotYetValid),
            (json!({"exp": NOW + 2 * 86_400}), Refusal::TooLongLived),
            (json!({"jti": null}), Refusal::MissingClaim),
            (json!({"jti": ""}), Refusal::MissingClaim),
            (json!({"sub": 7}), Refusal::MissingClaim),
            (json!({"repository": "acme/api-evil"}), Refusal::Claim),
            (json!({"repository": null}), Refusal::Claim),
            (json!({"repository": ["acme/api"]}), Refusal::Claim),
            (json!({"ref": "refs/tags/v1"}), Refusal::Claim),
        ];
        for (changes, refusal) in cases {
            assert_eq!(check(&changes), Err(refusal), "{changes}");
        }
    }
}

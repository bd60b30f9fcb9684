//! JWT access tokens: the issuer's key set (fetched, cached, fetched
//! again on an unknown `kid`, at most once per `jwks_refresh_interval`)
//! and the checks: an asymmetric `alg` only (never `none` or `HS*`), the
//! signature, `iss`, `aud`, `exp` and `nbf`.

use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::time::Instant;

use super::fetch::Fetcher;
use super::{Denied, Reason};

/// Most keys kept from one key set.
const MAX_KEYS: usize = 64;

/// One verification key.
struct Key {
    kid: Option<String>,
    /// Algorithms this key may verify.
    algs: &'static [Algorithm],
    key: DecodingKey,
}

/// The issuer's keys.
pub(crate) struct Keys {
    jwks_uri: Uri,
    set: parking_lot::RwLock<Arc<Vec<Key>>>,
    /// When the set was last fetched again (the start-up fetch does not
    /// count); held while fetching (one fetch at a time).
    fetched: tokio::sync::Mutex<Option<Instant>>,
    refresh_interval: Duration,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("jwks_uri", &self.jwks_uri)
            .field("keys", &self.set.read().len())
            .finish()
    }
}

/// A JWT's header fields the proxy looks at, read before any check.
struct Peeked {
    alg: String,
    kid: Option<String>,
}

/// The header of `token` if it has the shape of a JWT (three base64url
/// parts, a JSON header naming `alg`).
fn peek(token: &str) -> Option<Peeked> {
    let mut parts = token.split('.');
    let (h, _, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: Value = serde_json::from_slice(&super::b64::decode_url(h)?).ok()?;
    Some(Peeked {
        alg: header["alg"].as_str()?.to_owned(),
        kid: header["kid"].as_str().map(str::to_owned),
    })
}

/// True when `token` looks like a JWT (else it is opaque: introspected).
pub(crate) fn is_jwt(token: &str) -> bool {
    peek(token).is_some()
}

/// The asymmetric algorithms accepted, by name.
fn asymmetric(alg: &str) -> Option<Algorithm> {
    Some(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

const RSA_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// A usable verification key from a JWK; `None` for symmetric keys,
/// encryption keys and anything the proxy cannot verify with.
fn key_of(jwk: &Jwk) -> Option<Key> {
    if matches!(
        jwk.common.public_key_use,
        Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
    ) {
        return None;
    }
    let family: &'static [Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA_ALGS,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        _ => return None,
    };
    // A key that names its algorithm verifies only that one.
    let algs = match jwk
        .common
        .key_algorithm
        .and_then(|a| asymmetric(&format!("{a:?}")))
    {
        Some(named) => {
            let i = family.iter().position(|a| *a == named)?;
            &family[i..=i]
        }
        None => family,
    };
    Some(Key {
        kid: jwk.common.key_id.clone(),
        algs,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

fn parse_set(doc: &Value) -> Result<Vec<Key>, String> {
    let keys = doc["keys"]
        .as_array()
        .ok_or("the key set has no \"keys\" array")?;
    let usable: Vec<Key> = keys
        .iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .filter_map(|k| key_of(&k))
        .take(MAX_KEYS)
        .collect();
    if usable.is_empty() {
        return Err("the key set holds no asymmetric signing key the proxy can use".into());
    }
    Ok(usable)
}

/// What a valid token says.
#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) claims: Value,
}

impl Keys {
    /// Fetches the key set at `jwks_uri`.
    pub(crate) async fn load(
        fetcher: &Fetcher,
        jwks_uri: Uri,
        refresh_interval: Duration,
    ) -> Result<Self, String> {
        let doc = fetcher
            .get_json(&jwks_uri)
            .await
            .map_err(|e| format!("cannot fetch the issuer's keys: {e}"))?;
        let set = parse_set(&doc).map_err(|e| format!("{jwks_uri}: {e}"))?;
        Ok(Keys {
            jwks_uri,
            set: parking_lot::RwLock::new(Arc::new(set)),
            fetched: tokio::sync::Mutex::new(None),
            refresh_interval,
        })
    }

    /// Fetches the set again unless it was fetched within the refresh
    /// interval; true when the set changed since `seen`.
    async fn refresh(&self, fetcher: &Fetcher, seen: &Arc<Vec<Key>>) -> bool {
        let mut fetched = self.fetched.lock().await;
        if !Arc::ptr_eq(&self.set.read(), seen) {
            // Another request refreshed it while this one waited.
            return true;
        }
        if fetched.is_some_and(|at| at.elapsed() < self.refresh_interval) {
            metrics::counter!("shadowcat_auth_jwks_fetches_total", "result" => "limited")
                .increment(1);
            return false;
        }
        *fetched = Some(Instant::now());
        match fetcher
            .get_json(&self.jwks_uri)
            .await
            .map_err(|e| e.to_string())
            .and_then(|d| parse_set(&d))
        {
            Ok(set) => {
                metrics::counter!("shadowcat_auth_jwks_fetches_total", "result" => "ok")
                    .increment(1);
                tracing::info!(jwks_uri = %self.jwks_uri, keys = set.len(), "fetched the issuer's keys again (unknown kid)");
                *self.set.write() = Arc::new(set);
                true
            }
            Err(e) => {
                metrics::counter!("shadowcat_auth_jwks_fetches_total", "result" => "error")
                    .increment(1);
                tracing::warn!(jwks_uri = %self.jwks_uri, error = %e, "could not fetch the issuer's keys again");
                false
            }
        }
    }

    /// Checks `token` with `validation` (issuer, audience, times; the
    /// algorithm is set here).
    pub(crate) async fn verify(
        &self,
        fetcher: &Fetcher,
        token: &str,
        validation: &Validation,
    ) -> Result<Verified, Denied> {
        let peeked = peek(token).ok_or_else(|| {
            Denied::invalid(Reason::Invalid, "the token is not a well-formed JWT")
        })?;
        let Some(alg) = asymmetric(&peeked.alg) else {
            return Err(Denied::invalid(
                Reason::Alg,
                format!(
                    "the token is signed with {:?}; only asymmetric algorithms from the issuer's keys (RS*, PS*, ES256, ES384, EdDSA) are accepted",
                    clip(&peeked.alg)
                ),
            ));
        };
        let mut validation = validation.clone();
        validation.algorithms = vec![alg];
        for attempt in 0..2 {
            let set = Arc::clone(&self.set.read());
            let mut last = None;
            let mut tried = 0;
            for k in set
                .iter()
                .filter(|k| k.algs.contains(&alg))
                .filter(|k| match &peeked.kid {
                    Some(kid) => k.kid.as_deref() == Some(kid.as_str()),
                    None => true,
                })
            {
                tried += 1;
                match jsonwebtoken::decode::<Value>(token, &k.key, &validation) {
                    Ok(data) => {
                        return Ok(Verified {
                            claims: data.claims,
                        });
                    }
                    // The signature verified with this key: its verdict
                    // on the claims stands.
                    Err(e)
                        if !matches!(
                            e.kind(),
                            jsonwebtoken::errors::ErrorKind::InvalidSignature
                        ) =>
                    {
                        return Err(denied_for(&e));
                    }
                    Err(e) => last = Some(e),
                }
            }
            match last {
                Some(e) => return Err(denied_for(&e)),
                None if attempt == 0 && self.refresh(fetcher, &set).await => {}
                None => {
                    debug_assert_eq!(tried, 0);
                    return Err(Denied::invalid(
                        Reason::UnknownKey,
                        match &peeked.kid {
                            Some(kid) => format!(
                                "the token's key {:?} is not among the issuer's keys; get a new token",
                                clip(kid)
                            ),
                            None => {
                                "no key of the issuer verifies the token; get a new token".into()
                            }
                        },
                    ));
                }
            }
        }
        Err(Denied::invalid(
            Reason::UnknownKey,
            "the token's key is not among the issuer's keys",
        ))
    }
}

/// A value from a token, shortened for a message.
fn clip(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(40)
        .collect()
}

fn denied_for(e: &jsonwebtoken::errors::Error) -> Denied {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => {
            Denied::invalid(Reason::Expired, "the token has expired; get a new one")
        }
        K::ImmatureSignature => {
            Denied::invalid(Reason::NotYetValid, "the token is not valid yet (nbf)")
        }
        K::InvalidAudience => Denied::invalid(
            Reason::Audience,
            "the token was not issued for this server (aud); ask for a token with this server's URL as resource",
        ),
        K::InvalidIssuer => {
            Denied::invalid(Reason::Issuer, "the token comes from another issuer (iss)")
        }
        K::MissingRequiredClaim(c) if c == "aud" => Denied::invalid(
            Reason::Audience,
            "the token names no audience (aud); ask for a token with this server's URL as resource",
        ),
        K::MissingRequiredClaim(c) if c == "iss" => {
            Denied::invalid(Reason::Issuer, "the token names no issuer (iss)")
        }
        K::MissingRequiredClaim(c) => {
            Denied::invalid(Reason::Invalid, format!("the token lacks the {c:?} claim"))
        }
        K::InvalidSignature => {
            Denied::invalid(Reason::Signature, "the token's signature does not verify")
        }
        K::InvalidAlgorithm => Denied::invalid(
            Reason::Alg,
            "the token's algorithm does not match the issuer's key",
        ),
        _ => Denied::invalid(Reason::Invalid, "the token is not a valid JWT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_algorithms() {
        // {"alg":"none"}
        let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.";
        let p = peek(none).unwrap();
        assert_eq!(p.alg, "none");
        assert!(asymmetric(&p.alg).is_none());
        assert!(asymmetric("HS256").is_none());
        assert!(asymmetric("RS256").is_some());
        assert!(peek("opaque-token").is_none());
        assert!(peek("a.b").is_none());
        assert!(peek("a.b.c.d").is_none());
    }

    #[test]
    fn symmetric_and_encryption_keys_are_skipped() {
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "h"},
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB", "kid": "e"},
        ]});
        assert!(parse_set(&doc).is_err());
    }
}

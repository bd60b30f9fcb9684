//! `[auth]` against real parts: a loopback authorization server (hyper,
//! serving RFC 8414 metadata, a JWKS, RFC 7662 introspection and a token
//! endpoint) with keys made in the test, the proxy on 127.0.0.1:0, and
//! the test upstream recording what it saw. Every refusal asserts the
//! status, the body, the challenge and that the upstream saw nothing.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{Value, json};
use shadowcat_proxy::{AuthMode, ReverseProxyConfig, TokenClient, UpstreamCredential};
use shadowcat_session::SessionStore;
use tokio::net::TcpListener;

use support::metrics::count_labeled;
use support::sse::SseClient;
use support::{Harness, body_json, call, initialize};

const V: &str = "2025-11-25";
const INTROSPECT_ID: &str = "proxy-introspector";
const INTROSPECT_SECRET: &str = "introspection secret";

/// A signing key and its public JWK.
struct SigningKey {
    kid: String,
    enc: EncodingKey,
    jwk: Value,
}

fn es256_key(kid: &str) -> SigningKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
    let enc = EncodingKey::from_ec_der(&pair.serialize_der());
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::ES256).expect("a JWK of the key");
    jwk.common.key_id = Some(kid.to_owned());
    SigningKey {
        kid: kid.to_owned(),
        enc,
        jwk: serde_json::to_value(&jwk).unwrap(),
    }
}

/// An RS256 key (the algorithm most issuers sign with).
fn rs256_key(kid: &str) -> SigningKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA keygen");
    let enc = EncodingKey::from_rsa_der(&pkcs1_of(&pair.serialize_der()));
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::RS256).expect("a JWK of the key");
    jwk.common.key_id = Some(kid.to_owned());
    SigningKey {
        kid: kid.to_owned(),
        enc,
        jwk: serde_json::to_value(&jwk).unwrap(),
    }
}

/// The PKCS#1 key inside a PKCS#8 `PrivateKeyInfo` (its OCTET STRING).
fn pkcs1_of(pkcs8: &[u8]) -> Vec<u8> {
    // One DER element at `at`: (tag, content start, content end).
    let tlv = |at: usize| {
        let tag = pkcs8[at];
        let first = pkcs8[at + 1] as usize;
        let (len, start) = if first < 0x80 {
            (first, at + 2)
        } else {
            let n = first & 0x7f;
            let len = pkcs8[at + 2..at + 2 + n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, at + 2 + n)
        };
        (tag, start, start + len)
    };
    let (_, body, _) = tlv(0); // SEQUENCE
    let (_, _, after_version) = tlv(body); // INTEGER version
    let (_, _, after_alg) = tlv(after_version); // SEQUENCE algorithm
    let (tag, key, end) = tlv(after_alg); // OCTET STRING privateKey
    assert_eq!(tag, 0x04, "PKCS#8 holds its key in an OCTET STRING");
    pkcs8[key..end].to_vec()
}

/// The authorization server stub.
#[derive(Default)]
struct AsState {
    issuer: Mutex<String>,
    jwks: Mutex<Vec<Value>>,
    jwks_fetches: AtomicU64,
    /// Opaque token → introspection answer.
    opaque: Mutex<HashMap<String, Value>>,
    introspections: AtomicU64,
    token_requests: Mutex<Vec<String>>,
}

struct AuthServer {
    state: Arc<AsState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AuthServer {
    async fn start(keys: &[&SigningKey]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(AsState::default());
        *state.issuer.lock() = format!("http://{addr}");
        *state.jwks.lock() = keys.iter().map(|k| k.jwk.clone()).collect();
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = Arc::clone(&st);
                        async move { Ok::<_, std::convert::Infallible>(as_handle(&st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        AuthServer { state, task }
    }

    fn issuer(&self) -> String {
        self.state.issuer.lock().clone()
    }

    fn publish(&self, key: &SigningKey) {
        self.state.jwks.lock().push(key.jwk.clone());
    }

    fn opaque(&self, token: &str, answer: Value) {
        self.state.opaque.lock().insert(token.to_owned(), answer);
    }
}

fn json_reply(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn form(body: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(body);
    let unescape = |s: &str| {
        let s = s.replace('+', " ");
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() + 1 {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    text.split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (unescape(k), unescape(v)))
        .collect()
}

async fn as_handle(st: &AsState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let issuer = st.issuer.lock().clone();
    match parts.uri.path() {
        "/.well-known/oauth-authorization-server" => json_reply(
            StatusCode::OK,
            &json!({
                "issuer": issuer,
                "jwks_uri": format!("{issuer}/jwks"),
                "introspection_endpoint": format!("{issuer}/introspect"),
                "token_endpoint": format!("{issuer}/token"),
            }),
        ),
        "/jwks" => {
            st.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            json_reply(StatusCode::OK, &json!({"keys": *st.jwks.lock()}))
        }
        "/introspect" => {
            st.introspections.fetch_add(1, Ordering::SeqCst);
            let basic = format!(
                "Basic {}",
                b64(format!("{}:{}", INTROSPECT_ID, "introspection+secret").as_bytes())
            );
            if parts.headers.get("authorization").map(|v| v.as_bytes()) != Some(basic.as_bytes()) {
                return json_reply(
                    StatusCode::UNAUTHORIZED,
                    &json!({"error": "invalid_client"}),
                );
            }
            let f = form(&body);
            let answer = st
                .opaque
                .lock()
                .get(f.get("token").map_or("", String::as_str))
                .cloned()
                .unwrap_or(json!({"active": false}));
            json_reply(StatusCode::OK, &answer)
        }
        "/token" => {
            let f = form(&body);
            let grant = f.get("grant_type").cloned().unwrap_or_default();
            st.token_requests.lock().push(grant.clone());
            let token = match grant.as_str() {
                "client_credentials" => format!("cc-token-{}", st.token_requests.lock().len()),
                "urn:ietf:params:oauth:grant-type:token-exchange" => {
                    format!("exchanged-{}", f["subject_token"].len())
                }
                _ => {
                    return json_reply(
                        StatusCode::BAD_REQUEST,
                        &json!({"error": "unsupported_grant_type"}),
                    );
                }
            };
            json_reply(
                StatusCode::OK,
                &json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600}),
            )
        }
        _ => json_reply(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}

fn b64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                T[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

fn b64url(input: &[u8]) -> String {
    b64(input)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed by `key` with `claims` over the defaults (issuer,
/// audience, subject, one hour, scope `mcp`).
fn token(key: &SigningKey, issuer: &str, audience: &str, claims: Value) -> String {
    let mut c = json!({
        "iss": issuer,
        "aud": audience,
        "sub": "alice",
        "exp": now() + 3600,
        "iat": now(),
        "scope": "mcp",
    });
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, &c, &key.enc).unwrap()
}

/// The proxy in oauth mode in front of the test upstream.
struct Setup {
    h: Harness,
    auth: AuthServer,
    key: SigningKey,
    audience: String,
}

impl Setup {
    async fn start(tweak: impl FnOnce(&mut ReverseProxyConfig)) -> Self {
        let key = es256_key("k1");
        let auth = AuthServer::start(&[&key]).await;
        let issuer = auth.issuer();
        // The proxy's port is not known before it binds: the public URL
        // names a fixed host, as behind a load balancer.
        let audience = "https://mcp.example/mcp".to_owned();
        let public = audience.clone();
        let h = Harness::start_with(move |c| {
            c.auth.mode = AuthMode::OAuth;
            c.auth.public_url = Some(public.parse().unwrap());
            c.auth.issuer = Some(issuer);
            c.auth.required_scopes = vec!["mcp".into()];
            c.auth.introspection_client_id = Some(INTROSPECT_ID.into());
            c.auth.introspection_client_secret = Some(INTROSPECT_SECRET.into());
            c.auth.scope_map = vec![("tools/call:delete_*".into(), vec!["admin".into()])];
            tweak(c);
        })
        .await;
        Setup {
            h,
            auth,
            key,
            audience,
        }
    }

    fn token(&self, claims: Value) -> String {
        token(&self.key, &self.auth.issuer(), &self.audience, claims)
    }

    async fn post_as(
        &self,
        token: Option<&str>,
        sid: Option<&str>,
        body: &Value,
    ) -> Response<Incoming> {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("mcp-protocol-version", V)];
        if let Some(b) = &bearer {
            headers.push(("authorization", b.as_str()));
        }
        if let Some(s) = sid {
            headers.push(("mcp-session-id", s));
        }
        self.h.post(&headers, body).await
    }

    async fn init_as(&self, token: &str) -> String {
        let resp = self.post_as(Some(token), None, &initialize(V)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let sid = resp.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let _ = body_json(resp).await;
        sid
    }
}

/// A refusal: `status`, a JSON-RPC error naming `words`, and the
/// challenge (returned).
async fn refused(resp: Response<Incoming>, status: StatusCode, words: &str) -> String {
    assert_eq!(resp.status(), status);
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let v = body_json(resp).await;
    assert_eq!(v["jsonrpc"], "2.0");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(words), "{msg:?} should say {words:?}");
    challenge
}

const METADATA: &str = "https://mcp.example/.well-known/oauth-protected-resource/mcp";

#[tokio::test]
async fn metadata_is_served_at_both_well_known_paths() {
    let s = Setup::start(|_| {}).await;
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let resp = s.h.send("GET", path, &[], "").await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let v = body_json(resp).await;
        assert_eq!(v["resource"], "https://mcp.example/mcp");
        assert_eq!(v["authorization_servers"], json!([s.auth.issuer()]));
        assert_eq!(v["scopes_supported"], json!(["mcp"]));
        assert_eq!(v["bearer_methods_supported"], json!(["header"]));
    }
    assert!(s.h.upstream.requests().is_empty());
}

#[tokio::test]
async fn a_valid_jwt_reaches_the_upstream_and_the_clients_token_does_not() {
    let s = Setup::start(|_| {}).await;
    let t = s.token(json!({}));
    let sid = s.init_as(&t).await;
    let resp = s
        .post_as(
            Some(&t),
            Some(&sid),
            &call(2, "echo", json!({"text": "hi"})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_json(resp).await["result"]["content"][0]["text"], "hi");
    let seen = s.h.upstream.requests();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert!(
            r.headers.get("authorization").is_none(),
            "the client's token went upstream"
        );
    }
    // The session is bound to the principal, never to the token.
    let stored = s.h.store.list(None, 10).await.unwrap();
    let binding = stored.sessions[0].binding.clone().unwrap();
    assert!(
        binding.contains("alice") && binding.contains(&s.auth.issuer()),
        "{binding}"
    );
    assert!(!binding.contains(&t[..20]));
}

#[tokio::test]
async fn a_missing_token_gets_401_with_the_resource_metadata() {
    let s = Setup::start(|_| {}).await;
    let before = count_labeled("shadowcat_auth_failures_total", "reason=missing");
    let resp = s.post_as(None, None, &initialize(V)).await;
    let challenge = refused(resp, StatusCode::UNAUTHORIZED, "authorization required").await;
    assert_eq!(
        challenge,
        format!(r#"Bearer resource_metadata="{METADATA}", scope="mcp""#)
    );
    assert!(count_labeled("shadowcat_auth_failures_total", "reason=missing") > before);
    // Every path but the metadata is behind the check, not only /mcp.
    let resp =
        s.h.send("GET", "/sse", &[("accept", "text/event-stream")], "")
            .await;
    refused(resp, StatusCode::UNAUTHORIZED, "authorization required").await;
    assert!(s.h.upstream.requests().is_empty());
}

#[tokio::test]
async fn bad_tokens_get_401_invalid_token_and_never_reach_the_upstream() {
    let s = Setup::start(|_| {}).await;
    let other = es256_key("k1");
    let iss = s.auth.issuer();
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"iss": iss, "aud": s.audience, "sub": "x", "exp": now() + 60}),
        &EncodingKey::from_secret(b"a shared secret").unwrap(),
    )
    .unwrap();
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(
            json!({"iss": iss, "aud": s.audience, "sub": "x", "exp": now() + 60})
                .to_string()
                .as_bytes()
        )
    );
    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", s.token(json!({"exp": now() - 3600})), "expired"),
        (
            "audience",
            s.token(json!({"aud": "https://other.example/mcp"})),
            "not issued for this server",
        ),
        (
            "issuer",
            s.token(json!({"iss": "http://127.0.0.1:1"})),
            "another issuer",
        ),
        (
            "signature",
            token(&other, &iss, &s.audience, json!({})),
            "signature",
        ),
        ("alg", none, "only asymmetric"),
        ("alg", hs256, "only asymmetric"),
        ("inactive", "not-a-jwt-and-unknown".to_owned(), "not active"),
    ];
    for (reason, t, words) in cases {
        let label = format!("reason={reason}");
        let before = count_labeled("shadowcat_auth_failures_total", &label);
        let resp = s.post_as(Some(&t), None, &initialize(V)).await;
        let challenge = refused(resp, StatusCode::UNAUTHORIZED, words).await;
        assert!(
            challenge.starts_with(&format!(r#"Bearer resource_metadata="{METADATA}""#))
                && challenge.contains(r#"error="invalid_token""#),
            "{reason}: {challenge}"
        );
        assert!(!challenge.contains(&t), "the challenge quotes the token");
        assert!(
            count_labeled("shadowcat_auth_failures_total", &label) > before,
            "{reason} counted"
        );
    }
    assert!(
        s.h.upstream.requests().is_empty(),
        "the upstream saw a request"
    );
}

#[tokio::test]
async fn an_unknown_kid_is_accepted_once_the_key_set_has_it() {
    let s = Setup::start(|_| {}).await;
    assert_eq!(s.auth.state.jwks_fetches.load(Ordering::SeqCst), 1);
    // The issuer rotates to a new key.
    let k2 = es256_key("k2");
    s.auth.publish(&k2);
    let t2 = token(&k2, &s.auth.issuer(), &s.audience, json!({}));
    s.init_as(&t2).await;
    assert_eq!(
        s.auth.state.jwks_fetches.load(Ordering::SeqCst),
        2,
        "fetched again once"
    );
    // A kid nobody published: refused, and within the refresh interval
    // the key set is not fetched again (a flood costs the issuer nothing).
    let k3 = es256_key("k3");
    for _ in 0..3 {
        let t3 = token(&k3, &s.auth.issuer(), &s.audience, json!({}));
        let resp = s.post_as(Some(&t3), None, &initialize(V)).await;
        let c = refused(
            resp,
            StatusCode::UNAUTHORIZED,
            "not among the issuer's keys",
        )
        .await;
        assert!(c.contains(r#"error="invalid_token""#));
    }
    assert_eq!(s.auth.state.jwks_fetches.load(Ordering::SeqCst), 2);
    assert_eq!(
        s.h.upstream.requests().len(),
        1,
        "only the accepted initialize"
    );
}

#[tokio::test]
async fn rs256_tokens_from_an_rsa_key_are_accepted() {
    let s = Setup::start(|_| {}).await;
    let rsa = rs256_key("rsa-1");
    s.auth.publish(&rsa);
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(rsa.kid.clone());
    let claims = json!({"iss": s.auth.issuer(), "aud": s.audience, "sub": "carol",
        "exp": now() + 600, "scope": "mcp"});
    let t = jsonwebtoken::encode(&header, &claims, &rsa.enc).unwrap();
    s.init_as(&t).await;
    // The same key cannot be used with another algorithm of its family
    // when the JWK names one.
    let mut ps = Header::new(Algorithm::PS256);
    ps.kid = Some(rsa.kid.clone());
    let t = jsonwebtoken::encode(&ps, &claims, &rsa.enc).unwrap();
    let resp = s.post_as(Some(&t), None, &initialize(V)).await;
    refused(
        resp,
        StatusCode::UNAUTHORIZED,
        "not among the issuer's keys",
    )
    .await;
    assert_eq!(s.h.upstream.requests().len(), 1);
}

#[tokio::test]
async fn missing_scopes_get_403_insufficient_scope() {
    let s = Setup::start(|_| {}).await;
    let resp = s
        .post_as(
            Some(&s.token(json!({"scope": "other"}))),
            None,
            &initialize(V),
        )
        .await;
    let c = refused(resp, StatusCode::FORBIDDEN, "insufficient scope").await;
    assert!(
        c.contains(r#"error="insufficient_scope""#) && c.contains(r#"scope="mcp""#),
        "{c}"
    );
    assert!(s.h.upstream.requests().is_empty());
    // The scope map: deleting tools needs `admin` on top.
    let t = s.token(json!({}));
    let sid = s.init_as(&t).await;
    let resp = s
        .post_as(
            Some(&t),
            Some(&sid),
            &call(2, "delete_everything", json!({})),
        )
        .await;
    let c = refused(resp, StatusCode::FORBIDDEN, "delete_everything").await;
    assert!(c.contains(r#"scope="mcp admin""#), "{c}");
    assert_eq!(s.h.upstream.requests().len(), 1, "only the initialize");
    let admin = s.token(json!({"scope": "mcp admin"}));
    let resp = s.post_as(Some(&admin), None, &initialize(V)).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn another_principals_token_gets_nothing_from_a_session() {
    let s = Setup::start(|_| {}).await;
    let alice = s.token(json!({}));
    let sid = s.init_as(&alice).await;
    let mallory = s.token(json!({"sub": "mallory"}));
    let before = count_labeled("shadowcat_auth_failures_total", "reason=binding");
    let resp = s
        .post_as(
            Some(&mallory),
            Some(&sid),
            &call(2, "echo", json!({"text": "x"})),
        )
        .await;
    refused(resp, StatusCode::FORBIDDEN, "belongs to another user").await;
    assert!(count_labeled("shadowcat_auth_failures_total", "reason=binding") > before);
    assert_eq!(s.h.upstream.requests().len(), 1, "only alice's initialize");
}

#[tokio::test]
async fn a_stolen_session_id_yields_no_buffered_event() {
    let s = Setup::start(|_| {}).await;
    let alice = s.token(json!({}));
    let sid = s.init_as(&alice).await;
    let resp = s
        .post_as(
            Some(&alice),
            Some(&sid),
            &call(2, "progress", json!({"count": 5})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut client = SseClient::new(resp.into_body());
    let mut first = None;
    while let Some(block) = client.next().await.unwrap() {
        if first.is_none() && block.data.as_deref().is_some_and(|d| !d.is_empty()) {
            first = block.id.clone();
        }
    }
    let first = first.expect("an event with an id");
    let seen = s.h.upstream.requests().len();
    // The events after `first` are in the proxy's replay buffer. Without a
    // token: 401; with another principal's: 403; not one event either way.
    let mallory = format!("Bearer {}", s.token(json!({"sub": "mallory"})));
    for (auth, status) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some(mallory.as_str()), StatusCode::FORBIDDEN),
    ] {
        let mut headers = vec![
            ("accept", "text/event-stream"),
            ("mcp-session-id", sid.as_str()),
            ("mcp-protocol-version", V),
            ("last-event-id", first.as_str()),
        ];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        let resp = s.h.send("GET", "/mcp", &headers, "").await;
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body = support::body_bytes(resp_status(resp, status)).await;
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("data:") && !text.contains("progress"),
            "{text}"
        );
    }
    assert_eq!(
        s.h.upstream.requests().len(),
        seen,
        "the upstream was not asked"
    );
    // Alice herself resumes from the buffer.
    let a = format!("Bearer {alice}");
    let resp =
        s.h.send(
            "GET",
            "/mcp",
            &[
                ("accept", "text/event-stream"),
                ("mcp-session-id", &sid),
                ("mcp-protocol-version", V),
                ("last-event-id", &first),
                ("authorization", &a),
            ],
            "",
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut client = SseClient::new(resp.into_body());
    let mut events = 0;
    while let Some(b) = client.next().await.unwrap() {
        if b.data.as_deref().is_some_and(|d| !d.is_empty()) {
            events += 1;
        }
    }
    assert!(events >= 1, "alice gets the events after hers");
}

fn resp_status(resp: Response<Incoming>, status: StatusCode) -> Response<Incoming> {
    assert_eq!(resp.status(), status);
    resp
}

#[tokio::test]
async fn opaque_tokens_are_introspected_and_cached() {
    let s = Setup::start(|_| {}).await;
    s.auth.opaque(
        "opaque-alice",
        json!({"active": true, "iss": s.auth.issuer(), "aud": s.audience, "sub": "alice",
               "scope": "mcp", "exp": now() + 600}),
    );
    s.auth.opaque(
        "opaque-elsewhere",
        json!({"active": true, "iss": s.auth.issuer(), "aud": "https://other/mcp", "sub": "bob",
               "scope": "mcp", "exp": now() + 600}),
    );
    let hits = count_labeled("shadowcat_auth_introspections_total", "result=hit");
    let sid = s.init_as("opaque-alice").await;
    let resp = s
        .post_as(
            Some("opaque-alice"),
            Some(&sid),
            &call(2, "echo", json!({"text": "x"})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        s.auth.state.introspections.load(Ordering::SeqCst),
        1,
        "the second request hit the cache"
    );
    assert!(count_labeled("shadowcat_auth_introspections_total", "result=hit") > hits);
    let resp = s
        .post_as(Some("opaque-elsewhere"), None, &initialize(V))
        .await;
    refused(resp, StatusCode::UNAUTHORIZED, "not issued for this server").await;
    assert_eq!(s.h.upstream.requests().len(), 2);
}

#[tokio::test]
async fn the_upstream_gets_a_client_credentials_token_never_the_clients() {
    let client = TokenClient {
        client_id: "proxy".into(),
        client_secret: "proxy secret".into(),
        ..TokenClient::default()
    };
    let s = Setup::start(move |c| c.auth.upstream = UpstreamCredential::ClientCredentials(client))
        .await;
    let t = s.token(json!({}));
    let sid = s.init_as(&t).await;
    for i in 0..5 {
        let resp = s
            .post_as(
                Some(&t),
                Some(&sid),
                &call(2 + i, "echo", json!({"text": "x"})),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let seen = s.h.upstream.requests();
    assert_eq!(seen.len(), 6);
    for r in &seen {
        assert_eq!(r.headers["authorization"], "Bearer cc-token-1");
    }
    assert_eq!(
        *s.auth.state.token_requests.lock(),
        ["client_credentials"],
        "one token for all requests"
    );
}

#[tokio::test]
async fn client_credentials_come_from_the_upstreams_own_authorization_server() {
    let upstream_as = AuthServer::start(&[]).await;
    let client = TokenClient {
        client_id: "proxy".into(),
        client_secret: "proxy secret".into(),
        issuer: Some(upstream_as.issuer()),
        ..TokenClient::default()
    };
    let s = Setup::start(move |c| c.auth.upstream = UpstreamCredential::ClientCredentials(client))
        .await;
    s.init_as(&s.token(json!({}))).await;
    assert_eq!(
        s.h.upstream.requests()[0].headers["authorization"],
        "Bearer cc-token-1"
    );
    assert_eq!(
        *upstream_as.state.token_requests.lock(),
        ["client_credentials"]
    );
    assert!(
        s.auth.state.token_requests.lock().is_empty(),
        "not the clients' issuer"
    );
}

#[tokio::test]
async fn token_exchange_sends_the_exchanged_token_upstream() {
    let client = TokenClient {
        client_id: "proxy".into(),
        client_secret: "proxy secret".into(),
        ..TokenClient::default()
    };
    let s =
        Setup::start(move |c| c.auth.upstream = UpstreamCredential::TokenExchange(client)).await;
    let t = s.token(json!({}));
    let sid = s.init_as(&t).await;
    let resp = s
        .post_as(Some(&t), Some(&sid), &call(2, "echo", json!({"text": "x"})))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let want = format!("Bearer exchanged-{}", t.len());
    for r in s.h.upstream.requests() {
        assert_eq!(r.headers["authorization"], want.as_str());
    }
    assert_eq!(
        s.auth.state.token_requests.lock().len(),
        1,
        "cached per principal"
    );
}

// ---- passthrough ----

async fn passthrough() -> Harness {
    let h = Harness::start_with(|c| {
        c.auth.mode = AuthMode::Passthrough;
        c.auth.public_url = Some("https://mcp.example/mcp".parse().unwrap());
    })
    .await;
    h.upstream.require_bearer(&["alice-1", "alice-2"]);
    h
}

#[tokio::test]
async fn passthrough_relays_the_challenge_and_the_metadata_rewritten() {
    let h = passthrough().await;
    let resp = h.post(&[("mcp-protocol-version", V)], &initialize(V)).await;
    let c = refused(resp, StatusCode::UNAUTHORIZED, "refused the credential").await;
    assert_eq!(
        c,
        format!(r#"Bearer error="invalid_token", resource_metadata="{METADATA}", scope="mcp""#)
    );
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let resp = h.send("GET", path, &[], "").await;
        assert_eq!(resp.status(), StatusCode::OK);
        let v = body_json(resp).await;
        assert_eq!(v["resource"], "https://mcp.example/mcp");
        assert_eq!(
            v["authorization_servers"][0],
            shadowcat_proxy::test_util::TestUpstream::AUTHORIZATION_SERVER
        );
    }
    let resp = h
        .post(
            &[
                ("mcp-protocol-version", V),
                ("authorization", "Bearer alice-1"),
            ],
            &initialize(V),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = h.upstream.requests();
    assert_eq!(
        seen.last().unwrap().headers["authorization"],
        "Bearer alice-1"
    );
}

#[tokio::test]
async fn passthrough_rebinds_only_after_the_upstream_accepts_the_new_credential() {
    let h = passthrough().await;
    let a1 = [
        ("mcp-protocol-version", V),
        ("authorization", "Bearer alice-1"),
    ];
    let resp = h.post(&a1, &initialize(V)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = body_json(resp).await;
    let with = |auth: Option<&'static str>| {
        let mut v = vec![
            ("mcp-protocol-version", V),
            ("mcp-session-id", sid.as_str()),
        ];
        if let Some(a) = auth {
            v.push(("authorization", a));
        }
        v
    };
    // A stream whose events stay in the proxy's buffer.
    let resp = h
        .post(
            &with(Some("Bearer alice-1")),
            &call(2, "progress", json!({"count": 4})),
        )
        .await;
    let mut client = SseClient::new(resp.into_body());
    let mut first = None;
    while let Some(b) = client.next().await.unwrap() {
        if first.is_none() && b.data.as_deref().is_some_and(|d| !d.is_empty()) {
            first = b.id.clone();
        }
    }
    let first = first.unwrap();
    // A stolen id with no credential, then with one the upstream refuses:
    // the upstream is asked (a ping on the session), says 401, and not one
    // buffered event comes out.
    for auth in [None, Some("Bearer mallory")] {
        let mut headers = with(auth);
        headers.push(("accept", "text/event-stream"));
        headers.push(("last-event-id", first.as_str()));
        let resp = h.send("GET", "/mcp", &headers, "").await;
        let c = refused(resp, StatusCode::UNAUTHORIZED, "refused the credential").await;
        assert!(c.contains(METADATA), "{c}");
    }
    // The refreshed token: the upstream accepts it, the session is rebound.
    let rebinds = support::metrics::count("shadowcat_auth_rebinds_total");
    let resp = h
        .post(
            &with(Some("Bearer alice-2")),
            &call(3, "echo", json!({"text": "x"})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(support::metrics::count("shadowcat_auth_rebinds_total") > rebinds);
    let stored = h
        .store
        .get(&shadowcat_session::SessionId::parse(&sid).unwrap())
        .await
        .unwrap()
        .unwrap();
    let binding = stored.binding.unwrap();
    assert!(
        binding.starts_with("credential ") && !binding.contains("alice"),
        "{binding}"
    );
    let pings = h
        .upstream
        .requests()
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("\"ping\""))
        .count();
    assert_eq!(pings, 3, "one check per new credential");
}

#[tokio::test]
async fn passthrough_check_on_a_session_the_upstream_forgot_is_404() {
    let h = passthrough().await;
    let resp = h
        .post(
            &[
                ("mcp-protocol-version", V),
                ("authorization", "Bearer alice-1"),
            ],
            &initialize(V),
        )
        .await;
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = body_json(resp).await;
    h.upstream.forget_sessions();
    let resp = h
        .post(
            &[
                ("mcp-protocol-version", V),
                ("mcp-session-id", &sid),
                ("authorization", "Bearer alice-2"),
            ],
            &call(2, "echo", json!({"text": "x"})),
        )
        .await;
    refused(resp, StatusCode::NOT_FOUND, "initialize a new one").await;
    let id = shadowcat_session::SessionId::parse(&sid).unwrap();
    assert!(
        h.store.get(&id).await.unwrap().is_none(),
        "the session is gone here too"
    );
}

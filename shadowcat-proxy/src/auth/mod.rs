//! OAuth in front of the reverse proxy (`[auth]`).
//!
//! - `passthrough` (`passthrough.rs`): the upstream does its own OAuth;
//!   the client's `Authorization` goes upstream, challenges and metadata
//!   come back pointing at the proxy's public URL, and each session is
//!   bound to a keyed fingerprint of its credential.
//! - `oauth`: the proxy is the resource server. [`Auth::authenticate`]
//!   checks the bearer token (a JWT against the issuer's keys, `jwt.rs`;
//!   an opaque token by introspection, `introspect.rs`), the audience
//!   (RFC 8707), issuer, times and required scopes; sessions are bound to
//!   the principal (issuer, subject); the client's token never goes
//!   upstream, the proxy's own credential does (`credential.rs`).
//! - `metadata.rs`: discovery of the authorization server and the
//!   protected-resource metadata (RFC 9728) the proxy serves.
//! - `fetch.rs`: the one HTTP client for all of it.
//!
//! Failures are counted in `shadowcat_auth_failures_total{reason}`; no
//! log line and no answer ever holds a token (a fingerprint at most).

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{StatusCode, Uri};
use jsonwebtoken::Validation;
use serde_json::Value;
use shadowcat_session::{Fingerprint, ResumeKey};

use crate::config::{AuthConfig, AuthMode, UpstreamCredential};
use crate::error::ProxyError;

mod b64;
pub(crate) mod credential;
mod fetch;
mod introspect;
mod jwt;
mod metadata;
pub(crate) mod passthrough;

pub(crate) use credential::Credential;
pub(crate) use fetch::Fetcher;
pub(crate) use metadata::PRM_PREFIX;

/// Why a request was refused (the `reason` label of
/// `shadowcat_auth_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// No bearer token.
    Missing,
    /// Malformed or otherwise unusable.
    Invalid,
    /// Past `exp`.
    Expired,
    /// Before `nbf`.
    NotYetValid,
    /// Issued for another resource.
    Audience,
    /// From another issuer.
    Issuer,
    /// The signature does not verify.
    Signature,
    /// `none`, `HS*` or an algorithm the key does not allow.
    Alg,
    /// No key of the issuer has the token's `kid`.
    UnknownKey,
    /// Introspection says it is not active.
    Inactive,
    /// A required scope is missing.
    Scope,
    /// The session belongs to another principal or credential.
    Binding,
    /// Introspection could not be done.
    IntrospectionError,
    /// The upstream refused the credential (passthrough).
    Upstream,
}

impl Reason {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Invalid => "invalid",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Audience => "audience",
            Reason::Issuer => "issuer",
            Reason::Signature => "signature",
            Reason::Alg => "alg",
            Reason::UnknownKey => "unknown_key",
            Reason::Inactive => "inactive",
            Reason::Scope => "scope",
            Reason::Binding => "binding",
            Reason::IntrospectionError => "introspection_error",
            Reason::Upstream => "upstream",
        }
    }
}

/// A refusal: why, and what the client is told.
#[derive(Debug, Clone)]
pub(crate) struct Denied {
    pub(crate) reason: Reason,
    pub(crate) description: Cow<'static, str>,
    /// Scopes to name in the challenge (`insufficient_scope`).
    pub(crate) scope: Option<String>,
}

impl Denied {
    pub(crate) fn invalid(reason: Reason, description: impl Into<Cow<'static, str>>) -> Self {
        Denied {
            reason,
            description: description.into(),
            scope: None,
        }
    }

    pub(crate) fn unavailable(description: String) -> Self {
        Self::invalid(Reason::IntrospectionError, description)
    }
}

/// What an answer to a refusal carries.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) challenge: Option<HeaderValue>,
    pub(crate) message: String,
}

/// An authenticated client (`oauth` mode).
#[derive(Debug)]
pub(crate) struct Caller {
    /// Issuer and subject: what sessions are bound to.
    pub(crate) principal: Arc<str>,
    scopes: Vec<String>,
    /// What goes upstream as `Authorization` for this caller instead of
    /// the proxy's own credential: the client's own (passthrough) or the
    /// token exchanged for it (token exchange).
    pub(crate) upstream: Option<HeaderValue>,
}

impl Caller {
    /// A passthrough client: its `Authorization` goes upstream as is.
    pub(crate) fn passthrough(authorization: Option<HeaderValue>) -> Self {
        Caller {
            principal: Arc::from(""),
            scopes: Vec::new(),
            upstream: authorization,
        }
    }

    /// The session binding of this caller.
    pub(crate) fn binding(&self) -> String {
        format!("principal {}", self.principal)
    }
}

tokio::task_local! {
    /// The authenticated caller of the request this task serves.
    static CALLER: Arc<Caller>;
}

/// Runs `fut` as a request of `caller`.
pub(crate) async fn as_caller<F: Future>(caller: Option<Arc<Caller>>, fut: F) -> F::Output {
    match caller {
        Some(c) => CALLER.scope(c, fut).await,
        None => fut.await,
    }
}

/// The caller of the request this task serves, in `oauth` mode.
pub(crate) fn caller() -> Option<Arc<Caller>> {
    CALLER.try_with(Arc::clone).ok()
}

/// One scope-map entry: a method glob, an optional tool glob, the scopes.
#[derive(Debug)]
struct ScopeRule {
    method: String,
    tool: Option<String>,
    scopes: Vec<String>,
}

/// `*` matches any run of characters.
fn glob(pattern: &str, s: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == s;
    };
    let Some(mut s) = s.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('*').collect();
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return s.ends_with(part);
        }
        match s.find(part) {
            Some(at) => s = &s[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// The resource-server side (`oauth`).
#[derive(Debug)]
struct ResourceServer {
    issuer: String,
    validation: Validation,
    audience: String,
    keys: Option<jwt::Keys>,
    introspection: Option<introspect::Introspector>,
    required: Vec<String>,
    rules: Vec<ScopeRule>,
    document: Bytes,
    exchanger: Option<credential::Exchanger>,
}

/// The auth layer of one proxy.
#[derive(Debug)]
pub(crate) struct Auth {
    mode: AuthMode,
    /// `public_url` as text: the resource's name.
    public_url: String,
    /// Where the proxy's protected-resource metadata is.
    metadata_url: String,
    /// The two paths it is served at.
    metadata_paths: [String; 2],
    fetcher: Arc<Fetcher>,
    rs: Option<ResourceServer>,
    /// Passthrough: the upstream's metadata URLs (path form, root form).
    upstream_metadata: Vec<Uri>,
}

fn config_error(m: impl Into<String>) -> ProxyError {
    ProxyError::Config(m.into())
}

impl Auth {
    /// Sets up `config` for a proxy in front of `upstream`: discovers the
    /// issuer and fetches its keys (`oauth`), and starts the upstream
    /// credential. Returns the layer (none in mode `none`) and what goes
    /// upstream as `Authorization`.
    pub(crate) async fn start(
        config: &AuthConfig,
        upstream: &Uri,
        bearer: Option<HeaderValue>,
        closing: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(Option<Arc<Auth>>, Credential), ProxyError> {
        let fixed = bearer.clone().map_or(Credential::None, Credential::Fixed);
        if config.mode == AuthMode::None {
            return Ok((None, fixed));
        }
        let public = config
            .public_url
            .as_ref()
            .ok_or_else(|| config_error("[auth] mode passthrough and oauth need public_url (--public-url): the URL clients use for the MCP endpoint"))?;
        if !matches!(public.scheme_str(), Some("http" | "https")) || public.host().is_none() {
            return Err(config_error(format!(
                "public_url {public} must be an absolute http(s) URL"
            )));
        }
        let public_url = public.to_string();
        let public_url = if public.path() == "/" && !public_url.ends_with('/') {
            public_url
        } else {
            public_url.trim_end_matches('/').to_owned()
        };
        let (_, path) = metadata::split_origin(&public_url);
        let metadata_paths = [PRM_PREFIX.to_owned(), format!("{PRM_PREFIX}{path}")];
        let limits = &config.limits;
        let fetcher = Arc::new(Fetcher::new(limits.fetch_timeout, limits.max_fetch_bytes));
        let mut auth = Auth {
            mode: config.mode,
            metadata_url: metadata::prm_url(&public_url),
            public_url,
            metadata_paths,
            fetcher,
            rs: None,
            upstream_metadata: Vec::new(),
        };
        if config.mode == AuthMode::Passthrough {
            if bearer.is_some() {
                return Err(config_error(
                    "passthrough forwards the client's own Authorization; drop upstream_bearer",
                ));
            }
            let up = upstream.to_string();
            let (origin, upath) = metadata::split_origin(&up);
            for u in [
                format!("{origin}{PRM_PREFIX}{upath}"),
                format!("{origin}{PRM_PREFIX}"),
            ] {
                if let Ok(u) = u.parse() {
                    auth.upstream_metadata.push(u);
                }
            }
            return Ok((Some(Arc::new(auth)), Credential::None));
        }
        let issuer = config
            .issuer
            .clone()
            .ok_or_else(|| config_error("[auth] mode oauth needs issuer (--auth-issuer)"))?;
        let meta = metadata::discover(&auth.fetcher, &issuer)
            .await
            .map_err(config_error)?;
        let keys = match &meta.jwks_uri {
            Some(uri) => Some(
                jwt::Keys::load(&auth.fetcher, uri.clone(), limits.jwks_refresh_interval)
                    .await
                    .map_err(config_error)?,
            ),
            None => None,
        };
        let introspection = match (
            &config.introspection_client_id,
            &config.introspection_client_secret,
        ) {
            (Some(id), Some(secret)) => {
                let endpoint = meta.introspection_endpoint.clone().ok_or_else(|| {
                    config_error(format!(
                        "introspection is configured but the issuer {issuer} announces no introspection_endpoint"
                    ))
                })?;
                Some(introspect::Introspector::new(
                    endpoint,
                    id.clone(),
                    secret.clone(),
                    limits.introspection_cache_entries,
                    limits.introspection_cache_ttl,
                ))
            }
            (None, None) => None,
            _ => {
                return Err(config_error(
                    "introspection needs both introspection_client_id and introspection_client_secret",
                ));
            }
        };
        if keys.is_none() && introspection.is_none() {
            return Err(config_error(format!(
                "the issuer {issuer} announces no jwks_uri and introspection is not configured: no token could be checked"
            )));
        }
        let audience = config
            .audience
            .clone()
            .unwrap_or_else(|| auth.public_url.clone());
        let mut validation = Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_issuer(&[&meta.issuer]);
        validation.set_audience(&[&audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = limits.leeway.as_secs();
        let mut rules = Vec::new();
        for (key, scopes) in &config.scope_map {
            let (method, tool) = match key.split_once(':') {
                Some((m, t)) => (m.to_owned(), Some(t.to_owned())),
                None => (key.clone(), None),
            };
            rules.push(ScopeRule {
                method,
                tool,
                scopes: scopes.clone(),
            });
        }
        let supported = config
            .scopes_supported
            .clone()
            .unwrap_or_else(|| config.required_scopes.clone());
        let document = Bytes::from(
            metadata::resource_document(&auth.public_url, &issuer, &supported).to_string(),
        );
        let fetcher = Arc::clone(&auth.fetcher);
        let token_url = async |c: &crate::config::TokenClient| -> Result<Uri, ProxyError> {
            if let Some(u) = &c.token_url {
                return Ok(u.clone());
            }
            let (named, endpoint) = match &c.issuer {
                Some(other) => (
                    other.as_str(),
                    metadata::discover(&fetcher, other)
                        .await
                        .map_err(config_error)?
                        .token_endpoint,
                ),
                None => (issuer.as_str(), meta.token_endpoint.clone()),
            };
            endpoint.ok_or_else(|| {
                config_error(format!(
                    "[auth.upstream] needs token_url: the issuer {named} announces no token_endpoint"
                ))
            })
        };
        let mut exchanger = None;
        let credential = match &config.upstream {
            UpstreamCredential::None => fixed,
            UpstreamCredential::Bearer => {
                if bearer.is_none() {
                    return Err(config_error(
                        "[auth.upstream] credential = \"bearer\" needs upstream_bearer (--upstream-bearer)",
                    ));
                }
                fixed
            }
            UpstreamCredential::ClientCredentials(c) => credential::client_credentials(
                Arc::clone(&auth.fetcher),
                token_url(c).await?,
                c.clone(),
                limits.token_refresh_margin,
                closing,
            )
            .await
            .map_err(|e| {
                config_error(format!(
                    "cannot get the upstream's client-credentials token: {e}"
                ))
            })?,
            UpstreamCredential::TokenExchange(c) => {
                exchanger = Some(credential::Exchanger::new(
                    token_url(c).await?,
                    c.clone(),
                    limits.token_exchange_cache_entries,
                    limits.token_refresh_margin,
                ));
                Credential::None
            }
        };
        auth.rs = Some(ResourceServer {
            issuer,
            validation,
            audience,
            keys,
            introspection,
            required: config.required_scopes.clone(),
            rules,
            document,
            exchanger,
        });
        Ok((Some(Arc::new(auth)), credential))
    }

    /// True in `passthrough`.
    pub(crate) fn is_passthrough(&self) -> bool {
        self.mode == AuthMode::Passthrough
    }

    /// True in `oauth`.
    pub(crate) fn is_oauth(&self) -> bool {
        self.mode == AuthMode::OAuth
    }

    /// The proxy's protected-resource metadata URL.
    pub(crate) fn metadata_url(&self) -> &str {
        &self.metadata_url
    }

    /// True for the paths the metadata is served at.
    pub(crate) fn is_metadata_path(&self, path: &str) -> bool {
        self.metadata_paths.iter().any(|p| p == path)
    }

    /// The metadata document: the proxy's own (`oauth`) or the
    /// upstream's with `resource` rewritten (`passthrough`).
    pub(crate) async fn metadata(&self) -> Result<Bytes, Refusal> {
        if let Some(rs) = &self.rs {
            return Ok(rs.document.clone());
        }
        let mut last = String::from("no metadata URL");
        for url in &self.upstream_metadata {
            match self.fetcher.get_json(url).await {
                Ok(doc) => {
                    if let Some(doc) = passthrough::rewrite_metadata(doc, &self.public_url) {
                        return Ok(Bytes::from(doc.to_string()));
                    }
                    last = format!("{url}: not a JSON object");
                }
                Err(e) => last = e.to_string(),
            }
        }
        tracing::warn!(error = %last, "could not relay the upstream's protected-resource metadata");
        Err(Refusal {
            status: StatusCode::BAD_GATEWAY,
            challenge: None,
            message: format!(
                "the upstream MCP server's protected-resource metadata could not be fetched ({last})"
            ),
        })
    }

    /// Checks the request's bearer token (`oauth`).
    pub(crate) async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Denied> {
        let rs = self.rs.as_ref().expect("authenticate is for oauth mode");
        let token = bearer_token(headers)?;
        let claims: Arc<Value> = if jwt::is_jwt(token) {
            let Some(keys) = &rs.keys else {
                return Err(Denied::invalid(
                    Reason::Invalid,
                    "this server takes opaque tokens only (the issuer announces no keys)",
                ));
            };
            Arc::new(
                keys.verify(&self.fetcher, token, &rs.validation)
                    .await?
                    .claims,
            )
        } else {
            let Some(intro) = &rs.introspection else {
                return Err(Denied::invalid(
                    Reason::Invalid,
                    "the token is not a JWT, and this server checks only JWT access tokens",
                ));
            };
            let claims = intro.introspect(&self.fetcher, token).await?;
            check_introspected(&claims, rs)?;
            claims
        };
        let iss = claims["iss"].as_str().unwrap_or(&rs.issuer);
        let Some(sub) = claims["sub"]
            .as_str()
            .or_else(|| claims["client_id"].as_str())
        else {
            return Err(Denied::invalid(
                Reason::Invalid,
                "the token names no subject (sub) or client (client_id)",
            ));
        };
        let scopes = scopes_of(&claims);
        let missing: Vec<&str> = rs
            .required
            .iter()
            .filter(|s| !scopes.iter().any(|h| h == *s))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(Denied {
                reason: Reason::Scope,
                description: format!("the token lacks the scope {}", missing.join(" ")).into(),
                scope: Some(rs.required.join(" ")),
            });
        }
        let principal: Arc<str> = Arc::from(format!("{iss} {sub}"));
        let upstream = match &rs.exchanger {
            Some(ex) => Some(
                ex.exchange(&self.fetcher, &principal, token)
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, "token exchange for the upstream failed");
                        Denied::unavailable(
                            "the token could not be exchanged for the upstream; retry later".into(),
                        )
                    })?,
            ),
            None => None,
        };
        Ok(Caller {
            principal,
            scopes,
            upstream,
        })
    }

    /// Checks the scope map for one message (`oauth`).
    pub(crate) fn check_call(
        &self,
        caller: &Caller,
        method: Option<&str>,
        tool: Option<&str>,
    ) -> Result<(), Denied> {
        let Some(rs) = &self.rs else { return Ok(()) };
        let Some(method) = method else { return Ok(()) };
        for rule in &rs.rules {
            let applies = glob(&rule.method, method)
                && match (&rule.tool, tool) {
                    (None, _) => true,
                    (Some(p), Some(t)) => glob(p, t),
                    (Some(_), None) => false,
                };
            if !applies {
                continue;
            }
            let missing: Vec<&str> = rule
                .scopes
                .iter()
                .filter(|s| !caller.scopes.iter().any(|h| h == *s))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                let what = match tool {
                    Some(t) if rule.tool.is_some() => format!("{method} of {t:?}"),
                    _ => method.to_owned(),
                };
                let mut all = rs.required.clone();
                all.extend(rule.scopes.iter().cloned());
                return Err(Denied {
                    reason: Reason::Scope,
                    description: format!("{what} needs the scope {}", missing.join(" ")).into(),
                    scope: Some(all.join(" ")),
                });
            }
        }
        Ok(())
    }

    /// The binding of a new session whose key is `key`.
    pub(crate) fn binding_for(&self, key: &ResumeKey, headers: &HeaderMap) -> Option<String> {
        match self.mode {
            AuthMode::None => None,
            AuthMode::Passthrough => Some(passthrough::credential_binding(
                key,
                headers.get(header::AUTHORIZATION),
            )),
            AuthMode::OAuth => caller().map(|c| c.binding()),
        }
    }

    /// Counts and logs a refusal; what the client gets.
    pub(crate) fn refuse(&self, d: &Denied, headers: &HeaderMap) -> Refusal {
        metrics::counter!("shadowcat_auth_failures_total", "reason" => d.reason.label())
            .increment(1);
        let token_fp = bearer_token(headers)
            .ok()
            .map(|t| Fingerprint::of(t).to_string());
        tracing::info!(reason = d.reason.label(), token_fp = ?token_fp, description = %d.description, "request refused by auth");
        let scope = d.scope.clone().or_else(|| {
            self.rs
                .as_ref()
                .filter(|rs| !rs.required.is_empty())
                .map(|rs| rs.required.join(" "))
        });
        let mut challenge = format!("Bearer resource_metadata=\"{}\"", self.metadata_url);
        if let Some(s) = &scope {
            challenge.push_str(&format!(", scope=\"{}\"", quote_safe(s)));
        }
        let (status, message) = match d.reason {
            Reason::Missing => (
                StatusCode::UNAUTHORIZED,
                format!(
                    "authorization required: {}; get an access token for {} from the authorization server named in {}",
                    d.description, self.public_url, self.metadata_url
                ),
            ),
            Reason::Scope => {
                challenge.push_str(&format!(
                    ", error=\"insufficient_scope\", error_description=\"{}\"",
                    quote_safe(&d.description)
                ));
                (
                    StatusCode::FORBIDDEN,
                    format!(
                        "insufficient scope: {}; ask for it when you authorize",
                        d.description
                    ),
                )
            }
            Reason::Binding => {
                return Refusal {
                    status: StatusCode::FORBIDDEN,
                    challenge: None,
                    message: d.description.clone().into_owned(),
                };
            }
            Reason::IntrospectionError => {
                return Refusal {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    challenge: None,
                    message: d.description.clone().into_owned(),
                };
            }
            _ => {
                challenge.push_str(&format!(
                    ", error=\"invalid_token\", error_description=\"{}\"",
                    quote_safe(&d.description)
                ));
                (
                    StatusCode::UNAUTHORIZED,
                    format!("invalid access token: {}", d.description),
                )
            }
        };
        Refusal {
            status,
            challenge: HeaderValue::from_str(&challenge).ok(),
            message,
        }
    }
}

/// The checks introspection leaves to the resource server: issuer and
/// audience.
fn check_introspected(claims: &Value, rs: &ResourceServer) -> Result<(), Denied> {
    if let Some(iss) = claims["iss"].as_str()
        && iss.trim_end_matches('/') != rs.issuer.trim_end_matches('/')
    {
        return Err(Denied::invalid(
            Reason::Issuer,
            "the token comes from another issuer (iss)",
        ));
    }
    let for_us = match &claims["aud"] {
        Value::String(a) => *a == rs.audience,
        Value::Array(a) => a.iter().any(|v| v.as_str() == Some(rs.audience.as_str())),
        _ => false,
    };
    if !for_us {
        return Err(Denied::invalid(
            Reason::Audience,
            "the token was not issued for this server (aud); ask for a token with this server's URL as resource",
        ));
    }
    Ok(())
}

/// The scopes a token grants: `scope` (space-separated) or `scp`.
fn scopes_of(claims: &Value) -> Vec<String> {
    let mut out: Vec<String> = claims["scope"]
        .as_str()
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    match &claims["scp"] {
        Value::String(s) => out.extend(s.split_whitespace().map(str::to_owned)),
        Value::Array(a) => out.extend(a.iter().filter_map(Value::as_str).map(str::to_owned)),
        _ => {}
    }
    out
}

/// The bearer token of `headers`.
fn bearer_token(headers: &HeaderMap) -> Result<&str, Denied> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let Some(v) = all.next() else {
        return Err(Denied::invalid(Reason::Missing, "no Authorization header"));
    };
    if all.next().is_some() {
        return Err(Denied::invalid(
            Reason::Invalid,
            "more than one Authorization header",
        ));
    }
    let text = v
        .to_str()
        .map_err(|_| Denied::invalid(Reason::Invalid, "the Authorization header is not ASCII"))?;
    let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Denied::invalid(
            Reason::Missing,
            "the Authorization header is not a Bearer token",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Denied::invalid(
            Reason::Missing,
            "the Bearer token is empty",
        ));
    }
    Ok(token)
}

/// `s` with what cannot stand in a quoted string dropped.
fn quote_safe(s: &str) -> String {
    s.chars()
        .filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("delete_*", "delete_all"));
        assert!(glob("*", "x"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXbY"));
        assert!(!glob("delete_*", "undelete_x"));
        assert!(glob("tools/call", "tools/call"));
        assert!(!glob("tools/call", "tools/list"));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h).unwrap_err().reason, Reason::Missing);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&h).unwrap_err().reason, Reason::Missing);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  tok "),
        );
        assert_eq!(bearer_token(&h).unwrap(), "tok");
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(bearer_token(&h).unwrap_err().reason, Reason::Invalid);
    }

    #[test]
    fn scopes() {
        let c = serde_json::json!({"scope": "a b", "scp": ["c"]});
        assert_eq!(scopes_of(&c), ["a", "b", "c"]);
    }
}

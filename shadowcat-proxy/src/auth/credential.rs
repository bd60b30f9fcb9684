//! The proxy's own credential toward the upstream: nothing, a fixed
//! bearer, an OAuth client-credentials token (fetched once, refreshed by
//! one task before it expires: requests only read the current value), or
//! an RFC 8693 token exchange of the client's token, per principal, with
//! a bounded cache.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{HeaderValue, Uri};
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use tokio::time::Instant;

use super::fetch::Fetcher;
use crate::config::TokenClient;

/// What goes upstream as `Authorization`, read synchronously.
#[derive(Debug, Clone, Default)]
pub(crate) enum Credential {
    /// Nothing.
    #[default]
    None,
    /// A configured bearer.
    Fixed(HeaderValue),
    /// A token kept fresh by a [`TokenSource`].
    Refreshed(Arc<RwLock<Option<HeaderValue>>>),
}

impl Credential {
    /// The header value to send now, if any.
    pub(crate) fn current(&self) -> Option<HeaderValue> {
        match self {
            Credential::None => None,
            Credential::Fixed(v) => Some(v.clone()),
            Credential::Refreshed(cell) => cell.read().clone(),
        }
    }
}

/// A token endpoint answer: the header to send and how long it holds.
struct Issued {
    header: HeaderValue,
    lifetime: Duration,
}

/// Lifetime assumed when the token endpoint names none.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Shortest wait between two token fetches.
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Longest wait between retries after a failed fetch.
const MAX_RETRY: Duration = Duration::from_secs(30);

fn bearer(token: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

async fn request_token(
    fetcher: &Fetcher,
    url: &Uri,
    client: &TokenClient,
    form: &[(&str, &str)],
) -> Result<Issued, String> {
    let mut form = form.to_vec();
    if let Some(scope) = &client.scope {
        form.push(("scope", scope));
    }
    if let Some(resource) = &client.resource {
        form.push(("resource", resource));
    }
    let (status, doc) = fetcher
        .post_form(url, Some((&client.client_id, &client.client_secret)), &form)
        .await
        .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "the token endpoint {url} answered HTTP {status} ({})",
            oauth_error(&doc)
        ));
    }
    let token = doc["access_token"]
        .as_str()
        .ok_or_else(|| format!("the token endpoint {url} answered without access_token"))?;
    let header =
        bearer(token).ok_or_else(|| format!("the token from {url} is not a valid header value"))?;
    let lifetime = doc["expires_in"]
        .as_u64()
        .map_or(DEFAULT_LIFETIME, Duration::from_secs);
    Ok(Issued { header, lifetime })
}

/// `error` and `error_description` of an OAuth error answer.
fn oauth_error(doc: &Value) -> String {
    let err = doc["error"].as_str().unwrap_or("no error code");
    match doc["error_description"].as_str() {
        Some(d) => format!("{err}: {}", d.chars().take(200).collect::<String>()),
        None => err.to_owned(),
    }
}

/// Fetches a client-credentials token now, then keeps it fresh from one
/// task until `closing` is set or the returned credential is dropped.
pub(crate) async fn client_credentials(
    fetcher: Arc<Fetcher>,
    url: Uri,
    client: TokenClient,
    margin: Duration,
    mut closing: tokio::sync::watch::Receiver<bool>,
) -> Result<Credential, String> {
    let form = [("grant_type", "client_credentials")];
    let first = request_token(&fetcher, &url, &client, &form).await?;
    let cell = Arc::new(RwLock::new(Some(first.header)));
    let weak: Weak<RwLock<Option<HeaderValue>>> = Arc::downgrade(&cell);
    let mut next = refresh_after(first.lifetime, margin);
    tokio::spawn(async move {
        let mut retry = MIN_REFRESH;
        loop {
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                _ = closing.wait_for(|c| *c) => return,
            }
            let Some(cell) = weak.upgrade() else { return };
            match request_token(&fetcher, &url, &client, &form).await {
                Ok(issued) => {
                    metrics::counter!("shadowcat_auth_upstream_tokens_total", "result" => "ok")
                        .increment(1);
                    tracing::debug!(lifetime = ?issued.lifetime, "refreshed the upstream client-credentials token");
                    *cell.write() = Some(issued.header);
                    next = refresh_after(issued.lifetime, margin);
                    retry = MIN_REFRESH;
                }
                Err(e) => {
                    metrics::counter!("shadowcat_auth_upstream_tokens_total", "result" => "error")
                        .increment(1);
                    tracing::warn!(error = %e, retry_in = ?retry, "could not refresh the upstream client-credentials token; the current one is used until it expires");
                    next = retry;
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    });
    Ok(Credential::Refreshed(cell))
}

fn refresh_after(lifetime: Duration, margin: Duration) -> Duration {
    lifetime
        .checked_sub(margin)
        .unwrap_or(lifetime / 2)
        .max(MIN_REFRESH)
}

/// Exchanged tokens by principal (with when they are due for a new
/// exchange), and the principals in insertion order.
type ExchangeCache = (
    HashMap<Arc<str>, (HeaderValue, Instant)>,
    VecDeque<Arc<str>>,
);

/// RFC 8693 token exchange, one upstream token per principal, cached.
pub(crate) struct Exchanger {
    url: Uri,
    client: TokenClient,
    cache: Mutex<ExchangeCache>,
    max_entries: usize,
    margin: Duration,
}

impl std::fmt::Debug for Exchanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchanger")
            .field("url", &self.url)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Exchanger {
    pub(crate) fn new(url: Uri, client: TokenClient, max_entries: usize, margin: Duration) -> Self {
        Exchanger {
            url,
            client,
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
            max_entries: max_entries.max(1),
            margin,
        }
    }

    /// The upstream token for `principal`, exchanged from `token` when
    /// none is cached.
    pub(crate) async fn exchange(
        &self,
        fetcher: &Fetcher,
        principal: &Arc<str>,
        token: &str,
    ) -> Result<HeaderValue, String> {
        if let Some((v, until)) = self.cache.lock().0.get(principal)
            && *until > Instant::now()
        {
            return Ok(v.clone());
        }
        let form = [
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", token),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
        ];
        let issued = request_token(fetcher, &self.url, &self.client, &form).await?;
        metrics::counter!("shadowcat_auth_upstream_tokens_total", "result" => "exchanged")
            .increment(1);
        let until = Instant::now() + refresh_after(issued.lifetime, self.margin);
        let mut cache = self.cache.lock();
        let (map, order) = &mut *cache;
        while map.len() >= self.max_entries {
            let Some(old) = order.pop_front() else { break };
            map.remove(&old);
        }
        if map
            .insert(Arc::clone(principal), (issued.header.clone(), until))
            .is_none()
        {
            order.push_back(Arc::clone(principal));
        }
        Ok(issued.header)
    }
}

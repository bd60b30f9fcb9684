//! Opaque tokens: RFC 7662 introspection (client_secret_basic), with a
//! bounded cache keyed by a keyed hash of the token (the token itself is
//! not kept). An answer is trusted for at most `introspection_cache_ttl`
//! and never past the token's `exp`.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Uri;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::time::Instant;

use super::fetch::Fetcher;
use super::{Denied, Reason};

/// A cached answer.
struct Entry {
    /// `None`: the token is not active.
    claims: Option<Arc<Value>>,
    until: Instant,
}

#[derive(Default)]
struct Cache {
    map: HashMap<u128, Entry>,
    /// Insertion order, oldest first (may name entries already gone).
    order: VecDeque<u128>,
}

/// The authorization server's introspection endpoint and its cache.
pub(crate) struct Introspector {
    endpoint: Uri,
    client_id: String,
    client_secret: String,
    cache: Mutex<Cache>,
    keys: (std::hash::RandomState, std::hash::RandomState),
    max_entries: usize,
    ttl: Duration,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("cached", &self.cache.lock().map.len())
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Introspector {
    pub(crate) fn new(
        endpoint: Uri,
        client_id: String,
        client_secret: String,
        max_entries: usize,
        ttl: Duration,
    ) -> Self {
        Introspector {
            endpoint,
            client_id,
            client_secret,
            cache: Mutex::new(Cache::default()),
            keys: (std::hash::RandomState::new(), std::hash::RandomState::new()),
            max_entries: max_entries.max(1),
            ttl,
        }
    }

    fn key(&self, token: &str) -> u128 {
        (u128::from(self.keys.0.hash_one(token)) << 64) | u128::from(self.keys.1.hash_one(token))
    }

    fn cached(&self, key: u128) -> Option<Option<Arc<Value>>> {
        let mut cache = self.cache.lock();
        let e = cache.map.get(&key)?;
        if e.until <= Instant::now() {
            cache.map.remove(&key);
            return None;
        }
        Some(e.claims.clone())
    }

    fn remember(&self, key: u128, claims: Option<Arc<Value>>, until: Instant) {
        let mut cache = self.cache.lock();
        while cache.map.len() >= self.max_entries {
            let Some(old) = cache.order.pop_front() else {
                break;
            };
            cache.map.remove(&old);
        }
        if cache.order.len() > 2 * self.max_entries {
            let Cache { map, order } = &mut *cache;
            order.retain(|k| map.contains_key(k));
        }
        cache.map.insert(key, Entry { claims, until });
        cache.order.push_back(key);
    }

    /// The claims of an active `token`.
    pub(crate) async fn introspect(
        &self,
        fetcher: &Fetcher,
        token: &str,
    ) -> Result<Arc<Value>, Denied> {
        let key = self.key(token);
        if let Some(hit) = self.cached(key) {
            metrics::counter!("shadowcat_auth_introspections_total", "result" => "hit")
                .increment(1);
            return hit.ok_or_else(inactive);
        }
        let answer = fetcher
            .post_form(
                &self.endpoint,
                Some((&self.client_id, &self.client_secret)),
                &[("token", token), ("token_type_hint", "access_token")],
            )
            .await;
        let doc = match answer {
            Ok((status, doc)) if status.is_success() => doc,
            Ok((status, _)) => {
                metrics::counter!("shadowcat_auth_introspections_total", "result" => "error")
                    .increment(1);
                tracing::warn!(endpoint = %self.endpoint, %status, "token introspection refused (check the introspection client id and secret)");
                return Err(Denied::unavailable(format!(
                    "the authorization server refused to introspect the token (HTTP {status}); retry later"
                )));
            }
            Err(e) => {
                metrics::counter!("shadowcat_auth_introspections_total", "result" => "error")
                    .increment(1);
                tracing::warn!(error = %e, "token introspection failed");
                return Err(Denied::unavailable(
                    "the authorization server could not be asked about the token; retry later"
                        .to_owned(),
                ));
            }
        };
        let now = Instant::now();
        let active = doc["active"].as_bool() == Some(true);
        let exp = doc["exp"].as_u64();
        let mut until = now + self.ttl;
        if let Some(exp) = exp {
            until = until.min(now + Duration::from_secs(exp.saturating_sub(unix_now())));
        }
        if !active || exp.is_some_and(|e| e <= unix_now()) {
            metrics::counter!("shadowcat_auth_introspections_total", "result" => "inactive")
                .increment(1);
            self.remember(key, None, now + self.ttl);
            return Err(inactive());
        }
        metrics::counter!("shadowcat_auth_introspections_total", "result" => "active").increment(1);
        let claims = Arc::new(doc);
        self.remember(key, Some(Arc::clone(&claims)), until);
        Ok(claims)
    }
}

fn inactive() -> Denied {
    Denied::invalid(
        Reason::Inactive,
        "the authorization server says the token is not active (expired, revoked or unknown); get a new one",
    )
}

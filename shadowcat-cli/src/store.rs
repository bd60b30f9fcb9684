//! Opening a session store from its spec: `file:PATH`, `memory` or
//! `redis://…`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shadowcat_session::{MemoryStore, RedbStore, RedisStore, RedisStoreConfig, SessionStore};

use crate::error::CliError;

/// A parsed `--store` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreSpec {
    /// In memory; gone when the process ends.
    Memory,
    /// The embedded redb file store.
    File(PathBuf),
    /// Redis, shared by several proxies.
    Redis(String),
}

impl StoreSpec {
    pub(crate) fn parse(spec: &str) -> Result<Self, CliError> {
        if spec == "memory" {
            Ok(StoreSpec::Memory)
        } else if let Some(path) = spec.strip_prefix("file:") {
            if path.is_empty() {
                return Err(CliError::Config("--store file: needs a path".into()));
            }
            Ok(StoreSpec::File(PathBuf::from(path)))
        } else if spec.starts_with("redis://")
            || spec.starts_with("rediss://")
            || spec.starts_with("redis+unix://")
        {
            Ok(StoreSpec::Redis(spec.to_owned()))
        } else {
            Err(CliError::Config(format!(
                "bad --store {spec:?}: expected file:PATH, memory or redis://HOST:PORT"
            )))
        }
    }

    /// Opens (or creates) the store, Redis keys with the default TTL.
    pub(crate) async fn open(&self, spec: &str) -> Result<Arc<dyn SessionStore>, CliError> {
        self.open_with_ttl(spec, RedisStoreConfig::default().idle_ttl)
            .await
    }

    /// Opens (or creates) the store. `idle_ttl` is the TTL of Redis
    /// session keys ([`shadowcat_session::SweeperConfig::store_ttl`]).
    pub(crate) async fn open_with_ttl(
        &self,
        spec: &str,
        idle_ttl: Duration,
    ) -> Result<Arc<dyn SessionStore>, CliError> {
        let err = |source| CliError::Store {
            spec: spec.to_owned(),
            source,
        };
        Ok(match self {
            StoreSpec::Memory => Arc::new(MemoryStore::new()),
            StoreSpec::File(path) => Arc::new(RedbStore::open(path).map_err(err)?),
            StoreSpec::Redis(url) => Arc::new(
                RedisStore::connect(
                    url,
                    RedisStoreConfig {
                        idle_ttl,
                        ..RedisStoreConfig::default()
                    },
                )
                .await
                .map_err(err)?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(StoreSpec::parse("memory").unwrap(), StoreSpec::Memory);
        assert_eq!(
            StoreSpec::parse("file:/tmp/x.redb").unwrap(),
            StoreSpec::File("/tmp/x.redb".into())
        );
        assert!(matches!(
            StoreSpec::parse("redis://127.0.0.1:6379/0").unwrap(),
            StoreSpec::Redis(_)
        ));
        assert!(StoreSpec::parse("file:").is_err());
        assert!(StoreSpec::parse("/tmp/x.redb").is_err());
    }
}

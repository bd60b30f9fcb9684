//! The reverse proxy's session layer (store, bounded cache, writer) on its
//! own, for the bench gates (feature `test-util`): it creates, uses,
//! sweeps and counts sessions exactly as the proxy does, with no HTTP.

use std::sync::Arc;

use shadowcat_session::{SessionId, SessionStore, StoreError, WriterHandle};

use crate::config::Limits;
use crate::mcp::protocol::ProtocolVersion;
use crate::session::{CacheLimits, CreateError, Sessions};

/// The proxy's sessions over `store`, with the cache limits of a
/// [`Limits`].
#[derive(Debug)]
pub struct SessionLayer {
    sessions: Sessions,
    max_sessions: u64,
}

impl SessionLayer {
    /// The layer the reverse proxy would build with `limits`.
    pub fn new(
        store: Arc<dyn SessionStore>,
        writer: Option<WriterHandle>,
        limits: &Limits,
    ) -> Self {
        SessionLayer {
            sessions: Sessions::new(
                store,
                "http://127.0.0.1:3001/mcp".to_owned(),
                writer,
                CacheLimits::from_limits(limits),
            ),
            max_sessions: limits.max_sessions,
        }
    }

    /// Creates a session as an `initialize` does (the upstream's session
    /// id is `upstream_id`); returns the id the client would hold.
    pub async fn create(&self, upstream_id: &str) -> Result<SessionId, String> {
        let up = http::HeaderValue::from_str(upstream_id).map_err(|e| e.to_string())?;
        match self
            .sessions
            .create(Some(up), ProtocolVersion::ASSUMED, self.max_sessions)
            .await
        {
            Ok(e) => Ok(e.id.clone()),
            Err(CreateError::Random(e)) => Err(e),
            Err(e @ CreateError::Full(_)) => Err(e.to_string()),
            Err(CreateError::Store(e)) => Err(e.to_string()),
        }
    }

    /// A request names session `id`: true when the proxy would serve it,
    /// false when it would answer 404.
    pub async fn request(&self, id: &SessionId) -> Result<bool, StoreError> {
        Ok(self.sessions.lookup(id.as_str()).await?.is_some())
    }

    /// One run of the proxy's cache sweeper.
    pub async fn sweep(&self) {
        self.sessions.sweep().await;
    }

    /// Sessions in the cache now.
    pub fn cached(&self) -> usize {
        self.sessions.cached()
    }
}

//! `MemoryStore`: sessions in a map. For tests and `--store memory`.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::model::{Session, SessionId, UnixMillis, Update};
use crate::store::{ExpiredSession, Page, SessionStore, StoreError, is_idle};

/// An in-memory [`SessionStore`]; forgets everything on drop.
#[derive(Debug, Default)]
pub struct MemoryStore {
    // A sync mutex: held for map operations only, never across an await.
    sessions: Mutex<BTreeMap<SessionId, Session>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn apply(map: &mut BTreeMap<SessionId, Session>, update: &Update) {
    let Some(s) = map.get_mut(update.session()) else {
        return;
    };
    match update {
        Update::Point { stream, point, .. } => s.set_stream(*stream, point.clone()),
        Update::Touch { at, .. } => s.last_activity = s.last_activity.max(*at),
        Update::EndStream { stream, .. } => s.streams.retain(|p| p.stream != *stream),
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn create_bounded(&self, session: &Session, max_sessions: u64) -> Result<(), StoreError> {
        let mut map = self.sessions.lock();
        if map.contains_key(&session.id) {
            return Err(StoreError::AlreadyExists(session.id.clone()));
        }
        if map.len() as u64 >= max_sessions {
            return Err(StoreError::Full {
                store: "memory",
                limit: max_sessions,
            });
        }
        map.insert(session.id.clone(), session.clone());
        Ok(())
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        Ok(self.sessions.lock().get(id).cloned())
    }

    async fn update(&self, session: &Session) -> Result<(), StoreError> {
        match self.sessions.lock().get_mut(&session.id) {
            Some(s) => {
                *s = session.clone();
                Ok(())
            }
            None => Err(StoreError::NotFound(session.id.clone())),
        }
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        Ok(self.sessions.lock().remove(id).is_some())
    }

    async fn list(&self, after: Option<&SessionId>, limit: usize) -> Result<Page, StoreError> {
        let map = self.sessions.lock();
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut iter = map.range::<SessionId, _>((lower, Bound::Unbounded));
        let sessions: Vec<Session> = iter.by_ref().take(limit).map(|(_, s)| s.clone()).collect();
        let next = match (iter.next(), sessions.last()) {
            (Some(_), Some(last)) => Some(last.id.clone()),
            _ => None,
        };
        Ok(Page { sessions, next })
    }

    async fn count(&self) -> Result<u64, StoreError> {
        Ok(self.sessions.lock().len() as u64)
    }

    async fn apply_batch(&self, updates: &[Update]) -> Result<(), StoreError> {
        let mut map = self.sessions.lock();
        for u in updates {
            apply(&mut map, u);
        }
        Ok(())
    }

    async fn expire_idle(
        &self,
        now: UnixMillis,
        max_idle: Duration,
    ) -> Result<Vec<ExpiredSession>, StoreError> {
        let mut map = self.sessions.lock();
        let mut gone = Vec::new();
        map.retain(|_, s| {
            let idle = is_idle(s.last_activity, now, max_idle);
            if idle {
                gone.push(ExpiredSession::of(s));
            }
            !idle
        });
        Ok(gone)
    }
}

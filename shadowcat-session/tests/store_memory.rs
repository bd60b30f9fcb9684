//! The conformance suite against `MemoryStore`.

mod conformance;
mod support;

use std::sync::Arc;

use shadowcat_session::{MemoryStore, SessionStore};

#[tokio::test]
async fn memory_store_conforms() {
    conformance::run_all(|| async { Arc::new(MemoryStore::new()) as Arc<dyn SessionStore> }).await;
}

//! The reconnect policy: capped exponential backoff with full jitter,
//! honouring the server's `retry:`, bounded attempts.

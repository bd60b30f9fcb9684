//! The session model: what the proxy remembers about one MCP session.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// Longest session id accepted from a client or a store (bytes).
pub const MAX_SESSION_ID_LEN: usize = 128;

/// Milliseconds since the Unix epoch. Stores keep times in this form.
pub type UnixMillis = u64;

/// The current time as [`UnixMillis`].
pub fn now_millis() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A proxy session id: what the proxy hands the client as `Mcp-Session-Id`.
///
/// Generated ids are 128 random bits from the OS, as 32 lowercase hex
/// characters. Parsed ids must be visible ASCII (0x21–0x7E), 1 to
/// [`MAX_SESSION_ID_LEN`] bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionId(Box<str>);

/// A string that is not a valid session id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid session id: {reason}")]
pub struct InvalidSessionId {
    /// What is wrong with it.
    pub reason: &'static str,
}

impl SessionId {
    /// A new id with 128 bits from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw)?;
        let mut s = String::with_capacity(32);
        for b in raw {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 0xf) as usize] as char);
        }
        Ok(SessionId(s.into_boxed_str()))
    }

    /// Checks `s` against the MCP rules (visible ASCII, bounded length).
    pub fn parse(s: &str) -> Result<Self, InvalidSessionId> {
        if s.is_empty() {
            return Err(InvalidSessionId { reason: "empty" });
        }
        if s.len() > MAX_SESSION_ID_LEN {
            return Err(InvalidSessionId {
                reason: "longer than 128 bytes",
            });
        }
        if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(InvalidSessionId {
                reason: "not visible ASCII (0x21-0x7E)",
            });
        }
        Ok(SessionId(s.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short name for the id in logs: 8 hex characters of a hash keyed
    /// with a random per-process key. The full id is the session's only
    /// credential, so logs carry this instead; it is stable for the life
    /// of the process (not across restarts or instances).
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.as_str())
    }
}

/// A session id's log name; see [`SessionId::fingerprint`]. Displays as 8
/// lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(u32);

impl Fingerprint {
    /// The fingerprint of a session id given as text (one a client sent
    /// that may not be valid).
    pub fn of(id: &str) -> Self {
        use std::hash::BuildHasher;
        static KEY: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
        let h = KEY
            .get_or_init(std::hash::RandomState::new)
            .hash_one(id.as_bytes());
        Fingerprint((h >> 32) as u32)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Shows the fingerprint, never the id: a `{:?}` in a log must not leak
/// the credential.
impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId(fp {})", self.fingerprint())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for SessionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SessionId {
    type Error = InvalidSessionId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        SessionId::parse(&s)
    }
}

impl From<SessionId> for String {
    fn from(id: SessionId) -> String {
        id.0.into()
    }
}

/// Length of a [`ResumeKey`] in bytes.
pub const RESUME_KEY_LEN: usize = 16;

/// A per-session secret the proxy seals its client event ids with (a MAC
/// key), so any instance that loads the session can verify a client's
/// `Last-Event-ID` and a client cannot forge another stream's or session's
/// position. 128 bits from the OS CSPRNG; never shown to anyone.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResumeKey(pub [u8; RESUME_KEY_LEN]);

impl ResumeKey {
    /// A new key with 128 bits from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut raw = [0u8; RESUME_KEY_LEN];
        getrandom::fill(&mut raw)?;
        Ok(ResumeKey(raw))
    }

    /// The key as 32 lowercase hex characters (how text stores keep it).
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(2 * RESUME_KEY_LEN);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 0xf) as usize] as char);
        }
        s
    }

    /// Parses [`ResumeKey::to_hex`]'s form; `None` unless it is exactly 32
    /// hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 2 * RESUME_KEY_LEN {
            return None;
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut raw = [0u8; RESUME_KEY_LEN];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            raw[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
        }
        Some(ResumeKey(raw))
    }
}

impl fmt::Debug for ResumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResumeKey(<redacted>)")
    }
}

impl TryFrom<String> for ResumeKey {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ResumeKey::from_hex(&s).ok_or("a resume key is 32 hex digits")
    }
}

impl From<ResumeKey> for String {
    fn from(k: ResumeKey) -> String {
        k.to_hex()
    }
}

/// Names one SSE stream within a session. The proxy numbers them; the
/// store treats the number as opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamId(pub u32);

/// Where a stream can be resumed from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumptionPoint {
    /// The last upstream SSE event id seen on the stream, if the upstream
    /// sends ids.
    pub upstream_event_id: Option<String>,
    /// The sequence number of the last event the proxy sent the client on
    /// this stream (0: none yet).
    pub client_seq: u64,
}

/// One stream's resumption point, as kept in a [`Session`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPoint {
    /// Which stream.
    pub stream: StreamId,
    /// Where it resumes.
    pub point: ResumptionPoint,
}

/// One MCP session as the proxy knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The id the client holds (`Mcp-Session-Id` toward the client).
    pub id: SessionId,
    /// The upstream's `Mcp-Session-Id`, if it issued one. Never shown to
    /// the client.
    pub upstream_session_id: Option<String>,
    /// The upstream this session is bound to (a URL or a command label).
    pub upstream: String,
    /// The negotiated MCP protocol revision, e.g. `2025-11-25`.
    pub protocol_version: String,
    /// When the session was created.
    pub created_at: UnixMillis,
    /// The last time a client used the session.
    pub last_activity: UnixMillis,
    /// Per stream, the resumption point. Ordered by stream id.
    pub streams: SmallVec<[StreamPoint; 1]>,
    /// The key the proxy seals client event ids with; `None` for a session
    /// stored before keys existed (the proxy then adds one).
    #[serde(default)]
    pub resume_key: Option<ResumeKey>,
    /// Who the session belongs to, when the proxy checks credentials: a
    /// principal (issuer and subject) or a keyed fingerprint of the
    /// credential that created it; never a token. `None`: unbound (no
    /// auth, or stored before bindings existed).
    #[serde(default)]
    pub binding: Option<String>,
}

impl Session {
    /// A new session created now, with no streams.
    pub fn new(
        id: SessionId,
        upstream: impl Into<String>,
        protocol_version: impl Into<String>,
    ) -> Self {
        let now = now_millis();
        Session {
            id,
            upstream_session_id: None,
            upstream: upstream.into(),
            protocol_version: protocol_version.into(),
            created_at: now,
            last_activity: now,
            streams: SmallVec::new(),
            resume_key: None,
            binding: None,
        }
    }

    /// The resumption point of `stream`, if any.
    pub fn stream(&self, stream: StreamId) -> Option<&ResumptionPoint> {
        self.streams
            .iter()
            .find(|s| s.stream == stream)
            .map(|s| &s.point)
    }

    /// Sets `stream`'s resumption point, keeping `streams` ordered.
    pub fn set_stream(&mut self, stream: StreamId, point: ResumptionPoint) {
        match self.streams.binary_search_by_key(&stream, |s| s.stream) {
            Ok(i) => self.streams[i].point = point,
            Err(i) => self.streams.insert(i, StreamPoint { stream, point }),
        }
    }

    /// Bytes this session takes in memory: the struct plus its heap parts.
    pub fn memory_bytes(&self) -> usize {
        let heap_strings = self.id.as_str().len()
            + self
                .upstream_session_id
                .as_ref()
                .map_or(0, |s| s.capacity())
            + self.upstream.capacity()
            + self.protocol_version.capacity()
            + self.binding.as_ref().map_or(0, |b| b.capacity());
        let streams_heap = if self.streams.spilled() {
            self.streams.capacity() * std::mem::size_of::<StreamPoint>()
        } else {
            0
        };
        let ids: usize = self
            .streams
            .iter()
            .map(|s| {
                s.point
                    .upstream_event_id
                    .as_ref()
                    .map_or(0, |e| e.capacity())
            })
            .sum();
        std::mem::size_of::<Session>() + heap_strings + streams_heap + ids
    }
}

/// One change the [`crate::BatchingWriter`] hands a store in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A stream's newest resumption point.
    Point {
        /// The session.
        session: SessionId,
        /// The stream.
        stream: StreamId,
        /// Its newest resumption point.
        point: ResumptionPoint,
    },
    /// The session was used at `at`.
    Touch {
        /// The session.
        session: SessionId,
        /// When.
        at: UnixMillis,
    },
    /// The stream is finished; its resumption point is no longer needed.
    EndStream {
        /// The session.
        session: SessionId,
        /// The stream.
        stream: StreamId,
    },
}

impl Update {
    /// The session this update is about.
    pub fn session(&self) -> &SessionId {
        match self {
            Update::Point { session, .. }
            | Update::Touch { session, .. }
            | Update::EndStream { session, .. } => session,
        }
    }
}

#[cfg(test)]
mod resume_key_tests {
    use super::*;

    #[test]
    fn hex_roundtrip_and_rejects() {
        let k = ResumeKey::generate().unwrap();
        assert_eq!(ResumeKey::from_hex(&k.to_hex()), Some(k));
        assert_ne!(ResumeKey::generate().unwrap(), k, "fresh keys differ");
        assert_eq!(ResumeKey::from_hex(&"0".repeat(31)), None);
        assert_eq!(ResumeKey::from_hex(&"g".repeat(32)), None);
        assert!(!format!("{k:?}").contains(&k.to_hex()), "Debug redacts");
    }
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;

    #[test]
    fn eight_hex_characters_stable_and_distinct() {
        let a = SessionId::generate().unwrap();
        let b = SessionId::generate().unwrap();
        let fa = a.fingerprint().to_string();
        assert_eq!(fa.len(), 8);
        assert!(
            fa.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert!(!a.as_str().contains(&fa), "not a piece of the id");
        assert_eq!(a.fingerprint(), a.clone().fingerprint(), "stable");
        assert_eq!(Fingerprint::of(a.as_str()), a.fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}

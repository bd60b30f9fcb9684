//! Client event ids: every event the proxy sends a client in a session
//! carries one, unique in the session, naming its stream.
//!
//! Form: `{stream}.{seq}.{tag}` or `{stream}.{seq}.{tag}.{upstream}`:
//! - `stream`: the proxy's stream number (decimal `u32`; the top bit marks
//!   a GET stream, see [`GET_STREAM_BIT`]);
//! - `seq`: the event's sequence number on that stream toward the client,
//!   from 1 (decimal `u64`);
//! - `tag`: 16 lowercase hex digits, a MAC over (session id, stream, seq,
//!   upstream id) keyed with the session's [`ResumeKey`];
//! - `upstream`: the upstream's last event id as of this event, if any,
//!   percent-encoded so the whole id is visible ASCII (a valid SSE id and
//!   a valid HTTP header value). Omitted when it would be longer than
//!   [`MAX_CARRIED_UPSTREAM_ID`].
//!
//! The MAC is keyed SipHash-2-4 with a 64-bit tag. SipHash is a PRF
//! designed for short inputs: a tag costs tens of nanoseconds, where
//! HMAC-SHA256 costs several hundred, against a per-event budget of
//! 0.6 µs for everything. Forging a tag for another session, stream or
//! position takes about 2^63 online guesses, each one a request the proxy
//! refuses. The stream's fixed prefix (key, session id, stream) is absorbed
//! once per stream; per event the state is cloned and the id written
//! straight into the output buffer: no allocation.

use std::fmt;

use bytes::{BufMut, BytesMut};
use shadowcat_session::{ResumeKey, SessionId};
use shadowcat_transport::sse::put_decimal;

pub(crate) mod siphash;

use siphash::SipHasher24;

/// Set in a stream number for a GET (standalone) stream; clear for a POST
/// request's stream.
pub(crate) const GET_STREAM_BIT: u32 = 1 << 31;

/// Longest upstream event id, once percent-encoded, carried inside a
/// client id (bytes). With the other parts (at most 50 bytes) a client id
/// stays well under the default `Last-Event-ID` limit of 256 bytes.
pub(crate) const MAX_CARRIED_UPSTREAM_ID: usize = 160;

/// A client event id, parsed. It says nothing until
/// [`ClientEventId::verify`] checked its tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEventId {
    /// The stream number.
    pub stream: u32,
    /// The sequence number of the event on that stream.
    pub seq: u64,
    /// The MAC tag.
    pub tag: u64,
    /// The upstream event id carried inside, decoded.
    pub upstream: Option<String>,
}

/// Why a `Last-Event-ID` is not a client id this proxy issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not of the form `stream.seq.tag[.upstream]`.
    #[error("it is not of the form STREAM.SEQ.TAG[.UPSTREAM]")]
    Malformed,
    /// Well formed, but the tag does not match: another session's, or
    /// altered.
    #[error("it was not issued in this session")]
    Forged,
}

impl ClientEventId {
    /// Parses the text form. Checks syntax only.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let mut parts = s.splitn(4, '.');
        let stream = parts.next().and_then(parse_decimal::<u32>);
        let seq = parts.next().and_then(parse_decimal::<u64>);
        let tag = parts.next().and_then(parse_tag);
        let (Some(stream), Some(seq), Some(tag)) = (stream, seq, tag) else {
            return Err(IdError::Malformed);
        };
        let upstream = match parts.next() {
            None => None,
            Some(enc) => Some(percent_decode(enc).ok_or(IdError::Malformed)?),
        };
        Ok(ClientEventId {
            stream,
            seq,
            tag,
            upstream,
        })
    }

    /// True for an id of a GET stream.
    pub fn is_get_stream(&self) -> bool {
        self.stream & GET_STREAM_BIT != 0
    }

    /// Checks the tag against `session` and its `key`.
    pub fn verify(&self, key: &ResumeKey, session: &SessionId) -> Result<(), IdError> {
        let sealer = StreamSealer::new(key, session, self.stream);
        let want = sealer.tag(self.seq, self.upstream.as_deref());
        // Not secret-dependent timing worth defending: a mismatch reveals
        // nothing about the key, and the tag is 64 bits of PRF output.
        if want == self.tag {
            Ok(())
        } else {
            Err(IdError::Forged)
        }
    }
}

fn parse_decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_tag(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Bytes carried as they are: visible ASCII but `%` (the escape) and `.`
/// is fine (the upstream part is last).
fn plain(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b'%'
}

fn encoded_len(id: &str) -> usize {
    id.bytes().map(|b| if plain(b) { 1 } else { 3 }).sum()
}

fn percent_decode(s: &str) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else if plain(b[i]) {
            out.push(b[i]);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// Seals and writes one stream's client ids.
#[derive(Clone)]
pub(crate) struct StreamSealer {
    prefix: SipHasher24,
    stream: u32,
}

impl fmt::Debug for StreamSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSealer")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl StreamSealer {
    pub(crate) fn new(key: &ResumeKey, session: &SessionId, stream: u32) -> Self {
        let mut prefix = SipHasher24::new(&key.0);
        let sid = session.as_str().as_bytes();
        // Session ids are at most 128 bytes: one length byte suffices.
        prefix.write(&[sid.len() as u8]);
        prefix.write(sid);
        prefix.write(&stream.to_le_bytes());
        StreamSealer { prefix, stream }
    }

    /// The tag of (seq, upstream id) on this stream.
    pub(crate) fn tag(&self, seq: u64, upstream: Option<&str>) -> u64 {
        let mut h = self.prefix.clone();
        h.write(&seq.to_le_bytes());
        match upstream {
            Some(u) => {
                h.write(&[1]);
                h.write(u.as_bytes());
            }
            None => h.write(&[0]),
        }
        h.finish()
    }

    /// Writes `id: {client id}\n` for event `seq` carrying `upstream` (when
    /// short enough) into `out`.
    pub(crate) fn write_id_line(&self, out: &mut BytesMut, seq: u64, upstream: Option<&str>) {
        let upstream =
            upstream.filter(|u| !u.is_empty() && encoded_len(u) <= MAX_CARRIED_UPSTREAM_ID);
        let tag = self.tag(seq, upstream);
        out.reserve(48 + upstream.map_or(0, |u| u.len() * 3));
        out.put_slice(b"id: ");
        put_decimal(out, u64::from(self.stream));
        out.put_u8(b'.');
        put_decimal(out, seq);
        out.put_u8(b'.');
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for shift in (0..16).rev() {
            out.put_u8(HEX[((tag >> (shift * 4)) & 0xf) as usize]);
        }
        if let Some(u) = upstream {
            out.put_u8(b'.');
            for b in u.bytes() {
                if plain(b) {
                    out.put_u8(b);
                } else {
                    out.put_u8(b'%');
                    out.put_u8(HEX[(b >> 4) as usize].to_ascii_uppercase());
                    out.put_u8(HEX[(b & 0xf) as usize].to_ascii_uppercase());
                }
            }
        }
        out.put_u8(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> SessionId {
        SessionId::parse(s).unwrap()
    }

    fn issue(key: &ResumeKey, session: &str, stream: u32, seq: u64, up: Option<&str>) -> String {
        let mut out = BytesMut::new();
        StreamSealer::new(key, &sid(session), stream).write_id_line(&mut out, seq, up);
        let line = std::str::from_utf8(&out).unwrap();
        line.strip_prefix("id: ")
            .and_then(|l| l.strip_suffix('\n'))
            .unwrap()
            .to_owned()
    }

    #[test]
    fn roundtrip_and_visible_ascii() {
        let key = ResumeKey([3; 16]);
        for up in [
            None,
            Some("s0-17"),
            Some("a.b%c d\u{e9}\u{1f600}"),
            Some("x".repeat(MAX_CARRIED_UPSTREAM_ID).as_str()),
        ] {
            for stream in [0, 7, GET_STREAM_BIT | 5, u32::MAX] {
                let text = issue(&key, "sess", stream, 42, up);
                assert!(text.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{text}");
                let id = ClientEventId::parse(&text).unwrap();
                assert_eq!((id.stream, id.seq), (stream, 42));
                assert_eq!(id.upstream.as_deref(), up);
                assert_eq!(id.is_get_stream(), stream & GET_STREAM_BIT != 0);
                assert_eq!(id.verify(&key, &sid("sess")), Ok(()));
            }
        }
    }

    #[test]
    fn too_long_upstream_ids_are_not_carried() {
        let key = ResumeKey([3; 16]);
        let long = "y".repeat(MAX_CARRIED_UPSTREAM_ID + 1);
        let id = ClientEventId::parse(&issue(&key, "s", 1, 1, Some(&long))).unwrap();
        assert_eq!(id.upstream, None);
        assert_eq!(id.verify(&key, &sid("s")), Ok(()));
    }

    #[test]
    fn forged_other_session_other_stream_other_key_fail() {
        let key = ResumeKey([3; 16]);
        let text = issue(&key, "sess", 4, 9, Some("u-9"));
        let id = ClientEventId::parse(&text).unwrap();
        assert_eq!(id.verify(&key, &sid("other")), Err(IdError::Forged));
        assert_eq!(
            id.verify(&ResumeKey([4; 16]), &sid("sess")),
            Err(IdError::Forged)
        );
        for (stream, seq, up) in [
            (5, 9, Some("u-9")),
            (4, 10, Some("u-9")),
            (4, 9, Some("u-8")),
            (4, 9, None),
        ] {
            let mut altered = id.clone();
            altered.stream = stream;
            altered.seq = seq;
            altered.upstream = up.map(str::to_owned);
            assert_eq!(altered.verify(&key, &sid("sess")), Err(IdError::Forged));
        }
    }

    #[test]
    fn malformed_ids() {
        for bad in [
            "",
            "1",
            "1.2",
            "1.2.3",
            "a.2.0123456789abcdef",
            "1.b.0123456789abcdef",
            "1.2.0123456789ABCDEF",
            "1.2.0123456789abcde",
            "1.2.0123456789abcdef.",
            "1.2.0123456789abcdef.%4",
            "1.2.0123456789abcdef.%zz",
            "1.2.0123456789abcdef.a b",
            "-1.2.0123456789abcdef",
            "1.99999999999999999999.0123456789abcdef",
            "4294967296.2.0123456789abcdef",
            "1.2.0123456789abcdef.%FF",
        ] {
            assert_eq!(
                ClientEventId::parse(bad),
                Err(IdError::Malformed),
                "{bad:?}"
            );
        }
    }
}

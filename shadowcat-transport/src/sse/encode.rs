//! The SSE encoder: events and comments written into a [`BytesMut`], never
//! in a form that decodes differently.

use bytes::{BufMut, BytesMut};

use super::decode::find_line_end;

/// Input the encoder refuses because no SSE stream could carry it intact.
/// Nothing is written when encoding fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The id contains CR or LF (it would end the line) or NUL (a decoder
    /// ignores such an id).
    #[error("SSE event id contains CR, LF or NUL")]
    InvalidId,
    /// The event name contains CR or LF.
    #[error("SSE event name contains CR or LF")]
    InvalidEventName,
    /// The comment contains CR or LF.
    #[error("SSE comment contains CR or LF")]
    InvalidComment,
}

/// An event to write, built field by field; [`OutgoingEvent::encode`]
/// writes it.
///
/// Each field is optional. `data` is split at every CRLF, CR or LF into
/// several `data` lines, so it decodes to the same bytes with line endings
/// turned into LF. `data(b"")` writes an empty `data:` line, i.e. an event
/// with empty data (an MCP priming event when given an id); no `data` at
/// all writes a block that dispatches nothing. An empty id resets the
/// client's last event id. `retry` is in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use = "an OutgoingEvent does nothing until encoded"]
pub struct OutgoingEvent<'a> {
    id: Option<&'a str>,
    event: Option<&'a str>,
    data: Option<&'a [u8]>,
    retry: Option<u64>,
}

impl<'a> OutgoingEvent<'a> {
    /// An event with no fields.
    pub const fn new() -> Self {
        Self {
            id: None,
            event: None,
            data: None,
            retry: None,
        }
    }

    /// Sets the `id` field.
    pub const fn id(mut self, id: &'a str) -> Self {
        self.id = Some(id);
        self
    }

    /// Sets the `event` field (the event type; empty means `message`).
    pub const fn event(mut self, name: &'a str) -> Self {
        self.event = Some(name);
        self
    }

    /// Sets the data.
    pub const fn data(mut self, data: &'a [u8]) -> Self {
        self.data = Some(data);
        self
    }

    /// Sets the `retry` field, in milliseconds.
    pub const fn retry(mut self, ms: u64) -> Self {
        self.retry = Some(ms);
        self
    }

    /// Appends the event, closed by a blank line, to `dst`. Writes nothing
    /// when no field is set or when a field is invalid.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        if self
            .id
            .is_some_and(|id| id.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)))
        {
            return Err(EncodeError::InvalidId);
        }
        if self.event.is_some_and(has_line_break) {
            return Err(EncodeError::InvalidEventName);
        }
        if self.id.is_none() && self.event.is_none() && self.data.is_none() && self.retry.is_none()
        {
            return Ok(());
        }
        let estimate = self.id.map_or(0, |id| id.len() + 5)
            + self.event.map_or(0, |e| e.len() + 8)
            + self.retry.map_or(0, |_| 28)
            + self.data.map_or(0, |d| d.len() + 7)
            + 1;
        dst.reserve(estimate);
        if let Some(id) = self.id {
            field(dst, b"id", id.as_bytes());
        }
        if let Some(name) = self.event {
            field(dst, b"event", name.as_bytes());
        }
        if let Some(ms) = self.retry {
            dst.put_slice(b"retry: ");
            put_decimal(dst, ms);
            dst.put_u8(b'\n');
        }
        if let Some(mut data) = self.data {
            loop {
                match find_line_end(data) {
                    Some(end) => {
                        field(dst, b"data", &data[..end]);
                        let crlf = data[end] == b'\r' && data.get(end + 1) == Some(&b'\n');
                        data = &data[end + 1 + usize::from(crlf)..];
                    }
                    None => {
                        field(dst, b"data", data);
                        break;
                    }
                }
            }
        }
        dst.put_u8(b'\n');
        Ok(())
    }
}

/// Appends a comment closed by a blank line (`: text\n\n`, or `:\n\n` when
/// `text` is empty): the usual keep-alive. Decoders skip it.
pub fn encode_comment(dst: &mut BytesMut, text: &str) -> Result<(), EncodeError> {
    if has_line_break(text) {
        return Err(EncodeError::InvalidComment);
    }
    dst.reserve(text.len() + 4);
    dst.put_u8(b':');
    if !text.is_empty() {
        dst.put_u8(b' ');
        dst.put_slice(text.as_bytes());
    }
    dst.put_slice(b"\n\n");
    Ok(())
}

fn has_line_break(s: &str) -> bool {
    s.bytes().any(|b| b == b'\r' || b == b'\n')
}

/// `name: value\n`; the space keeps a value that starts with a space
/// intact (a decoder drops one).
fn field(dst: &mut BytesMut, name: &[u8], value: &[u8]) {
    dst.put_slice(name);
    dst.put_u8(b':');
    if !value.is_empty() {
        dst.put_u8(b' ');
        dst.put_slice(value);
    }
    dst.put_u8(b'\n');
}

/// Writes `n` in decimal ASCII, without allocating (for ids and `retry:`
/// values written straight into an output buffer).
pub fn put_decimal(dst: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    dst.put_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(event: OutgoingEvent<'_>, want: &str) {
        let mut dst = BytesMut::new();
        event.encode(&mut dst).expect("valid event");
        assert_eq!(std::str::from_utf8(&dst).unwrap(), want);
    }

    #[test]
    fn fields_in_order() {
        check(
            OutgoingEvent::new()
                .data(b"{}")
                .retry(3000)
                .event("message")
                .id("s1-42"),
            "id: s1-42\nevent: message\nretry: 3000\ndata: {}\n\n",
        );
    }

    #[test]
    fn data_is_split_at_every_line_ending() {
        check(
            OutgoingEvent::new().data(b"a\nb\r\nc\rd"),
            "data: a\ndata: b\ndata: c\ndata: d\n\n",
        );
        check(OutgoingEvent::new().data(b"a\n"), "data: a\ndata:\n\n");
        check(
            OutgoingEvent::new().data(b"\r\n\r"),
            "data:\ndata:\ndata:\n\n",
        );
    }

    #[test]
    fn priming_event_and_empty_values() {
        check(OutgoingEvent::new().id("p").data(b""), "id: p\ndata:\n\n");
        check(OutgoingEvent::new().id(""), "id:\n\n");
        check(OutgoingEvent::new().data(b" lead"), "data:  lead\n\n");
        check(OutgoingEvent::new().retry(0), "retry: 0\n\n");
        check(
            OutgoingEvent::new().retry(u64::MAX),
            "retry: 18446744073709551615\n\n",
        );
        check(OutgoingEvent::new(), "");
    }

    #[test]
    fn invalid_fields_are_refused_and_nothing_is_written() {
        let mut dst = BytesMut::new();
        for id in ["a\nb", "a\rb", "a\0b"] {
            let e = OutgoingEvent::new().id(id).data(b"x");
            assert_eq!(e.encode(&mut dst), Err(EncodeError::InvalidId));
        }
        let e = OutgoingEvent::new().event("a\r").data(b"x");
        assert_eq!(e.encode(&mut dst), Err(EncodeError::InvalidEventName));
        assert_eq!(
            encode_comment(&mut dst, "a\nb"),
            Err(EncodeError::InvalidComment)
        );
        assert!(dst.is_empty());
    }

    #[test]
    fn comments() {
        let mut dst = BytesMut::new();
        encode_comment(&mut dst, "").unwrap();
        encode_comment(&mut dst, "keep-alive").unwrap();
        assert_eq!(&dst[..], b":\n\n: keep-alive\n\n");
    }
}

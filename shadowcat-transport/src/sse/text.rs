//! [`Utf8Bytes`]: a UTF-8 string backed by [`Bytes`], so the decoder can
//! hand out event ids and names that share the input buffer.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

/// An immutable UTF-8 string backed by [`Bytes`]: cloning and slicing
/// share the buffer instead of copying it.
///
/// Event ids and event names decoded from a stream are `Utf8Bytes` that
/// point into the received chunk, so tracking an id costs no allocation.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// An empty string.
    pub const fn new() -> Self {
        Self(Bytes::new())
    }

    /// Wraps a static string without copying it.
    pub const fn from_static(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// Wraps `bytes` if they are valid UTF-8, else hands them back.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, Bytes> {
        match std::str::from_utf8(&bytes) {
            Ok(_) => Ok(Self(bytes)),
            Err(_) => Err(bytes),
        }
    }

    /// Wraps `bytes`, replacing invalid UTF-8 sequences with U+FFFD as the
    /// WHATWG decoder does. Valid input is not copied.
    pub fn from_utf8_lossy(bytes: Bytes) -> Self {
        match Self::from_utf8(bytes) {
            Ok(s) => s,
            Err(bytes) => Self(Bytes::from(
                String::from_utf8_lossy(&bytes).into_owned().into_bytes(),
            )),
        }
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        // Every constructor checks UTF-8, so this cannot fail; the check is
        // repeated because the crate forbids `unsafe` (ids are short).
        std::str::from_utf8(&self.0).expect("Utf8Bytes holds UTF-8 by construction")
    }

    /// The UTF-8 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The underlying buffer.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Utf8Bytes {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Utf8Bytes {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<String> for Utf8Bytes {
    fn from(s: String) -> Self {
        Self(Bytes::from(s.into_bytes()))
    }
}

impl From<&str> for Utf8Bytes {
    fn from(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_utf8_shares_the_buffer() {
        let buf = Bytes::from_static("héllo".as_bytes());
        let s = Utf8Bytes::from_utf8_lossy(buf.clone());
        assert_eq!(s.as_str(), "héllo");
        assert_eq!(s.as_bytes().as_ptr(), buf.as_ptr());
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let s = Utf8Bytes::from_utf8_lossy(Bytes::from_static(b"a\xffb"));
        assert_eq!(s, "a\u{fffd}b");
        assert!(Utf8Bytes::from_utf8(Bytes::from_static(b"\xc3")).is_err());
    }
}

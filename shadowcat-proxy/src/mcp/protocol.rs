//! The MCP protocol revisions the proxy speaks.

use std::fmt;

/// An MCP protocol revision of the Streamable HTTP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    /// 2025-03-26: sessions, batches allowed.
    V2025_03_26,
    /// 2025-06-18: sessions, `MCP-Protocol-Version` header, no batches.
    V2025_06_18,
    /// 2025-11-25: as 2025-06-18, plus priming events and `retry:`.
    V2025_11_25,
    /// 2026-07-28: stateless; no sessions, no GET stream, POST only.
    V2026_07_28,
}

impl ProtocolVersion {
    /// Every revision, oldest first.
    pub const ALL: [ProtocolVersion; 4] = [
        ProtocolVersion::V2025_03_26,
        ProtocolVersion::V2025_06_18,
        ProtocolVersion::V2025_11_25,
        ProtocolVersion::V2026_07_28,
    ];

    /// What a request without `MCP-Protocol-Version` is assumed to speak.
    pub const ASSUMED: ProtocolVersion = ProtocolVersion::V2025_03_26;

    /// The revision named `s`, if the proxy supports it.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The revision's name, e.g. `2025-11-25`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolVersion::V2025_03_26 => "2025-03-26",
            ProtocolVersion::V2025_06_18 => "2025-06-18",
            ProtocolVersion::V2025_11_25 => "2025-11-25",
            ProtocolVersion::V2026_07_28 => "2026-07-28",
        }
    }

    /// True for the stateless revision (no sessions, POST only).
    pub fn is_stateless(self) -> bool {
        self == ProtocolVersion::V2026_07_28
    }

    /// True when JSON-RPC batch arrays are allowed.
    pub fn allows_batch(self) -> bool {
        self == ProtocolVersion::V2025_03_26
    }

    /// The list of supported revisions, for error messages.
    pub fn supported_list() -> &'static str {
        "2025-03-26, 2025-06-18, 2025-11-25, 2026-07-28"
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rules() {
        for v in ProtocolVersion::ALL {
            assert_eq!(ProtocolVersion::parse(v.as_str()), Some(v));
        }
        assert_eq!(ProtocolVersion::parse("2024-11-05"), None);
        assert_eq!(ProtocolVersion::parse("2025-06-18 "), None);
        assert!(ProtocolVersion::V2025_03_26.allows_batch());
        assert!(!ProtocolVersion::V2025_11_25.allows_batch());
        assert!(ProtocolVersion::V2026_07_28.is_stateless());
        assert!(!ProtocolVersion::V2025_11_25.is_stateless());
    }
}

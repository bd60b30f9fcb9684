//! Passthrough: the upstream does its own OAuth. Its challenges come back
//! with `resource_metadata` pointing at the proxy's public URL, its
//! protected-resource metadata is relayed with `resource` rewritten, and
//! a session is bound to a keyed fingerprint of the credential that made
//! it (never the credential).

use http::HeaderValue;
use serde_json::Value;
use shadowcat_session::ResumeKey;

use crate::event_id::siphash::SipHasher24;

/// The binding of a session whose key is `key`, for the client's
/// `Authorization` (or none): a SipHash-2-4 of it under the session's own
/// secret key, so any instance sharing the store computes the same value
/// and the store never holds anything a token could be recovered from.
pub(crate) fn credential_binding(key: &ResumeKey, authorization: Option<&HeaderValue>) -> String {
    let mut h = SipHasher24::new(&key.0);
    h.write(b"shadowcat credential binding\0");
    match authorization {
        Some(v) => {
            h.write(&[1]);
            h.write(v.as_bytes());
        }
        None => h.write(&[0]),
    }
    format!("credential {:016x}", h.finish())
}

/// `challenge` (an upstream `WWW-Authenticate`) with its
/// `resource_metadata` replaced by `metadata_url`; unchanged when it has
/// none.
pub(crate) fn rewrite_challenge(challenge: &HeaderValue, metadata_url: &str) -> HeaderValue {
    let Ok(text) = challenge.to_str() else {
        return challenge.clone();
    };
    let lower = text.to_ascii_lowercase();
    let Some(at) = lower.find("resource_metadata=") else {
        return challenge.clone();
    };
    let value_start = at + "resource_metadata=".len();
    let rest = &text[value_start..];
    let value_len = if let Some(quoted) = rest.strip_prefix('"') {
        match quoted.find('"') {
            Some(end) => end + 2,
            None => rest.len(),
        }
    } else {
        rest.find([',', ' ']).unwrap_or(rest.len())
    };
    let out = format!(
        "{}\"{metadata_url}\"{}",
        &text[..value_start],
        &text[value_start + value_len..]
    );
    HeaderValue::from_str(&out).unwrap_or_else(|_| challenge.clone())
}

/// The upstream's protected-resource metadata with `resource` set to the
/// proxy's public URL.
pub(crate) fn rewrite_metadata(mut doc: Value, public_url: &str) -> Option<Value> {
    doc.as_object_mut()?
        .insert("resource".into(), Value::String(public_url.to_owned()));
    Some(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_point_at_the_proxy() {
        let up = HeaderValue::from_static(
            r#"Bearer error="invalid_token", resource_metadata="http://10.0.0.1:3000/.well-known/oauth-protected-resource/mcp", scope="read""#,
        );
        let out = rewrite_challenge(
            &up,
            "https://mcp.example/.well-known/oauth-protected-resource/mcp",
        );
        assert_eq!(
            out.to_str().unwrap(),
            r#"Bearer error="invalid_token", resource_metadata="https://mcp.example/.well-known/oauth-protected-resource/mcp", scope="read""#
        );
        let bare = HeaderValue::from_static("Bearer resource_metadata=http://x/y, scope=a");
        assert_eq!(
            rewrite_challenge(&bare, "https://p/m").to_str().unwrap(),
            r#"Bearer resource_metadata="https://p/m", scope=a"#
        );
        let none = HeaderValue::from_static(r#"Bearer realm="x""#);
        assert_eq!(rewrite_challenge(&none, "https://p/m"), none);
    }

    #[test]
    fn bindings_are_keyed_and_distinct() {
        let k1 = ResumeKey([1; 16]);
        let k2 = ResumeKey([2; 16]);
        let a = HeaderValue::from_static("Bearer a");
        let b = HeaderValue::from_static("Bearer b");
        assert_eq!(
            credential_binding(&k1, Some(&a)),
            credential_binding(&k1, Some(&a))
        );
        assert_ne!(
            credential_binding(&k1, Some(&a)),
            credential_binding(&k1, Some(&b))
        );
        assert_ne!(
            credential_binding(&k1, Some(&a)),
            credential_binding(&k2, Some(&a))
        );
        assert_ne!(
            credential_binding(&k1, None),
            credential_binding(&k1, Some(&a))
        );
        assert!(!credential_binding(&k1, Some(&a)).contains("Bearer"));
    }
}

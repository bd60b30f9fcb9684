//! Just enough JSON-RPC: classify a POSTed body without building a tree of
//! it, and write the error bodies the proxy answers with.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

/// JSON-RPC "parse error": the body is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC "invalid request": JSON, but not a JSON-RPC message.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC "method not found" (used for wrong HTTP method or path).
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC "internal error" (upstream trouble, timeouts).
pub const INTERNAL_ERROR: i64 = -32603;
/// Server error range: generic proxy-side rejection.
pub const SERVER_ERROR: i64 = -32000;
/// MCP 2026-07-28 `HeaderMismatch`: headers disagree with the body.
pub const HEADER_MISMATCH: i64 = -32020;

/// The `_meta` key that carries the protocol revision (2026-07-28).
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// What one message in a POST body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Has `method` and `id`: expects a response.
    Request,
    /// Has `method`, no `id`.
    Notification,
    /// Has `result` or `error`, and `id`.
    Response,
}

/// The parts of a JSON-RPC message the proxy looks at.
#[derive(Debug, Clone)]
pub struct MessageInfo {
    /// Request, notification or response.
    pub kind: Kind,
    /// `method`, for requests and notifications.
    pub method: Option<String>,
    /// `id`, if any.
    pub id: Option<Value>,
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]`.
    pub meta_version: Option<String>,
    /// `params.protocolVersion` (what an `initialize` asks for).
    pub requested_version: Option<String>,
    /// `params.name` (the tool of a `tools/call`, the prompt of a
    /// `prompts/get`), when it is a string.
    pub name: Option<String>,
}

/// A POST body, classified.
#[derive(Debug, Clone)]
pub enum Body {
    /// One message.
    Single(MessageInfo),
    /// A JSON-RPC batch (non-empty array).
    Batch(Vec<MessageInfo>),
}

impl Body {
    /// The messages, in order.
    pub fn messages(&self) -> &[MessageInfo] {
        match self {
            Body::Single(m) => std::slice::from_ref(m),
            Body::Batch(v) => v,
        }
    }

    /// True when the body is a single `initialize` request.
    pub fn is_initialize(&self) -> bool {
        matches!(self, Body::Single(m) if m.kind == Kind::Request && m.method.as_deref() == Some("initialize"))
    }

    /// True when every message is a request (something will answer).
    pub fn has_request(&self) -> bool {
        self.messages().iter().any(|m| m.kind == Kind::Request)
    }
}

#[derive(Deserialize)]
struct Wire {
    jsonrpc: Option<String>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    method: Option<String>,
    params: Option<WireParams>,
    result: Option<IgnoredAny>,
    error: Option<IgnoredAny>,
}

/// Deserializes a present field (even `null`) as `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct WireParams {
    #[serde(rename = "_meta")]
    meta: Option<WireMeta>,
    #[serde(rename = "protocolVersion")]
    protocol_version: Option<IgnoredOr<String>>,
    name: Option<IgnoredOr<String>>,
}

#[derive(Deserialize)]
struct WireMeta {
    #[serde(rename = "io.modelcontextprotocol/protocolVersion")]
    version: Option<IgnoredOr<String>>,
}

/// A value we want if it has the expected type, else ignore.
#[derive(Deserialize)]
#[serde(untagged)]
enum IgnoredOr<T> {
    Want(T),
    Other(IgnoredAny),
}

impl<T> IgnoredOr<T> {
    fn get(self) -> Option<T> {
        match self {
            IgnoredOr::Want(t) => Some(t),
            IgnoredOr::Other(_) => None,
        }
    }
}

/// Why a body is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not JSON at all.
    #[error("the body is not valid JSON: {0}")]
    Parse(String),
    /// JSON, but not a JSON-RPC 2.0 message.
    #[error("the body is not a JSON-RPC 2.0 message: {0}")]
    Invalid(Cow<'static, str>),
}

impl BodyError {
    /// The JSON-RPC error code for this rejection.
    pub fn code(&self) -> i64 {
        match self {
            BodyError::Parse(_) => PARSE_ERROR,
            BodyError::Invalid(_) => INVALID_REQUEST,
        }
    }
}

fn classify_err(e: serde_json::Error) -> BodyError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => BodyError::Parse(e.to_string()),
        Category::Data => BodyError::Invalid(Cow::Owned(e.to_string())),
    }
}

/// Classifies a POST body: one message or a batch.
pub fn parse_body(bytes: &[u8]) -> Result<Body, BodyError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'{') => {
            let w: Wire = serde_json::from_slice(bytes).map_err(classify_err)?;
            Ok(Body::Single(check(w)?))
        }
        Some(b'[') => {
            let ws: Vec<Wire> = serde_json::from_slice(bytes).map_err(classify_err)?;
            if ws.is_empty() {
                return Err(BodyError::Invalid("an empty batch array".into()));
            }
            let infos = ws.into_iter().map(check).collect::<Result<Vec<_>, _>>()?;
            Ok(Body::Batch(infos))
        }
        _ => match serde_json::from_slice::<IgnoredAny>(bytes) {
            Ok(_) => Err(BodyError::Invalid(
                "expected a JSON object (or, in 2025-03-26, an array)".into(),
            )),
            Err(e) => Err(classify_err(e)),
        },
    }
}

fn check(w: Wire) -> Result<MessageInfo, BodyError> {
    if w.jsonrpc.as_deref() != Some("2.0") {
        return Err(BodyError::Invalid(r#""jsonrpc" must be "2.0""#.into()));
    }
    let kind = match (&w.method, w.result.is_some() || w.error.is_some()) {
        (Some(_), false) if w.id.is_some() => Kind::Request,
        (Some(_), false) => Kind::Notification,
        (None, true) if w.id.is_some() => Kind::Response,
        (None, true) => return Err(BodyError::Invalid("a response without an \"id\"".into())),
        (Some(_), true) => {
            return Err(BodyError::Invalid(
                "a message with both \"method\" and \"result\"/\"error\"".into(),
            ));
        }
        (None, false) => {
            return Err(BodyError::Invalid(
                "neither \"method\" nor \"result\"/\"error\"".into(),
            ));
        }
    };
    if let Some(id) = &w.id
        && !(id.is_string()
            || id.is_i64()
            || id.is_u64()
            || (id.is_null() && kind == Kind::Response))
    {
        return Err(BodyError::Invalid(Cow::Owned(format!(
            "\"id\" must be a string or an integer (MCP), not {}",
            id_type(id)
        ))));
    }
    let (meta_version, requested_version, name) = match w.params {
        Some(p) => (
            p.meta.and_then(|m| m.version).and_then(IgnoredOr::get),
            p.protocol_version.and_then(IgnoredOr::get),
            p.name.and_then(IgnoredOr::get),
        ),
        None => (None, None, None),
    };
    Ok(MessageInfo {
        kind,
        method: w.method,
        id: w.id,
        meta_version,
        requested_version,
        name,
    })
}

/// An unusable id, for the error message (large ones by type only).
fn id_type(id: &Value) -> Cow<'static, str> {
    match id {
        Value::Number(n) => Cow::Owned(n.to_string()),
        Value::Bool(b) => Cow::Owned(b.to_string()),
        Value::Null => "null".into(),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// A JSON-RPC error response body: `{"jsonrpc":"2.0","id":…,"error":{…}}`.
pub fn error_body(id: Option<&Value>, code: i64, message: &str) -> Bytes {
    let v = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id.unwrap_or(&Value::Null),
        "error": { "code": code, "message": message },
    });
    Bytes::from(serde_json::to_vec(&v).expect("a JSON value serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_messages() {
        let b = parse_body(br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#).unwrap();
        assert!(b.is_initialize());
        assert_eq!(
            b.messages()[0].requested_version.as_deref(),
            Some("2025-06-18")
        );
        let b = parse_body(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(b.messages()[0].kind, Kind::Notification);
        assert!(!b.has_request());
        let b = parse_body(br#"{"jsonrpc":"2.0","id":"a","result":{}}"#).unwrap();
        assert_eq!(b.messages()[0].kind, Kind::Response);
        let b = parse_body(
            br#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"b"}]"#,
        )
        .unwrap();
        assert!(matches!(b, Body::Batch(ref v) if v.len() == 2));
        let b = parse_body(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
        )
        .unwrap();
        assert_eq!(b.messages()[0].meta_version.as_deref(), Some("2026-07-28"));
    }

    #[test]
    fn rejects_with_the_right_code() {
        let cases: &[(&[u8], i64)] = &[
            (b"{", PARSE_ERROR),
            (b"not json", PARSE_ERROR),
            (b"", PARSE_ERROR),
            (b"42", INVALID_REQUEST),
            (b"[]", INVALID_REQUEST),
            (br#"{"id":1,"method":"x"}"#, INVALID_REQUEST),
            (br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#, INVALID_REQUEST),
            (br#"{"jsonrpc":"2.0"}"#, INVALID_REQUEST),
            (
                br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
                INVALID_REQUEST,
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"x","result":1}"#,
                INVALID_REQUEST,
            ),
            (br#"{"jsonrpc":"2.0","method":7}"#, INVALID_REQUEST),
        ];
        for (body, code) in cases {
            let got = parse_body(body).expect_err(&String::from_utf8_lossy(body));
            assert_eq!(got.code(), *code, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn ids_are_strings_or_integers() {
        for id in [
            "1.5",
            "1.0",
            "1e3",
            "-0.5",
            "100000000000000000000",
            "true",
            "false",
        ] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
            let got = parse_body(body.as_bytes()).expect_err(&body);
            assert_eq!(got.code(), INVALID_REQUEST, "{body}");
            assert!(
                got.to_string().contains("must be a string or an integer"),
                "{body}: {got}"
            );
        }
        let got = parse_body(br#"{"jsonrpc":"2.0","id":true,"result":{}}"#).unwrap_err();
        assert_eq!(got.code(), INVALID_REQUEST);
        for id in [
            "0",
            "-7",
            "18446744073709551615",
            "-9223372036854775808",
            r#""7""#,
        ] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
            let b = parse_body(body.as_bytes()).expect(&body);
            assert_eq!(b.messages()[0].kind, Kind::Request, "{body}");
        }
        let b =
            parse_body(br#"{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"m"}}"#).unwrap();
        assert_eq!(b.messages()[0].kind, Kind::Response);
    }

    #[test]
    fn error_body_is_json_rpc() {
        let b = error_body(Some(&Value::from(3)), INVALID_REQUEST, "bad");
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["id"], 3);
        assert_eq!(v["error"]["code"], INVALID_REQUEST);
        assert_eq!(v["error"]["message"], "bad");
    }
}

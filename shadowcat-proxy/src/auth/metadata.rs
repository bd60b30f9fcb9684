//! Metadata: discovering the authorization server (RFC 8414, then OpenID
//! Connect discovery) and the protected-resource metadata (RFC 9728) the
//! proxy serves or, in passthrough, relays.

use http::Uri;
use serde_json::{Value, json};

use super::fetch::{FetchError, Fetcher};

/// The well-known prefix of protected-resource metadata (RFC 9728 §3).
pub(crate) const PRM_PREFIX: &str = "/.well-known/oauth-protected-resource";

/// What the proxy needs from the authorization server's metadata.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerMetadata {
    pub(crate) issuer: String,
    pub(crate) jwks_uri: Option<Uri>,
    pub(crate) introspection_endpoint: Option<Uri>,
    pub(crate) token_endpoint: Option<Uri>,
}

/// The discovery URLs of `issuer`, in the order they are tried: RFC 8414
/// inserts the well-known segment between host and path; OpenID Connect
/// discovery appends it to the issuer (and, for issuers with a path,
/// also in the RFC 8414 position).
pub(crate) fn discovery_urls(issuer: &str) -> Vec<String> {
    let issuer = issuer.trim_end_matches('/');
    let (origin, path) = split_origin(issuer);
    let mut urls = vec![format!(
        "{origin}/.well-known/oauth-authorization-server{path}"
    )];
    if path.is_empty() {
        urls.push(format!("{origin}/.well-known/openid-configuration"));
    } else {
        urls.push(format!("{origin}/.well-known/openid-configuration{path}"));
        urls.push(format!("{issuer}/.well-known/openid-configuration"));
    }
    urls
}

/// `scheme://authority` and the path (no trailing slash) of `url`.
pub(crate) fn split_origin(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => {
            let (o, p) = url.split_at(after_scheme + i);
            (o, p.trim_end_matches('/'))
        }
        None => (url, ""),
    }
}

/// The protected-resource metadata URL of `resource` (RFC 9728 §3.1): the
/// well-known prefix between its origin and its path.
pub(crate) fn prm_url(resource: &str) -> String {
    let (origin, path) = split_origin(resource);
    format!("{origin}{PRM_PREFIX}{path}")
}

/// Discovers `issuer`'s metadata; the document's `issuer` must be
/// `issuer` itself (RFC 8414 §3.3).
pub(crate) async fn discover(fetcher: &Fetcher, issuer: &str) -> Result<ServerMetadata, String> {
    let mut tried = Vec::new();
    for url in discovery_urls(issuer) {
        let Ok(uri) = url.parse::<Uri>() else {
            return Err(format!("the issuer {issuer:?} does not make a valid URL"));
        };
        match fetcher.get_json(&uri).await {
            Ok(doc) => return from_document(issuer, &url, &doc),
            Err(FetchError { reason, .. }) => tried.push(format!("{url}: {reason}")),
        }
    }
    Err(format!(
        "no authorization server metadata for issuer {issuer:?} ({})",
        tried.join("; ")
    ))
}

fn from_document(issuer: &str, url: &str, doc: &Value) -> Result<ServerMetadata, String> {
    let named = doc["issuer"].as_str().unwrap_or("");
    if named.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(format!(
            "the metadata at {url} names issuer {named:?}, not {issuer:?}; set --auth-issuer to the issuer exactly"
        ));
    }
    let uri = |key: &str| -> Result<Option<Uri>, String> {
        match doc[key].as_str() {
            None => Ok(None),
            Some(s) => s
                .parse::<Uri>()
                .map(Some)
                .map_err(|_| format!("{key} {s:?} in {url} is not a URL")),
        }
    };
    Ok(ServerMetadata {
        issuer: named.to_owned(),
        jwks_uri: uri("jwks_uri")?,
        introspection_endpoint: uri("introspection_endpoint")?,
        token_endpoint: uri("token_endpoint")?,
    })
}

/// The proxy's own protected-resource metadata document.
pub(crate) fn resource_document(
    resource: &str,
    issuer: &str,
    scopes_supported: &[String],
) -> Value {
    json!({
        "resource": resource,
        "authorization_servers": [issuer],
        "scopes_supported": scopes_supported,
        "bearer_methods_supported": ["header"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_url_forms() {
        assert_eq!(
            discovery_urls("https://as.example"),
            [
                "https://as.example/.well-known/oauth-authorization-server",
                "https://as.example/.well-known/openid-configuration",
            ]
        );
        assert_eq!(
            discovery_urls("https://as.example/tenant1/"),
            [
                "https://as.example/.well-known/oauth-authorization-server/tenant1",
                "https://as.example/.well-known/openid-configuration/tenant1",
                "https://as.example/tenant1/.well-known/openid-configuration",
            ]
        );
    }

    #[test]
    fn prm_urls() {
        assert_eq!(
            prm_url("http://127.0.0.1:8080/mcp"),
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            prm_url("https://h"),
            "https://h/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn issuer_must_match() {
        let doc = json!({"issuer": "https://other", "jwks_uri": "https://other/jwks"});
        assert!(from_document("https://as", "u", &doc).is_err());
        let doc = json!({"issuer": "https://as", "jwks_uri": "https://as/jwks"});
        let m = from_document("https://as/", "u", &doc).unwrap();
        assert_eq!(m.jwks_uri.unwrap().path(), "/jwks");
    }
}

//! The legacy HTTP+SSE (2024-11-05) scenarios of `cargo xtask interop`:
//! legacy clients in front of any upstream (`interop/ts/legacy-*.mjs`),
//! run through a real `shadowcat` binary like every other scenario.

use super::{Ctx, check_resumes, last_line, metric, metrics};

/// Shadowcat's legacy stream URL, from its MCP endpoint URL.
fn sse_url(mcp: &str) -> String {
    format!("{}/sse", mcp.trim_end_matches("/mcp"))
}

/// `node interop/ts/legacy-client.mjs CHECK URL`; returns its last line.
fn legacy_client(ctx: &mut Ctx, check: &str, url: &str) -> Result<String, String> {
    let mut cmd = ctx.node();
    cmd.arg(ctx.paths.file("ts/legacy-client.mjs"))
        .args([check, url]);
    let out = ctx.run(&format!("legacy-client-{check}"), cmd)?;
    Ok(last_line(&out))
}

/// The TS SDK's `SSEClientTransport` through Shadowcat's `/sse` against
/// the TS SDK server (Streamable HTTP): tools with progress, sampling and
/// elicitation answered by POST, resources, prompts.
pub(super) fn legacy_client_http(ctx: &mut Ctx) -> Result<String, String> {
    let upstream = ctx.ts_server()?;
    let proxy = ctx.shadowcat(&["--upstream", &upstream])?;
    legacy_client(ctx, "sdk-server", &sse_url(&proxy))
}

/// The TS SDK's `SSEClientTransport` through Shadowcat's `/sse` against
/// server-everything run as a stdio child (`--upstream-cmd`).
pub(super) fn legacy_client_stdio(ctx: &mut Ctx) -> Result<String, String> {
    let server = ctx
        .paths
        .module("@modelcontextprotocol/server-everything/dist/index.js");
    let proxy = ctx.shadowcat(&["--upstream-cmd", "--", "node", &server, "stdio"])?;
    legacy_client(ctx, "everything", &sse_url(&proxy))
}

/// The SDK's documented backwards-compatible client (as `mcp-remote`
/// does): Streamable HTTP first, SSE after a 4xx. Given Shadowcat's `/sse`
/// URL it falls back to the legacy transport; given `/mcp` it needs not.
pub(super) fn legacy_client_fallback(ctx: &mut Ctx) -> Result<String, String> {
    let upstream = ctx.ts_server()?;
    let proxy = ctx.shadowcat(&["--upstream", &upstream])?;
    let legacy = legacy_client(ctx, "fallback", &sse_url(&proxy))?;
    if !legacy.contains("connected with sse") {
        return Err(format!(
            "at /sse the client should fall back to SSE: {legacy}"
        ));
    }
    let modern = legacy_client(ctx, "fallback", &proxy)?;
    if !modern.contains("connected with streamable-http") {
        return Err(format!(
            "at /mcp the client should use Streamable HTTP: {modern}"
        ));
    }
    Ok("/sse: fell back to SSE; /mcp: Streamable HTTP".into())
}

/// A legacy client (the `eventsource` package) cut mid-call reconnects to
/// `/sse` with `Last-Event-ID`: every event once, in order, from
/// Shadowcat's replay buffer; the session goes on.
pub(super) fn legacy_client_resume(ctx: &mut Ctx) -> Result<String, String> {
    let upstream = ctx.ts_server_with(&["--no-event-store"])?;
    let port = super::free_port()?;
    let proxy = ctx.shadowcat_at("shadowcat", "memory", port, &["--upstream", &upstream])?;
    let out = legacy_client(ctx, "resume", &sse_url(&proxy.url))?;
    let resumed = metric(
        &metrics(proxy.admin)?,
        r#"shadowcat_legacy_streams_total{kind="resumed"}"#,
    );
    if resumed != 1.0 {
        return Err(format!(
            "one legacy resume expected, /metrics says {resumed}"
        ));
    }
    let resumes = check_resumes(proxy.admin, Some(1.0), Some(0.0))?;
    Ok(format!("{out}; {resumes}"))
}

/// `ts/legacy-server.mjs` (the SDK's `SSEServerTransport`: GET /sse, POST
/// /messages, nothing else); returns its SSE URL.
fn legacy_server(ctx: &mut Ctx) -> Result<String, String> {
    let port = super::free_port()?;
    let mut cmd = ctx.node();
    cmd.arg(ctx.paths.file("ts/legacy-server.mjs"))
        .arg(port.to_string());
    let index = ctx.spawn("legacy-server", cmd)?;
    ctx.wait_port(index, port)?;
    Ok(format!("http://127.0.0.1:{port}/sse"))
}

/// The SDK's Streamable HTTP client through Shadowcat (default `auto`)
/// in front of a legacy-only server: the initialize POST gets 405, the
/// GET probe finds the legacy stream, and the client gets a session,
/// progress, sampling and elicitation the server serves over SSE.
pub(super) fn legacy_server_ts_client(ctx: &mut Ctx) -> Result<String, String> {
    let upstream = legacy_server(ctx)?;
    let port = super::free_port()?;
    let proxy = ctx.shadowcat_at("shadowcat", "memory", port, &["--upstream", &upstream])?;
    let out = legacy_client(ctx, "modern", &proxy.url)?;
    let detected = metric(
        &metrics(proxy.admin)?,
        "shadowcat_legacy_upstream_detected_total",
    );
    if detected != 1.0 {
        return Err(format!(
            "auto should have found the legacy upstream once, /metrics says {detected}"
        ));
    }
    Ok(out)
}

/// The Python SDK client through Shadowcat (`--upstream-transport sse`)
/// in front of the legacy-only server.
pub(super) fn legacy_server_python(ctx: &mut Ctx) -> Result<String, String> {
    let upstream = legacy_server(ctx)?;
    let proxy = ctx.shadowcat(&["--upstream-transport", "sse", "--upstream", &upstream])?;
    let cmd = ctx.python("py/legacy_client.py", &[&proxy]);
    let out = ctx.run("python-legacy-client", cmd)?;
    Ok(last_line(&out))
}

/// The legacy server cuts its SSE connection while a call is in flight:
/// that call gets a JSON-RPC error naming the cause, Shadowcat
/// re-establishes the session upstream (initialize replayed), and the
/// next call works.
pub(super) fn legacy_server_drop(ctx: &mut Ctx) -> Result<String, String> {
    let upstream = legacy_server(ctx)?;
    let port = super::free_port()?;
    let proxy = ctx.shadowcat_at(
        "shadowcat",
        "memory",
        port,
        &["--upstream-transport", "sse", "--upstream", &upstream],
    )?;
    let out = legacy_client(ctx, "drop", &proxy.url)?;
    let text = metrics(proxy.admin)?;
    let drops = metric(&text, "shadowcat_legacy_upstream_drops_total");
    let again = metric(&text, "shadowcat_legacy_upstream_reestablished_total");
    if drops != 1.0 || again != 1.0 {
        return Err(format!(
            "one drop and one re-establishment expected, /metrics says {drops} and {again}"
        ));
    }
    Ok(out)
}

/// Legacy on both sides: the TS SDK's `SSEClientTransport` at Shadowcat's
/// `/sse` in front of the legacy-only server (auto-detected).
pub(super) fn legacy_both_ways(ctx: &mut Ctx) -> Result<String, String> {
    let upstream = legacy_server(ctx)?;
    let proxy = ctx.shadowcat(&["--upstream", &upstream])?;
    legacy_client(ctx, "both", &sse_url(&proxy))
}

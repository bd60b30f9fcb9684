//! The interop suite's TLS scenarios (rows in `interop::SCENARIOS`): the
//! TypeScript SDK server on Node's `https` behind Shadowcat's TLS
//! listener, the SDK client trusting the test CA over HTTP/1.1 and over
//! HTTP/2 (`ts/tls-fetch.mjs`: undici with `allowH2`), and the chaos
//! scenario with TLS on both sides. The certificates are written by the
//! `tls-certs` binary (`benches`), built once at set-up.

use std::path::PathBuf;
use std::process::Command;

use super::{
    CHAOS_STEPS, Ctx, chaos_seed, check_resumes, free_port, last_line, metric, metrics,
    upstream_resumes,
};

/// `cargo build -p benches --bin tls-certs`.
pub(super) fn build_cert_tool() -> Result<(), String> {
    let mut build = crate::cargo();
    build.args([
        "build",
        "--locked",
        "--package",
        "benches",
        "--bin",
        "tls-certs",
    ]);
    crate::step("build tls-certs", build)
}

/// The certificate files of one scenario.
struct Certs {
    ca: String,
    cert: String,
    key: String,
}

/// Writes a CA and a server certificate for 127.0.0.1 into the scenario's
/// folder.
fn certs(ctx: &mut Ctx) -> Result<Certs, String> {
    let tool = ctx.paths.shadowcat.with_file_name("tls-certs");
    let dir = ctx.dir.join("certs");
    let mut cmd = Command::new(tool);
    cmd.arg(&dir);
    ctx.run("tls-certs", cmd)?;
    let path = |name: &str| -> String { PathBuf::from(&dir).join(name).display().to_string() };
    Ok(Certs {
        ca: path("ca.pem"),
        cert: path("server.pem"),
        key: path("server.key"),
    })
}

/// The TS SDK server over HTTPS with `flags`; returns its URL.
fn ts_https_server(ctx: &mut Ctx, certs: &Certs, flags: &[&str]) -> Result<String, String> {
    let port = free_port()?;
    let mut cmd = ctx.node();
    cmd.arg(ctx.paths.file("ts/server.mjs"))
        .arg(port.to_string())
        .args(flags)
        .args(["--tls-cert", &certs.cert, "--tls-key", &certs.key]);
    let index = ctx.spawn("ts-server", cmd)?;
    ctx.wait_port(index, port)?;
    Ok(format!("https://127.0.0.1:{port}/mcp"))
}

/// Shadowcat with a TLS listener on `port` before the https `upstream`;
/// returns its admin port.
fn tls_shadowcat(ctx: &mut Ctx, certs: &Certs, port: u16, upstream: &str) -> Result<u16, String> {
    let args = [
        "--upstream",
        upstream,
        "--upstream-ca",
        &certs.ca,
        "--tls-cert",
        &certs.cert,
        "--tls-key",
        &certs.key,
    ];
    Ok(ctx.shadowcat_at("shadowcat", "memory", port, &args)?.admin)
}

/// `node --import ts/tls-fetch.mjs ts/client.mjs CHECK URL SETTINGS...`,
/// trusting the test CA, over HTTP/2 when `h2`.
fn tls_client(
    ctx: &Ctx,
    certs: &Certs,
    h2: bool,
    check: &str,
    url: &str,
    settings: &[&str],
) -> Command {
    let mut cmd = ctx.node();
    cmd.arg("--import")
        .arg(ctx.paths.file("ts/tls-fetch.mjs"))
        .arg(ctx.paths.file("ts/client.mjs"))
        .args([check, url])
        .args(settings)
        .env("INTEROP_TLS_CA", &certs.ca)
        .env("INTEROP_TLS_H2", if h2 { "1" } else { "0" });
    cmd
}

/// TLS connections Shadowcat served, by the protocol ALPN chose.
fn tls_connections(admin: u16) -> Result<(f64, f64), String> {
    let text = metrics(admin)?;
    Ok((
        metric(
            &text,
            r#"shadowcat_tls_connections_total{protocol="http/1.1"}"#,
        ),
        metric(&text, r#"shadowcat_tls_connections_total{protocol="h2"}"#),
    ))
}

fn sdk_over_tls(ctx: &mut Ctx, h2: bool) -> Result<String, String> {
    let certs = certs(ctx)?;
    let upstream = ts_https_server(ctx, &certs, &[])?;
    let port = free_port()?;
    let admin = tls_shadowcat(ctx, &certs, port, &upstream)?;
    let url = format!("https://127.0.0.1:{port}/mcp");
    let cmd = tls_client(ctx, &certs, h2, "sdk-server", &url, &[]);
    let out = ctx.run("ts-client-sdk-server", cmd)?;
    let (h1s, h2s) = tls_connections(admin)?;
    let ok = if h2 {
        h2s > 0.0
    } else {
        h1s > 0.0 && h2s == 0.0
    };
    if !ok {
        return Err(format!(
            "Shadowcat served {h1s} HTTP/1.1 and {h2s} HTTP/2 TLS connections; expected {}",
            if h2 { "HTTP/2" } else { "HTTP/1.1 only" }
        ));
    }
    Ok(format!(
        "{} ({h1s} HTTP/1.1, {h2s} HTTP/2 TLS connections)",
        last_line(&out)
    ))
}

/// The SDK client (HTTP/1.1, trusting the test CA) through Shadowcat's TLS
/// listener to the SDK server on Node's `https`.
pub(super) fn ts_sdk_tls_h1(ctx: &mut Ctx) -> Result<String, String> {
    sdk_over_tls(ctx, false)
}

/// The same over HTTP/2 (undici `allowH2`; ALPN picks h2).
pub(super) fn ts_sdk_tls_h2(ctx: &mut Ctx) -> Result<String, String> {
    sdk_over_tls(ctx, true)
}

/// `ts-sdk-no-eventstore-resume` over HTTP/2 and TLS both ways: the SDK
/// client's stream is cut after 10 events (its h2 stream aborted) and the
/// SDK resumes with GET + `Last-Event-ID`; Shadowcat serves it from its
/// buffer, exactly once, and the server (no event store) is never asked.
pub(super) fn ts_sdk_tls_h2_resume(ctx: &mut Ctx) -> Result<String, String> {
    let certs = certs(ctx)?;
    let upstream = ts_https_server(ctx, &certs, &["--no-event-store"])?;
    let port = free_port()?;
    let admin = tls_shadowcat(ctx, &certs, port, &upstream)?;
    let url = format!("https://127.0.0.1:{port}/mcp");
    let cmd = tls_client(
        ctx,
        &certs,
        true,
        "resume",
        &url,
        &["steps=40", "delayMs=5", "cutAfter=10"],
    );
    let out = ctx.run("ts-client-resume", cmd)?;
    let resumes = check_resumes(admin, Some(1.0), Some(0.0))?;
    let seen_upstream = upstream_resumes(ctx);
    if !seen_upstream.is_empty() {
        return Err(format!(
            "the upstream (no event store) was asked to resume: {seen_upstream:?}"
        ));
    }
    let (_, h2s) = tls_connections(admin)?;
    if h2s == 0.0 {
        return Err("Shadowcat served no HTTP/2 connection".into());
    }
    Ok(format!("{}; {resumes}; over HTTP/2", last_line(&out)))
}

/// `ts-sdk-chaos-no-eventstore` with TLS on both sides: the client trusts
/// the test CA and speaks TLS through the cutting relay (which cuts the
/// TLS connections) to Shadowcat's TLS listener; Shadowcat reaches the SDK
/// server (no event store) over https. 0 lost, 0 duplicated.
pub(super) fn ts_sdk_chaos_tls(ctx: &mut Ctx) -> Result<String, String> {
    let seed = chaos_seed()?;
    let certs = certs(ctx)?;
    let upstream = ts_https_server(ctx, &certs, &["--no-event-store"])?;
    let port = free_port()?;
    let admin = tls_shadowcat(ctx, &certs, port, &upstream)?;
    let relay = ctx.relay(port, seed)?.replace("http://", "https://");
    let steps = format!("steps={CHAOS_STEPS}");
    let cmd = tls_client(ctx, &certs, false, "chaos", &relay, &[&steps, "delayMs=1"]);
    let out = ctx.run("ts-client-chaos", cmd);
    let summary = super::chaos_summary(ctx, seed, "TLS both sides, ", out)?;
    let resumed = check_resumes(admin, None, Some(0.0)).map_err(|e| format!("{summary}: {e}"))?;
    let seen_upstream = upstream_resumes(ctx);
    if !seen_upstream.is_empty() {
        return Err(format!(
            "{summary}: the upstream (no event store) was asked to resume: {seen_upstream:?}"
        ));
    }
    let (h1s, _) = tls_connections(admin)?;
    Ok(format!("{summary}; {resumed}; {h1s} TLS connections"))
}

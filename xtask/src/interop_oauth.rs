//! The OAuth scenarios of `cargo xtask interop`: a real authorization
//! server (`oidc-provider`, `interop/oauth/as.mjs`), the TS SDK client
//! running its own OAuth flow (`oauth/client.mjs`), an SDK server that is
//! its own resource server (`oauth/rs-server.mjs`), and Shadowcat in
//! `oauth` and `passthrough` mode between them. `oauth/negative.mjs` holds
//! the negative cases. See `interop/README.md` for what each one proves.

use std::fs;

use serde_json::Value;

use super::{Ctx, free_port, last_line, metric, metrics};

/// The confidential clients oauth/as.mjs registers (test secrets).
const UPSTREAM_CLIENT: (&str, &str) = ("shadowcat-upstream", "upstream-secret");
const INTROSPECTION_CLIENT: (&str, &str) = ("shadowcat-introspect", "introspect-secret");
/// What Shadowcat sends upstream in the opaque scenario (`--upstream-bearer`).
const STATIC_UPSTREAM_BEARER: &str = "interop-static-upstream-token";
/// Auth failure reasons the negative cases must each have counted.
const NEGATIVE_REASONS: &[&str] = &[
    "missing",
    "expired",
    "audience",
    "issuer",
    "signature",
    "alg",
    "scope",
    "binding",
    "unknown_key",
];

/// A counter in a Shadowcat's `/metrics` must be at least `min`.
fn at_least(text: &str, series: &str, min: f64) -> Result<f64, String> {
    let n = metric(text, series);
    if n < min {
        return Err(format!("{series} is {n}, expected at least {min}"));
    }
    Ok(n)
}

impl Ctx {
    /// `oauth/as.mjs` with `flags`; returns its issuer URL.
    fn auth_server(&mut self, flags: &[&str]) -> Result<String, String> {
        let port = free_port()?;
        let mut cmd = self.node();
        cmd.arg(self.paths.file("oauth/as.mjs"))
            .arg(port.to_string())
            .args(flags);
        let index = self.spawn("auth-server", cmd)?;
        self.wait_line(index, "listening ")?;
        Ok(format!("http://127.0.0.1:{port}"))
    }

    /// `oauth/rs-server.mjs` on `port`, trusting `issuer`, also answering
    /// for `audiences`; returns its URL. Its stdout (`rs-server.out`) has a
    /// `request` line per request it served.
    fn rs_server(&mut self, port: u16, issuer: &str, audiences: &[&str]) -> Result<String, String> {
        let mut cmd = self.node();
        cmd.arg(self.paths.file("oauth/rs-server.mjs"))
            .arg(port.to_string())
            .arg(issuer);
        for audience in audiences {
            cmd.args(["--audience", audience]);
        }
        let index = self.spawn("rs-server", cmd)?;
        self.wait_line(index, "listening ")?;
        Ok(format!("http://127.0.0.1:{port}/mcp"))
    }

    /// `oauth/client.mjs URL ARGS...`; returns its JSON summary line.
    fn oauth_client(&mut self, url: &str, args: &[&str]) -> Result<Value, String> {
        let mut cmd = self.node();
        cmd.arg(self.paths.file("oauth/client.mjs"))
            .arg(url)
            .args(args);
        let out = self.run("oauth-client", cmd)?;
        summary(&out)
    }

    /// `oauth/negative.mjs MODE URL ISSUER LOG`; returns its summary line.
    fn oauth_negative(
        &mut self,
        mode: &str,
        url: &str,
        issuer: &str,
        upstream: &str,
    ) -> Result<Value, String> {
        let log = self.out_path(upstream).display().to_string();
        let mut cmd = self.node();
        cmd.arg(self.paths.file("oauth/negative.mjs"))
            .args([mode, url, issuer, &log]);
        let out = self.run(&format!("oauth-negative-{mode}"), cmd)?;
        summary(&out)
    }

    /// Writes `text` to `<scenario dir>/<name>`; returns its path.
    fn write_file(&self, name: &str, text: &str) -> Result<String, String> {
        let path = self.dir.join(name);
        fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path.display().to_string())
    }

    /// The fingerprint the interop scripts print for `token` (first 12 hex
    /// digits of its SHA-256), computed by node like theirs.
    fn fingerprint(&mut self, token: &str) -> Result<String, String> {
        let mut cmd = self.node();
        cmd.args([
            "-e",
            "console.log(require('node:crypto').createHash('sha256').update(process.argv[1]).digest('hex').slice(0, 12))",
            token,
        ]);
        Ok(last_line(&self.run("fingerprint", cmd)?))
    }

    /// The `request` lines a server printed (`ts-server` with
    /// `--log-requests`, `rs-server`).
    fn request_lines(&self, server: &str) -> Vec<String> {
        fs::read_to_string(self.out_path(server))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("request "))
            .map(str::to_string)
            .collect()
    }

    /// A Shadowcat in `oauth` mode in front of `ts/server.mjs
    /// --log-requests`, its upstream credential a client-credentials token
    /// from the same authorization server, `extra` added to its config
    /// file; returns (its URL, admin port, the upstream's URL).
    fn oauth_mode_proxy(
        &mut self,
        issuer: &str,
        extra: &str,
    ) -> Result<(String, u16, String), String> {
        let upstream = self.ts_server_with(&["--log-requests"])?;
        let secret = self.write_file("upstream-secret", UPSTREAM_CLIENT.1)?;
        let config = self.write_file(
            "shadowcat.toml",
            &format!(
                "[auth.upstream]\ncredential = \"client_credentials\"\nclient_id = \"{}\"\n\
                 client_secret = \"file:{secret}\"\nscope = \"mcp\"\nresource = \"{upstream}\"\n{extra}",
                UPSTREAM_CLIENT.0
            ),
        )?;
        let port = free_port()?;
        let public = format!("http://127.0.0.1:{port}/mcp");
        let proxy = self.shadowcat_at(
            "shadowcat",
            "memory",
            port,
            &[
                "--config",
                &config,
                "--upstream",
                &upstream,
                "--auth-mode",
                "oauth",
                "--public-url",
                &public,
                "--auth-issuer",
                issuer,
                "--auth-required-scope",
                "mcp",
            ],
        )?;
        Ok((proxy.url, proxy.admin, upstream))
    }
}

/// The last line of a script's stdout as JSON with `"ok": true`.
fn summary(out: &str) -> Result<Value, String> {
    let line = last_line(out);
    let value: Value =
        serde_json::from_str(&line).map_err(|e| format!("summary line `{line}`: {e}"))?;
    if value["ok"] != Value::Bool(true) {
        return Err(format!("summary not ok: {line}"));
    }
    Ok(value)
}

fn field<'a>(summary: &'a Value, name: &str) -> &'a str {
    summary[name].as_str().unwrap_or("")
}

/// Fails unless `summary[name]` is `want`.
fn expect_field(summary: &Value, name: &str, want: &str) -> Result<(), String> {
    let got = field(summary, name);
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "client summary: {name} = `{got}`, expected `{want}`"
        ))
    }
}

/// The client's flow straight against the SDK resource server, no
/// Shadowcat: proves the authorization server, the resource server and the
/// client's flow before anything is proxied.
pub(super) fn oauth_direct(ctx: &mut Ctx) -> Result<String, String> {
    let rs_port = free_port()?;
    let rs_url = format!("http://127.0.0.1:{rs_port}/mcp");
    let issuer = ctx.auth_server(&["--opaque-resource", &rs_url])?;
    ctx.rs_server(rs_port, &issuer, &[])?;
    let summary = ctx.oauth_client(&rs_url, &[])?;
    expect_field(&summary, "token_format", "opaque")?;
    let token = field(&summary, "token");
    let served = ctx
        .request_lines("rs-server")
        .iter()
        .filter(|l| l.contains(&format!("auth={token} sub=alice ")))
        .count();
    if served < 4 {
        return Err(format!(
            "rs-server served {served} requests with the client's token, expected at least 4 (initialize, tools/list, 2 tools/call)"
        ));
    }
    Ok(format!(
        "registered, authorized (PKCE), token exchanged; {served} requests served with the client's token, {} progress",
        summary["progress"]
    ))
}

/// The client's flow through Shadowcat as the resource server (JWT access
/// tokens): discovery through Shadowcat's 401 and metadata; the upstream
/// (no auth of its own) gets Shadowcat's client-credentials token, never
/// the client's.
pub(super) fn oauth_mode(ctx: &mut Ctx) -> Result<String, String> {
    let issuer = ctx.auth_server(&[])?;
    let (url, admin, upstream) = ctx.oauth_mode_proxy(&issuer, "")?;
    let summary = ctx.oauth_client(&url, &[])?;
    expect_field(&summary, "token_format", "jwt")?;
    expect_field(&summary, "aud", &url)?;
    let upstream_seen = upstream_credentials(ctx, &client_tokens(&summary), &upstream)?;
    let text = metrics(admin)?;
    // The client's first request had no token.
    at_least(
        &text,
        r#"shadowcat_auth_failures_total{reason="missing"}"#,
        1.0,
    )?;
    Ok(format!(
        "JWT for {url}, {} progress; {upstream_seen}",
        summary["progress"]
    ))
}

/// The fingerprints of every token the client was given.
fn client_tokens(summary: &Value) -> Vec<String> {
    summary["tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `[auth.scope_map]` asks `admin` of `tools/call:count`: the client's
/// first token (scope `mcp`) gets 403 `insufficient_scope` for it, the SDK
/// authorizes again with the scope the challenge names (step-up), and the
/// call goes through with the new token, on the same session.
pub(super) fn oauth_scope_map(ctx: &mut Ctx) -> Result<String, String> {
    let issuer = ctx.auth_server(&[])?;
    let (url, admin, upstream) = ctx.oauth_mode_proxy(
        &issuer,
        "\n[auth.scope_map]\n\"tools/call:count\" = [\"admin\"]\n",
    )?;
    let summary = ctx.oauth_client(&url, &[])?;
    let scope = field(&summary, "scope");
    if summary["step_ups"] != 1 || !scope.split(' ').any(|s| s == "admin") {
        return Err(format!(
            "expected one step-up to a token with `admin`, got step_ups={} scope=`{scope}`",
            summary["step_ups"]
        ));
    }
    let tokens = client_tokens(&summary);
    if tokens.len() != 2 {
        return Err(format!(
            "expected two client tokens (before and after the step-up), got {tokens:?}"
        ));
    }
    let upstream_seen = upstream_credentials(ctx, &tokens, &upstream)?;
    let refused = at_least(
        &metrics(admin)?,
        r#"shadowcat_auth_failures_total{reason="scope"}"#,
        1.0,
    )?;
    Ok(format!(
        "count refused {refused}x for want of `admin`, the SDK stepped up to `{scope}`, {} progress; {upstream_seen}",
        summary["progress"]
    ))
}

/// Checks every request the upstream (`ts-server --log-requests`) saw
/// carried Shadowcat's client-credentials JWT for `upstream`, never one of
/// the client's tokens (fingerprints `client_tokens`).
fn upstream_credentials(
    ctx: &Ctx,
    client_tokens: &[String],
    upstream: &str,
) -> Result<String, String> {
    if client_tokens.is_empty() {
        return Err("the client summary lists no token".into());
    }
    let lines = ctx.request_lines("ts-server");
    if lines.len() < 4 {
        return Err(format!(
            "the upstream saw {} requests, expected at least 4: {lines:?}",
            lines.len()
        ));
    }
    let want = format!(" client={} aud={upstream} ", UPSTREAM_CLIENT.0);
    if let Some(bad) = lines.iter().find(|l| {
        client_tokens
            .iter()
            .any(|t| l.contains(&format!("auth={t} ")))
            || !l.contains(&want)
    }) {
        return Err(format!(
            "an upstream request did not carry Shadowcat's own token (client {}, aud {upstream}): {bad}",
            UPSTREAM_CLIENT.0
        ));
    }
    // One token fetched and reused, not one per request.
    let tokens: std::collections::BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l.split(" auth=").nth(1)?.split(' ').next())
        .collect();
    if tokens.len() != 1 {
        return Err(format!(
            "the upstream should see one client-credentials token reused, got {}: {tokens:?}",
            tokens.len()
        ));
    }
    Ok(format!(
        "the upstream saw {} requests, each with Shadowcat's one client-credentials token, none with the client's",
        lines.len()
    ))
}

/// The same flow with opaque access tokens: Shadowcat validates them by
/// introspection; the upstream gets the static `--upstream-bearer`.
pub(super) fn oauth_opaque(ctx: &mut Ctx) -> Result<String, String> {
    let issuer = ctx.auth_server(&["--opaque"])?;
    let upstream = ctx.ts_server_with(&["--log-requests"])?;
    let secret = ctx.write_file("introspection-secret", INTROSPECTION_CLIENT.1)?;
    let bearer = ctx.write_file("upstream-bearer", STATIC_UPSTREAM_BEARER)?;
    let port = free_port()?;
    let public = format!("http://127.0.0.1:{port}/mcp");
    let proxy = ctx.shadowcat_at(
        "shadowcat",
        "memory",
        port,
        &[
            "--upstream",
            &upstream,
            "--upstream-bearer",
            &format!("file:{bearer}"),
            "--auth-mode",
            "oauth",
            "--public-url",
            &public,
            "--auth-issuer",
            &issuer,
            "--auth-required-scope",
            "mcp",
            "--auth-introspection-client-id",
            INTROSPECTION_CLIENT.0,
            "--auth-introspection-client-secret",
            &format!("file:{secret}"),
        ],
    )?;
    let summary = ctx.oauth_client(&proxy.url, &[])?;
    expect_field(&summary, "token_format", "opaque")?;
    let client_token = field(&summary, "token");
    let lines = ctx.request_lines("ts-server");
    let static_fp = ctx.fingerprint(STATIC_UPSTREAM_BEARER)?;
    if lines.len() < 4
        || lines
            .iter()
            .any(|l| !l.contains(&format!("auth={static_fp} ")) || l.contains(client_token))
    {
        return Err(format!(
            "every upstream request should carry the static upstream bearer ({static_fp}), never the client's token ({client_token}): {lines:?}"
        ));
    }
    let text = metrics(proxy.admin)?;
    let active = at_least(
        &text,
        r#"shadowcat_auth_introspections_total{result="active"}"#,
        1.0,
    )?;
    let hits = at_least(
        &text,
        r#"shadowcat_auth_introspections_total{result="hit"}"#,
        1.0,
    )?;
    Ok(format!(
        "opaque token introspected ({active} asked, {hits} from the cache), {} progress; the upstream saw {} requests, each with the static bearer",
        summary["progress"],
        lines.len()
    ))
}

/// The negative cases against Shadowcat in `oauth` mode; every rejection
/// is counted by reason in `/metrics`.
pub(super) fn oauth_negative(ctx: &mut Ctx) -> Result<String, String> {
    let issuer = ctx.auth_server(&[])?;
    let (url, admin, _upstream) = ctx.oauth_mode_proxy(&issuer, "")?;
    let summary = ctx.oauth_negative("oauth", &url, &issuer, "ts-server")?;
    let text = metrics(admin)?;
    let counted: Vec<String> = NEGATIVE_REASONS
        .iter()
        .map(|r| {
            let n = metric(
                &text,
                &format!("shadowcat_auth_failures_total{{reason=\"{r}\"}}"),
            );
            format!("{r}={n}")
        })
        .collect();
    if let Some(zero) = counted.iter().find(|c| c.ends_with("=0")) {
        return Err(format!(
            "shadowcat_auth_failures_total has no `{zero}` failure: {}",
            counted.join(" ")
        ));
    }
    // The key set fetched again for the rotated key.
    at_least(
        &text,
        r#"shadowcat_auth_jwks_fetches_total{result="ok"}"#,
        1.0,
    )?;
    Ok(format!(
        "{} cases as expected ({} rejected, the upstream saw none of them); failures by reason: {}",
        summary["cases"],
        summary["rejected"],
        counted.join(" ")
    ))
}

/// The client's flow through Shadowcat in `passthrough` mode in front of
/// the SDK resource server: the upstream's 401 relayed with its metadata
/// rewritten to Shadowcat's public URL, the client's token forwarded; then
/// the passthrough negative cases (stolen session ids, rebinding).
pub(super) fn oauth_passthrough(ctx: &mut Ctx) -> Result<String, String> {
    let port = free_port()?;
    let public = format!("http://127.0.0.1:{port}/mcp");
    let issuer = ctx.auth_server(&["--opaque"])?;
    let rs_url = ctx.rs_server(free_port()?, &issuer, &[&public])?;
    ctx.shadowcat_at(
        "shadowcat",
        "memory",
        port,
        &[
            "--upstream",
            &rs_url,
            "--auth-mode",
            "passthrough",
            "--public-url",
            &public,
        ],
    )?;
    let summary = ctx.oauth_client(&public, &[])?;
    let token = field(&summary, "token");
    let forwarded = ctx
        .request_lines("rs-server")
        .iter()
        .filter(|l| l.contains(&format!("auth={token} ")))
        .count();
    if forwarded < 4 {
        return Err(format!(
            "the upstream served {forwarded} requests with the client's token, expected at least 4"
        ));
    }
    let negative = ctx.oauth_negative("passthrough", &public, &issuer, "rs-server")?;
    Ok(format!(
        "flow through Shadowcat's relayed 401 and rewritten metadata; {forwarded} requests with the client's token upstream; {} session and credential cases as expected ({} rejected)",
        negative["cases"], negative["rejected"]
    ))
}

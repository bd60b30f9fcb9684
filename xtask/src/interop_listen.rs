//! `python-sdk-listen`: a 2026-07-28 `subscriptions/listen` stream that
//! survives its server's death through Shadowcat.
//!
//! The Python SDK's own server (`interop/py/listen_server.py`) and client
//! (`interop/py/listen.py`). Directly, killing the server (SIGKILL) makes
//! the SDK client raise `SubscriptionLost`: the protocol has no resumption.
//! Through Shadowcat, the same kill and a restart on the same port: the
//! client's subscription stays open, Shadowcat listens again, the client
//! gets the refresh signal and then the restarted server's own
//! notification on the same subscription. Shadowcat's metrics must show
//! the drop and the re-listen, and no give-up.

use super::{Ctx, free_port, last_line, metric, metrics};

/// The Python SDK listen server on `port`, logging as `name`; returns its
/// index in the scenario's children.
fn listen_server(ctx: &mut Ctx, name: &str, port: u16) -> Result<usize, String> {
    let cmd = ctx.python("py/listen_server.py", &[&port.to_string()]);
    let index = ctx.spawn(name, cmd)?;
    ctx.wait_port(index, port)?;
    Ok(index)
}

/// Kills the server (SIGKILL: no graceful end of its streams).
fn kill(ctx: &mut Ctx, index: usize) {
    ctx.children[index].kill();
}

pub(super) fn python_sdk_listen(ctx: &mut Ctx) -> Result<String, String> {
    // Directly: the subscription is lost with the server.
    let port = free_port()?;
    let server = listen_server(ctx, "py-listen-server-direct", port)?;
    let url = format!("http://127.0.0.1:{port}/mcp");
    let cmd = ctx.python("py/listen.py", &[&url, "lost"]);
    let client = ctx.spawn("py-listen-direct", cmd)?;
    ctx.wait_line(client, "acked")?;
    kill(ctx, server);
    let direct = last_line(&ctx.finish(client)?);

    // Through Shadowcat: the same kill, then the server is back.
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}/mcp");
    let server = listen_server(ctx, "py-listen-server-1", port)?;
    let proxy = ctx.shadowcat_at("shadowcat", "memory", free_port()?, &["--upstream", &url])?;
    let cmd = ctx.python("py/listen.py", &[&proxy.url, "kept"]);
    let client = ctx.spawn("py-listen-kept", cmd)?;
    ctx.wait_line(client, "acked")?;
    kill(ctx, server);
    listen_server(ctx, "py-listen-server-2", port)?;
    let kept = last_line(&ctx.finish(client)?);

    let text = metrics(proxy.admin)?;
    let drops = metric(&text, r#"shadowcat_listen_drops_total{cause="broken"}"#)
        + metric(&text, r#"shadowcat_listen_drops_total{cause="ended"}"#);
    let relistens = metric(&text, "shadowcat_listen_relistens_total");
    let gave_up = metric(&text, r#"shadowcat_listen_gave_up_total{cause="attempts"}"#)
        + metric(&text, r#"shadowcat_listen_gave_up_total{cause="rejected"}"#);
    let signals = metric(&text, "shadowcat_listen_refresh_signals_total");
    if drops < 1.0 || relistens < 1.0 || gave_up != 0.0 || signals < 1.0 {
        return Err(format!(
            "Shadowcat's metrics say {drops} drops, {relistens} re-listens, {gave_up} give-ups, {signals} refresh signals; expected at least one drop, re-listen and signal and no give-up"
        ));
    }
    Ok(format!(
        "directly: {direct}; through Shadowcat: kept, {kept}; {drops} drop, {relistens} re-listens (server down meanwhile)"
    ))
}

//! `shadowcat sessions list|show|delete`: what an operator reaches for
//! when a client says its session is gone.
//!
//! They talk to the running proxy's admin API (address and token from the
//! same flags, variables and config file as `reverse`, or `--admin URL`).
//! Only when no proxy answers do they open the store directly; an error
//! then says which of the two was tried.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shadowcat_session::{Session, SessionId, SessionStore, now_millis};

use crate::cli::{LogFormat, SessionsArgs, SessionsCommand};
use crate::error::CliError;
use crate::logging;
use crate::settings::{AdminBind, FileConfig, admin_target};
use crate::store::StoreSpec;

/// How long to wait for the admin API to accept a connection and answer.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One session in a listing: the admin API's schema.
#[derive(Debug, Serialize, Deserialize)]
struct Row {
    id: String,
    upstream: String,
    protocol_version: String,
    created_at_ms: u64,
    last_activity_ms: u64,
    idle_ms: u64,
    persisted_streams: usize,
    cached_here: bool,
    live_streams: u32,
}

impl Row {
    fn from_store(s: &Session, now: u64) -> Self {
        Row {
            id: s.id.as_str().to_owned(),
            upstream: s.upstream.clone(),
            protocol_version: s.protocol_version.clone(),
            created_at_ms: s.created_at,
            last_activity_ms: s.last_activity,
            idle_ms: now.saturating_sub(s.last_activity),
            persisted_streams: s.streams.len(),
            cached_here: false,
            live_streams: 0,
        }
    }
}

#[derive(Debug, Deserialize)]
struct RowPage {
    sessions: Vec<Row>,
    next: Option<String>,
}

/// The running proxy's admin API.
struct AdminApi {
    addr: SocketAddr,
    token: Option<String>,
}

/// Why the admin API gave no answer.
enum Unreached {
    /// Nothing listens there (or it did not accept in time).
    NoProxy(String),
    /// It answered, with an error.
    Failed(CliError),
}

impl AdminApi {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One request; the status and JSON body.
    async fn call(&self, method: Method, path: &str) -> Result<(StatusCode, Value), Unreached> {
        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(self.addr))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(Unreached::NoProxy(e.to_string())),
                Err(_) => {
                    return Err(Unreached::NoProxy(format!(
                        "no connection within {CONNECT_TIMEOUT:?}"
                    )));
                }
            };
        let failed = |what: String| {
            Unreached::Failed(CliError::Config(format!(
                "the admin API at {} failed: {what}",
                self.url()
            )))
        };
        let exchange = async {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| failed(e.to_string()))?;
            tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, self.addr.to_string());
            if let Some(t) = &self.token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let req = req
                .body(Full::new(Bytes::new()))
                .map_err(|e| failed(e.to_string()))?;
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| failed(e.to_string()))?
                .to_bytes();
            let value: Value = serde_json::from_slice(&body)
                .map_err(|e| failed(format!("HTTP {status} with a body that is not JSON: {e}")))?;
            Ok((status, value))
        };
        let (status, value) = tokio::time::timeout(ADMIN_TIMEOUT, exchange)
            .await
            .map_err(|_| failed(format!("no answer within {ADMIN_TIMEOUT:?}")))??;
        if status == StatusCode::UNAUTHORIZED {
            return Err(Unreached::Failed(CliError::Config(format!(
                "the proxy at {} refused the admin token: pass --admin-token env:VAR or file:PATH with the token it was started with",
                self.url()
            ))));
        }
        Ok((status, value))
    }
}

/// The admin API to try, if any.
fn admin_api(args: &SessionsArgs, file: &FileConfig) -> Result<Option<AdminApi>, CliError> {
    let (bind, token) = admin_target(
        file,
        args.admin_bind.as_deref(),
        args.admin_token.as_deref(),
    )?;
    if let Some(url) = &args.admin {
        let hostport = url
            .strip_prefix("http://")
            .unwrap_or(url)
            .trim_end_matches('/');
        let addr = hostport.parse().map_err(|_| {
            CliError::Config(format!(
                "bad --admin {url:?}: expected http://HOST:PORT with a numeric address, e.g. http://127.0.0.1:9090"
            ))
        })?;
        return Ok(Some(AdminApi { addr, token }));
    }
    Ok(match bind {
        AdminBind::Off => None,
        AdminBind::At(addr) => Some(AdminApi { addr, token }),
    })
}

pub(crate) async fn run(
    args: SessionsArgs,
    file: &FileConfig,
    spec: &str,
    log_format: LogFormat,
) -> Result<ExitCode, CliError> {
    let _ = logging::init(log_format, None);
    let mut out = std::io::stdout().lock();
    let json = args.json;
    let tried = match admin_api(&args, file)? {
        Some(api) => match through_admin(&api, &args.command, json, &mut out).await {
            Ok(code) => return Ok(code),
            Err(Unreached::Failed(e)) => return Err(e),
            Err(Unreached::NoProxy(why)) => format!("no proxy answered at {} ({why})", api.url()),
        },
        None => "the admin listener is off".to_owned(),
    };
    let store = match StoreSpec::parse(spec)?.open(spec).await {
        Ok(store) => store,
        Err(e) => {
            let hint = if e.to_string().contains("already open") {
                "; a running proxy holds the file: point --admin at its admin address (http://HOST:PORT)"
            } else {
                ""
            };
            return Err(CliError::Config(format!(
                "{tried}, and the store could not be opened directly: {e}{hint}"
            )));
        }
    };
    tracing::debug!(%tried, store = spec, "using the store directly");
    through_store(store.as_ref(), spec, &args.command, json, &mut out).await
}

fn print_rows(out: &mut impl Write, rows: &[Row], json: bool) -> Result<(), CliError> {
    if json {
        let v = serde_json::json!({ "sessions": rows });
        writeln!(out, "{v:#}")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<34} {:<10} {:>8} {:>8} {:>7} {:>5}  upstream",
        "id", "version", "age_s", "idle_s", "streams", "live"
    )?;
    let now = now_millis();
    for r in rows {
        writeln!(
            out,
            "{:<34} {:<10} {:>8} {:>8} {:>7} {:>5}  {}",
            r.id,
            r.protocol_version,
            now.saturating_sub(r.created_at_ms) / 1000,
            r.idle_ms / 1000,
            r.persisted_streams,
            r.live_streams,
            r.upstream
        )?;
    }
    Ok(())
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn through_admin(
    api: &AdminApi,
    command: &SessionsCommand,
    json: bool,
    out: &mut impl Write,
) -> Result<ExitCode, Unreached> {
    let io = |e: std::io::Error| Unreached::Failed(CliError::Io(e));
    let bad = |status: StatusCode, v: &Value| {
        Unreached::Failed(CliError::Config(format!(
            "the admin API at {} answered {status}: {}",
            api.url(),
            v["error"].as_str().unwrap_or("(no message)")
        )))
    };
    match command {
        SessionsCommand::List {
            limit,
            min_idle_secs,
            upstream,
        } => {
            let mut rows = Vec::new();
            let mut after: Option<String> = None;
            while rows.len() < *limit {
                let mut path = format!("/sessions?limit={}", (limit - rows.len()).min(1000));
                if let Some(a) = &after {
                    path.push_str(&format!("&after={}", encode(a)));
                }
                if let Some(s) = min_idle_secs {
                    path.push_str(&format!("&min_idle_secs={s}"));
                }
                if let Some(u) = upstream {
                    path.push_str(&format!("&upstream={}", encode(u)));
                }
                let (status, v) = api.call(Method::GET, &path).await?;
                if !status.is_success() {
                    return Err(bad(status, &v));
                }
                let page: RowPage = serde_json::from_value(v).map_err(|e| {
                    Unreached::Failed(CliError::Config(format!(
                        "the admin API at {} sent a page this version cannot read: {e}",
                        api.url()
                    )))
                })?;
                let empty = page.sessions.is_empty();
                rows.extend(page.sessions);
                match page.next {
                    Some(n) if !empty => after = Some(n),
                    _ => break,
                }
            }
            rows.truncate(*limit);
            print_rows(out, &rows, json).map_err(Unreached::Failed)?;
            Ok(ExitCode::SUCCESS)
        }
        SessionsCommand::Show { id } | SessionsCommand::Delete { id } => {
            let delete = matches!(command, SessionsCommand::Delete { .. });
            let method = if delete { Method::DELETE } else { Method::GET };
            let (status, v) = api
                .call(method, &format!("/sessions/{}", encode(id)))
                .await?;
            if status == StatusCode::NOT_FOUND {
                eprintln!(
                    "shadowcat: no session {id} (asked the proxy at {})",
                    api.url()
                );
                return Ok(ExitCode::FAILURE);
            }
            if !status.is_success() {
                return Err(bad(status, &v));
            }
            if delete && !json {
                writeln!(out, "deleted {id}").map_err(io)?;
            } else {
                writeln!(out, "{v:#}").map_err(io)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn through_store(
    store: &dyn SessionStore,
    spec: &str,
    command: &SessionsCommand,
    json: bool,
    out: &mut impl Write,
) -> Result<ExitCode, CliError> {
    let err = |source| CliError::Store {
        spec: spec.to_owned(),
        source,
    };
    match command {
        SessionsCommand::List {
            limit,
            min_idle_secs,
            upstream,
        } => {
            let now = now_millis();
            let mut rows = Vec::new();
            let mut after: Option<SessionId> = None;
            while rows.len() < *limit {
                let page = store.list(after.as_ref(), 500).await.map_err(err)?;
                for s in &page.sessions {
                    let idle = now.saturating_sub(s.last_activity) / 1000;
                    if min_idle_secs.is_some_and(|m| idle < m)
                        || upstream.as_deref().is_some_and(|u| !s.upstream.contains(u))
                    {
                        continue;
                    }
                    if rows.len() < *limit {
                        rows.push(Row::from_store(s, now));
                    }
                }
                match page.next {
                    Some(next) if !page.sessions.is_empty() => after = Some(next),
                    _ => break,
                }
            }
            print_rows(out, &rows, json)?;
            Ok(ExitCode::SUCCESS)
        }
        SessionsCommand::Show { id } => {
            let id = parse_id(id)?;
            match store.get(&id).await.map_err(err)? {
                Some(s) => {
                    let mut v = serde_json::to_value(Row::from_store(&s, now_millis()))
                        .map_err(|e| CliError::Config(format!("cannot print the session: {e}")))?;
                    v["upstream_session"] = Value::Bool(s.upstream_session_id.is_some());
                    v["streams"] = s
                        .streams
                        .iter()
                        .map(|p| {
                            serde_json::json!({
                                "stream": p.stream.0,
                                "here": null,
                                "resume_point": {
                                    "upstream_event_id": p.point.upstream_event_id,
                                    "client_seq": p.point.client_seq,
                                },
                            })
                        })
                        .collect();
                    writeln!(out, "{v:#}")?;
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("shadowcat: no session {id} in {spec}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        SessionsCommand::Delete { id } => {
            let id = parse_id(id)?;
            if store.delete(&id).await.map_err(err)? {
                writeln!(
                    out,
                    "deleted {id} from the store (no proxy answered: nothing was ended upstream)"
                )?;
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("shadowcat: no session {id} in {spec}");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

fn parse_id(id: &str) -> Result<SessionId, CliError> {
    SessionId::parse(id).map_err(|e| CliError::Config(format!("{id:?}: {e}")))
}

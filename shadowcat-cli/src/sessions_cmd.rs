//! `shadowcat sessions list|show|delete`: what an operator reaches for
//! when a client says its session is gone.

use std::io::Write;
use std::process::ExitCode;

use shadowcat_session::{SessionId, now_millis};

use crate::cli::{LogFormat, SessionsCommand};
use crate::error::CliError;
use crate::logging;
use crate::store::StoreSpec;

pub(crate) async fn run(
    command: SessionsCommand,
    spec: &str,
    log_format: LogFormat,
) -> Result<ExitCode, CliError> {
    let store = StoreSpec::parse(spec)?.open(spec).await?;
    logging::init(log_format);
    let err = |source| CliError::Store {
        spec: spec.to_owned(),
        source,
    };
    let mut out = std::io::stdout().lock();
    match command {
        SessionsCommand::List { limit } => {
            let now = now_millis();
            writeln!(
                out,
                "{:<34} {:<10} {:>8} {:>8} {:>7}  upstream",
                "id", "version", "age_s", "idle_s", "streams"
            )?;
            let mut after: Option<SessionId> = None;
            let mut printed = 0;
            while printed < limit {
                let page = store
                    .list(after.as_ref(), (limit - printed).min(500))
                    .await
                    .map_err(err)?;
                for s in &page.sessions {
                    writeln!(
                        out,
                        "{:<34} {:<10} {:>8} {:>8} {:>7}  {}",
                        s.id.as_str(),
                        s.protocol_version,
                        now.saturating_sub(s.created_at) / 1000,
                        now.saturating_sub(s.last_activity) / 1000,
                        s.streams.len(),
                        s.upstream
                    )?;
                }
                printed += page.sessions.len();
                match page.next {
                    Some(next) if !page.sessions.is_empty() => after = Some(next),
                    _ => break,
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionsCommand::Show { id } => {
            let id = parse_id(&id)?;
            match store.get(&id).await.map_err(err)? {
                Some(s) => {
                    let json = serde_json::to_string_pretty(&s)
                        .map_err(|e| CliError::Config(format!("cannot print the session: {e}")))?;
                    writeln!(out, "{json}")?;
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("shadowcat: no session {id} in {spec}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        SessionsCommand::Delete { id } => {
            let id = parse_id(&id)?;
            if store.delete(&id).await.map_err(err)? {
                writeln!(out, "deleted {id}")?;
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

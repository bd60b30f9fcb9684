//! `mcp-stdio-fixture`: a small MCP server on stdio for tests and the load
//! harness. Newline-delimited JSON-RPC on stdin/stdout; exits 0 on stdin
//! EOF; one line on stderr at start and at exit.
//!
//! - `initialize` echoes the client's `protocolVersion` and offers tools;
//!   `notifications/*` are accepted silently; `ping` answers `{}`.
//! - `tools/list`: `echo`, `stream`, `ask`.
//! - `tools/call echo {text}` answers `text` as text content.
//! - `tools/call stream {count}` sends `count` `notifications/progress`
//!   (with `params._meta.progressToken`, else the request id as the token,
//!   `progress` 1..=count) and then the result `"streamed <count>"`.
//! - `tools/call ask {kind}` sends the client a request
//!   (`sampling/createMessage` for kind `sampling`, the default, or
//!   `roots/list` for `roots`), keeps serving other messages, and answers
//!   the call once the client responds, with the client's `result` as JSON
//!   text.
//! - `tools/call crash {code}` exits at once with `code` (default 3).
//! - `tools/call longline {len}` answers a text of `len` bytes.
//!
//! Other crates' tests find the binary at `target/<profile>/mcp-stdio-fixture`
//! (the parent of a test binary's `deps` directory) after
//! `cargo build -p benches --bin mcp-stdio-fixture`.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::process::ExitCode;

use serde_json::{Value, json};

/// Server name reported by `initialize`.
const NAME: &str = "mcp-stdio-fixture";
/// Answered when the client asks for no particular version.
const DEFAULT_VERSION: &str = "2025-06-18";

fn main() -> ExitCode {
    let _ = writeln!(io::stderr(), "{NAME}: started");
    match serve(io::stdin().lock(), io::stdout().lock()) {
        Ok(n) => {
            let _ = writeln!(io::stderr(), "{NAME}: stdin closed after {n} messages");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(io::stderr(), "{NAME}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The fixture's state: requests it sent the client, by their id.
#[derive(Debug, Default)]
struct Fixture {
    /// Our request id -> the id of the `tools/call` waiting for it.
    asked: HashMap<String, Value>,
    next_ask: u64,
}

fn serve(input: impl io::Read, output: impl Write) -> io::Result<u64> {
    let mut input = BufReader::with_capacity(64 * 1024, input);
    let mut out = BufWriter::with_capacity(64 * 1024, output);
    let mut fixture = Fixture::default();
    let mut line = Vec::new();
    let mut count = 0u64;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        count += 1;
        match serde_json::from_slice::<Value>(text) {
            Ok(msg) => fixture.handle(&msg, &mut out)?,
            Err(e) => write_msg(
                &mut out,
                &json!({"jsonrpc": "2.0", "id": null,
                        "error": {"code": -32700, "message": format!("parse error: {e}")}}),
            )?,
        }
        // Flush once everything already read is answered.
        if input.buffer().is_empty() {
            out.flush()?;
        }
    }
    out.flush()?;
    Ok(count)
}

fn write_msg(out: &mut impl Write, msg: &Value) -> io::Result<()> {
    serde_json::to_writer(&mut *out, msg)?;
    out.write_all(b"\n")
}

fn result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

fn error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn text_content(text: &str) -> Value {
    json!({"content": [{"type": "text", "text": text}]})
}

impl Fixture {
    fn handle(&mut self, msg: &Value, out: &mut impl Write) -> io::Result<()> {
        let id = msg.get("id");
        let Some(method) = msg.get("method").and_then(Value::as_str) else {
            // A response to one of our requests.
            return match id.map(id_key).and_then(|k| self.asked.remove(&k)) {
                Some(call) => {
                    let answer = msg.get("result").or_else(|| msg.get("error"));
                    let text = answer.map(Value::to_string).unwrap_or_default();
                    write_msg(out, &result(&call, text_content(&text)))
                }
                None => Ok(()),
            };
        };
        let Some(id) = id else {
            return Ok(()); // notifications: initialized, cancelled, …
        };
        let params = msg.get("params").unwrap_or(&Value::Null);
        let reply = match method {
            "initialize" => {
                let version = params
                    .get("protocolVersion")
                    .and_then(Value::as_str)
                    .unwrap_or(DEFAULT_VERSION);
                result(
                    id,
                    json!({
                        "protocolVersion": version,
                        "capabilities": {"tools": {"listChanged": false}},
                        "serverInfo": {"name": NAME, "version": env!("CARGO_PKG_VERSION")},
                    }),
                )
            }
            "ping" => result(id, json!({})),
            "tools/list" => result(id, tools()),
            "tools/call" => match self.call(id, params, out)? {
                Some(reply) => reply,
                None => return Ok(()),
            },
            _ => error(id, -32601, "method not found"),
        };
        write_msg(out, &reply)
    }

    /// Answers a tool call, or `None` when the answer comes later.
    fn call(
        &mut self,
        id: &Value,
        params: &Value,
        out: &mut impl Write,
    ) -> io::Result<Option<Value>> {
        let args = params.get("arguments").unwrap_or(&Value::Null);
        let reply = match params.get("name").and_then(Value::as_str) {
            Some("echo") => {
                let text = args.get("text").and_then(Value::as_str).unwrap_or("");
                result(id, text_content(text))
            }
            Some("stream") => {
                let count = args.get("count").and_then(Value::as_u64).unwrap_or(0);
                let token = params.pointer("/_meta/progressToken").unwrap_or(id).clone();
                for i in 1..=count {
                    write_msg(
                        out,
                        &json!({"jsonrpc": "2.0", "method": "notifications/progress",
                                "params": {"progressToken": token, "progress": i, "total": count}}),
                    )?;
                }
                result(id, text_content(&format!("streamed {count}")))
            }
            Some("ask") => {
                self.next_ask += 1;
                let ask_id = format!("fixture-{}", self.next_ask);
                let request = match args.get("kind").and_then(Value::as_str) {
                    Some("roots") => {
                        json!({"jsonrpc": "2.0", "id": ask_id, "method": "roots/list"})
                    }
                    _ => json!({"jsonrpc": "2.0", "id": ask_id, "method": "sampling/createMessage",
                                "params": {"messages": [{"role": "user",
                                           "content": {"type": "text", "text": "say hi"}}],
                                           "maxTokens": 16}}),
                };
                self.asked
                    .insert(id_key(&Value::String(ask_id)), id.clone());
                write_msg(out, &request)?;
                return Ok(None);
            }
            Some("crash") => {
                let code = args.get("code").and_then(Value::as_i64).unwrap_or(3);
                out.flush()?;
                std::process::exit(i32::try_from(code).unwrap_or(3));
            }
            Some("longline") => {
                let len = args.get("len").and_then(Value::as_u64).unwrap_or(1 << 20);
                let text = "x".repeat(usize::try_from(len).unwrap_or(1 << 20));
                result(id, text_content(&text))
            }
            _ => error(id, -32602, "unknown tool"),
        };
        Ok(Some(reply))
    }
}

/// A map key for a JSON-RPC id (string or number).
fn id_key(id: &Value) -> String {
    id.to_string()
}

fn tools() -> Value {
    json!({"tools": [
        {"name": "echo", "description": "Echoes `text`.",
         "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}},
        {"name": "stream", "description": "Sends `count` progress notifications, then answers.",
         "inputSchema": {"type": "object", "properties": {"count": {"type": "integer"}}}},
        {"name": "ask", "description": "Asks the client (sampling or roots) and answers with its reply.",
         "inputSchema": {"type": "object", "properties": {"kind": {"type": "string",
                         "enum": ["sampling", "roots"]}}}},
    ]})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &str) -> Vec<Value> {
        let mut out = Vec::new();
        serve(input.as_bytes(), &mut out).unwrap();
        out.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn stream_sends_count_notifications_then_the_result() {
        let out = run(concat!(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"stream","#,
            r#""arguments":{"count":3},"_meta":{"progressToken":"t"}}}"#,
            "\n"
        ));
        assert_eq!(out.len(), 4);
        for (i, n) in out[..3].iter().enumerate() {
            assert_eq!(n["method"], "notifications/progress");
            assert_eq!(n["params"]["progressToken"], "t");
            assert_eq!(n["params"]["progress"], i as u64 + 1);
        }
        assert_eq!(out[3]["id"], 1);
        assert_eq!(out[3]["result"]["content"][0]["text"], "streamed 3");
    }

    #[test]
    fn ask_waits_for_the_client_and_other_requests_still_answer() {
        let out = run(concat!(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"ask","arguments":{"kind":"roots"}}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":8,"method":"ping"}"#,
            "\r\n",
            r#"{"jsonrpc":"2.0","id":"fixture-1","result":{"roots":[]}}"#,
            "\n"
        ));
        assert_eq!(out.len(), 3);
        assert_eq!(out[0]["method"], "roots/list");
        assert_eq!(out[0]["id"], "fixture-1");
        assert_eq!(out[1]["id"], 8);
        assert_eq!(out[2]["id"], 7);
        assert_eq!(out[2]["result"]["content"][0]["text"], r#"{"roots":[]}"#);
    }
}

//! `relay_http` (`shadowcat forward stdio --upstream URL`) against an
//! upstream whose answer cannot be relayed: a JSON body over the limit, a
//! body cut short, an empty body. Each such request gets a JSON-RPC error
//! line naming the cause (never silence, which would leave the client
//! waiting for ever), and the failure is counted. A counting recorder is
//! installed for this test binary.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use shadowcat_proxy::forward::{HttpForwardConfig, relay_http};
use support::metrics::{count_labeled, counts};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Every wait in this file is bounded by this.
const WAIT: Duration = Duration::from_secs(10);

/// The relay's `max_response_bytes` here.
const LIMIT: usize = 256;

/// Reads one HTTP/1.1 request (head, then a `Content-Length` body).
async fn read_request(sock: &mut TcpStream) -> Option<Value> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    serde_json::from_slice(&buf[head_end..head_end + len]).ok()
}

/// An upstream that answers by request id: 1 with a JSON body over
/// [`LIMIT`], 2 with a body cut short, 3 with an empty body, anything else
/// with a small result. One request per connection.
async fn upstream(listener: TcpListener) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let Some(req) = read_request(&mut sock).await else {
                return;
            };
            let id = req["id"].clone();
            let head = |len: usize| {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
                )
            };
            let out = match id.as_u64() {
                Some(1) => {
                    let big =
                        json!({"jsonrpc":"2.0","id":1,"result":{"text":"x".repeat(4 * LIMIT)}});
                    let body = big.to_string();
                    format!("{}{body}", head(body.len()))
                }
                // Promises 100 bytes, sends 12, closes.
                Some(2) => format!("{}{{\"jsonrpc\":", head(100)),
                Some(3) => head(0),
                _ => {
                    let body = json!({"jsonrpc":"2.0","id":id,"result":{}}).to_string();
                    format!("{}{body}", head(body.len()))
                }
            };
            let _ = sock.write_all(out.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelayable_upstream_bodies_answer_the_request_with_an_error() {
    let _ = counts();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(upstream(listener));

    let mut config = HttpForwardConfig::new(url.parse().unwrap());
    config.max_response_bytes = LIMIT;
    config.response_timeout = WAIT;
    let (mut to_relay, client_in) = tokio::io::duplex(64 << 10);
    let (client_out, from_relay) = tokio::io::duplex(64 << 10);
    let relay = tokio::spawn(async move {
        relay_http(&config, client_in, client_out, std::future::pending()).await
    });

    let too_large = count_labeled("shadowcat_upstream_errors_total", "kind=body_too_large");
    let unreadable = count_labeled("shadowcat_upstream_errors_total", "kind=body_unreadable");
    let empty = count_labeled("shadowcat_upstream_errors_total", "kind=body_empty");
    for id in 1..=4 {
        let line = json!({"jsonrpc":"2.0","id":id,"method":"tools/list"});
        to_relay
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }
    let mut lines = BufReader::new(from_relay).lines();
    let mut answers = HashMap::new();
    while answers.len() < 4 {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no answer within {WAIT:?}; got {answers:?}"))
            .unwrap()
            .expect("the relay keeps its output open");
        let v: Value = serde_json::from_str(&line).unwrap();
        answers.insert(v["id"].as_u64().unwrap(), v);
    }

    let message = |id: u64| {
        let a = &answers[&id];
        assert_eq!(a["error"]["code"], -32000, "{a}");
        a["error"]["message"].as_str().unwrap().to_owned()
    };
    let m = message(1);
    assert!(m.contains(&format!("limit of {LIMIT} bytes")), "{m}");
    let m = message(2);
    assert!(m.contains("could not be read"), "{m}");
    let m = message(3);
    assert!(m.contains("empty body"), "{m}");
    assert_eq!(answers[&4]["result"], json!({}), "the control request");
    assert_eq!(
        count_labeled("shadowcat_upstream_errors_total", "kind=body_too_large"),
        too_large + 1
    );
    assert_eq!(
        count_labeled("shadowcat_upstream_errors_total", "kind=body_unreadable"),
        unreadable + 1
    );
    assert_eq!(
        count_labeled("shadowcat_upstream_errors_total", "kind=body_empty"),
        empty + 1
    );

    drop(to_relay);
    let report = tokio::time::timeout(WAIT, relay)
        .await
        .expect("the relay ends once the client closes its stdin")
        .unwrap()
        .unwrap();
    assert_eq!(report.from_client, 4);
    assert!(!report.shutdown);
}

//! Newline-delimited framing over real child pipes: `LineReader` and
//! `LineWriter` against `sh` and `cat`, plus chunking edge cases over an
//! in-memory reader that hands out one byte per read.
#![cfg(unix)]

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use shadowcat_transport::{
    ChildCommand, LineError, LineReader, LineWriter, StdioChild, StdioConfig,
};
use tokio::io::{AsyncRead, ReadBuf};

/// Every test finishes well within this.
const BOUND: Duration = Duration::from_secs(20);

fn sh(script: &str) -> ChildCommand {
    ChildCommand::new("sh").arg("-c").arg(script)
}

fn config(max_line_len: usize) -> StdioConfig {
    StdioConfig {
        max_line_len,
        ..StdioConfig::default()
    }
}

async fn read_all(child: &mut StdioChild) -> (Vec<Bytes>, Option<LineError>) {
    let mut out = child.take_stdout().unwrap();
    let mut lines = Vec::new();
    loop {
        match out.next_line().await {
            Ok(Some(line)) => lines.push(line),
            Ok(None) => return (lines, None),
            Err(e) => return (lines, Some(e)),
        }
    }
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { tokio::time::timeout(BOUND, f).await.expect("bounded") })
}

#[test]
fn lines_without_endings_lf_and_crlf() {
    run(async {
        let mut child = StdioChild::spawn(
            &sh(r#"printf 'one\ntwo\r\n\nthree\r\n{"a":1}\n'"#),
            &config(1024),
        )
        .unwrap();
        let (lines, err) = read_all(&mut child).await;
        assert!(err.is_none(), "{err:?}");
        let want: [&[u8]; 5] = [b"one", b"two", b"", b"three", br#"{"a":1}"#];
        assert_eq!(lines, want.map(Bytes::from_static));
        assert!(child.wait().await.unwrap().success());
    });
}

#[test]
fn cat_echoes_every_message_in_order() {
    run(async {
        let mut child = StdioChild::spawn(&ChildCommand::new("cat"), &config(1024)).unwrap();
        let mut input = child.take_stdin().unwrap();
        let mut output = child.take_stdout().unwrap();
        const N: usize = 10_000;
        let writer = async move {
            for i in 0..N {
                let msg = format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"ping"}}"#);
                if i % 100 == 99 {
                    input.send(msg.as_bytes()).await.unwrap();
                } else {
                    input.feed(msg.as_bytes()).await.unwrap();
                }
            }
            input.close().await.unwrap();
        };
        let reader = async move {
            let mut n = 0;
            while let Some(line) = output.next_line().await.unwrap() {
                let want = format!(r#"{{"jsonrpc":"2.0","id":{n},"method":"ping"}}"#);
                assert_eq!(line, want.as_bytes());
                n += 1;
            }
            n
        };
        let ((), n) = tokio::join!(writer, reader);
        assert_eq!(n, N);
        assert!(child.wait().await.unwrap().success(), "cat exits on EOF");
    });
}

#[test]
fn over_long_line_is_an_error_and_poisons_the_reader() {
    run(async {
        // 1000 bytes fit, 1001 do not, wherever the pipe splits them.
        let script = "head -c 1000 /dev/zero | tr '\\0' x; printf '\\r\\n'; \
                      head -c 1001 /dev/zero | tr '\\0' y; printf '\\nafter\\n'";
        let mut child = StdioChild::spawn(&sh(script), &config(1000)).unwrap();
        let mut out = child.take_stdout().unwrap();
        let first = out.next_line().await.unwrap().unwrap();
        assert_eq!(first.len(), 1000);
        assert!(first.iter().all(|&b| b == b'x'));
        let err = out.next_line().await.unwrap_err();
        assert!(matches!(err, LineError::TooLong { limit: 1000 }), "{err:?}");
        let again = out.next_line().await.unwrap_err();
        assert!(matches!(again, LineError::TooLong { .. }), "{again:?}");
        drop(out);
        child.kill().await.unwrap();
    });
}

#[test]
fn endless_line_is_refused_without_unbounded_memory() {
    run(async {
        // 64 MiB with no newline at all; the limit is 1 MiB.
        let mut child =
            StdioChild::spawn(&sh("head -c 67108864 /dev/zero"), &config(1 << 20)).unwrap();
        let (lines, err) = read_all(&mut child).await;
        assert!(lines.is_empty());
        assert!(matches!(err, Some(LineError::TooLong { limit }) if limit == 1 << 20));
        child.kill().await.unwrap();
    });
}

#[test]
fn unterminated_last_line_is_reported() {
    run(async {
        let mut child = StdioChild::spawn(&sh("printf 'whole\\nhalf'"), &config(64)).unwrap();
        let (lines, err) = read_all(&mut child).await;
        assert_eq!(lines, [Bytes::from_static(b"whole")]);
        assert!(
            matches!(err, Some(LineError::Unterminated { len: 4 })),
            "{err:?}"
        );
    });
}

#[test]
fn writer_refuses_raw_newlines_and_writes_nothing() {
    run(async {
        let mut child = StdioChild::spawn(&ChildCommand::new("cat"), &config(64)).unwrap();
        let mut input = child.take_stdin().unwrap();
        let err = input.send(b"{\"a\":\n1}").await.unwrap_err();
        assert!(matches!(err, LineError::EmbeddedNewline), "{err:?}");
        input.send(b"{\"a\":1}").await.unwrap();
        input.close().await.unwrap();
        let (lines, err) = read_all(&mut child).await;
        assert!(err.is_none());
        assert_eq!(lines, [Bytes::from_static(b"{\"a\":1}")]);
    });
}

/// Hands out one byte per read.
struct OneByte(&'static [u8]);

impl AsyncRead for OneByte {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some((&b, rest)) = self.0.split_first() {
            buf.put_slice(&[b]);
            self.0 = rest;
        }
        Poll::Ready(Ok(()))
    }
}

#[test]
fn byte_at_a_time_reads_frame_the_same() {
    run(async {
        let mut r = LineReader::new(OneByte(b"a\r\nbc\n\r\n1234\n12345\n"), 4);
        let mut got = Vec::new();
        let err = loop {
            match r.next_line().await {
                Ok(Some(line)) => got.push(line),
                Ok(None) => panic!("the 5-byte line must fail"),
                Err(e) => break e,
            }
        };
        let want: [&[u8]; 4] = [b"a", b"bc", b"", b"1234"];
        assert_eq!(got, want.map(Bytes::from_static));
        assert!(matches!(err, LineError::TooLong { limit: 4 }), "{err:?}");
    });
}

#[test]
fn next_buffered_drains_one_read_without_reading_again() {
    run(async {
        let mut r = LineReader::new(&b"x\ny\nz"[..], 16);
        assert_eq!(r.next_line().await.unwrap().unwrap(), &b"x"[..]);
        assert_eq!(r.next_buffered().unwrap().unwrap(), &b"y"[..]);
        assert!(r.next_buffered().is_none(), "z has no newline yet");
        let err = r.next_line().await.unwrap_err();
        assert!(matches!(err, LineError::Unterminated { len: 1 }), "{err:?}");
        assert!(r.next_line().await.unwrap().is_none());
        let mut w = LineWriter::new(Vec::new());
        w.feed(b"a").await.unwrap();
        w.send(b"b").await.unwrap();
        assert_eq!(w.get_ref().as_slice(), b"a\nb\n");
    });
}

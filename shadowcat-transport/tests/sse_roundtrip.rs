//! Property tests for the SSE codec: encode → split anywhere → decode gives
//! back the original events, and arbitrary bytes decode the same whatever
//! the chunking.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use shadowcat_transport::sse::{
    DecodeError, Decoder, DecoderLimits, OutgoingEvent, SseEvent, SseItem, Utf8Bytes,
};

type Items = Vec<Result<SseItem, DecodeError>>;

/// An event as the property tests generate it.
#[derive(Debug, Clone)]
struct Ev {
    id: Option<String>,
    event: Option<String>,
    data: Option<Vec<u8>>,
    retry: Option<u64>,
}

fn arb_event() -> impl Strategy<Value = Ev> {
    let data = prop_oneof![
        // JSON-like text with the odd line break.
        "[ -~\n]{0,40}".prop_map(String::into_bytes),
        // Any bytes, CR and CRLF included.
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    (
        proptest::option::of("[^\r\n\0]{0,12}"),
        proptest::option::of("[^\r\n]{0,8}"),
        proptest::option::of(data),
        proptest::option::weighted(0.2, any::<u64>()),
    )
        .prop_map(|(id, event, data, retry)| Ev {
            id,
            event,
            data,
            retry,
        })
}

/// `data` as a decoder returns it: CRLF and lone CR become LF.
fn normalise(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len());
    let mut bytes = data.iter().peekable();
    while let Some(&b) = bytes.next() {
        if b == b'\r' {
            bytes.next_if_eq(&&b'\n');
            out.push(b'\n');
        } else {
            out.push(b);
        }
    }
    Bytes::from(out)
}

/// What decoding the encoded `events` must yield.
fn expected(events: &[Ev]) -> Items {
    let mut last_id: Option<Utf8Bytes> = None;
    let mut out = Vec::new();
    for ev in events {
        if let Some(ms) = ev.retry {
            out.push(Ok(SseItem::Retry(ms)));
        }
        if let Some(id) = &ev.id {
            last_id = (!id.is_empty()).then(|| Utf8Bytes::from(id.as_str()));
        }
        match &ev.data {
            Some(data) => out.push(Ok(SseItem::Event(SseEvent {
                id: last_id.clone(),
                has_own_id: ev.id.is_some(),
                event: ev
                    .event
                    .as_deref()
                    .filter(|e| !e.is_empty())
                    .map(Utf8Bytes::from),
                data: normalise(data),
            }))),
            None if ev.id.is_some() => out.push(Ok(SseItem::IdOnly(last_id.clone()))),
            None => {}
        }
    }
    out
}

fn encode(events: &[Ev]) -> BytesMut {
    let mut dst = BytesMut::new();
    for ev in events {
        let mut out = OutgoingEvent::new();
        if let Some(id) = &ev.id {
            out = out.id(id);
        }
        if let Some(name) = &ev.event {
            out = out.event(name);
        }
        if let Some(data) = &ev.data {
            out = out.data(data);
        }
        if let Some(ms) = ev.retry {
            out = out.retry(ms);
        }
        out.encode(&mut dst).expect("generated fields are valid");
    }
    dst
}

/// Cuts `bytes` at `cuts` (taken modulo the length, any order).
fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut chunks = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for end in at.into_iter().chain([bytes.len()]) {
        chunks.push(Bytes::copy_from_slice(&bytes[start..end]));
        start = end;
    }
    chunks
}

fn decode(limits: DecoderLimits, chunks: &[Bytes]) -> (Items, bool) {
    let mut dec = Decoder::new(limits);
    let mut out = Vec::new();
    for chunk in chunks {
        dec.push(chunk.clone());
        out.extend(dec.by_ref());
    }
    (out, dec.finish())
}

/// Bytes that look like SSE often enough to reach every rule.
fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(&b"data:"[..]),
        Just(&b"data: "[..]),
        Just(&b"id:"[..]),
        Just(&b"id: "[..]),
        Just(&b"event:"[..]),
        Just(&b"retry:"[..]),
        Just(&b"retry: 12"[..]),
        Just(&b":"[..]),
        Just(&b" "[..]),
        Just(&b"\n"[..]),
        Just(&b"\r"[..]),
        Just(&b"\r\n"[..]),
        Just(&b"\n\n"[..]),
        Just(&b"\0"[..]),
        Just(&b"\xEF\xBB\xBF"[..]),
        Just(&b"\xEF\xBB"[..]),
        Just(&b"{\"jsonrpc\":\"2.0\"}"[..]),
        Just(&b"\xff"[..]),
    ];
    let piece = prop_oneof![
        3 => token.prop_map(<[u8]>::to_vec),
        1 => proptest::collection::vec(any::<u8>(), 0..6),
    ];
    proptest::collection::vec(piece, 0..60).prop_map(|pieces| pieces.concat())
}

fn small_limits() -> DecoderLimits {
    DecoderLimits {
        max_line_len: 24,
        max_event_size: 40,
        max_fields_per_event: 5,
    }
}

proptest! {
    #[test]
    fn encode_split_decode_round_trips(
        events in proptest::collection::vec(arb_event(), 0..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        bom in any::<bool>(),
    ) {
        let mut bytes = BytesMut::new();
        if bom {
            bytes.extend_from_slice(b"\xEF\xBB\xBF");
        }
        bytes.extend_from_slice(&encode(&events));
        let (items, truncated) = decode(DecoderLimits::default(), &split(&bytes, &cuts));
        prop_assert_eq!(items, expected(&events));
        prop_assert!(!truncated, "every encoded event is complete");
    }

    #[test]
    fn arbitrary_bytes_decode_the_same_in_any_chunking(
        stream in arb_stream(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        for limits in [DecoderLimits::default(), small_limits()] {
            let whole = decode(limits, &[Bytes::copy_from_slice(&stream)]);
            prop_assert_eq!(&decode(limits, &split(&stream, &cuts)), &whole);
            let bytewise: Vec<Bytes> = stream.chunks(1).map(Bytes::copy_from_slice).collect();
            prop_assert_eq!(&decode(limits, &bytewise), &whole);
            let errors = whole.0.iter().filter(|r| r.is_err()).count();
            prop_assert!(errors <= 1, "an error poisons the decoder");
        }
    }

    #[test]
    fn arbitrary_binary_never_panics_and_is_chunking_invariant(
        stream in proptest::collection::vec(any::<u8>(), 0..300),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let limits = small_limits();
        let whole = decode(limits, &[Bytes::copy_from_slice(&stream)]);
        prop_assert_eq!(decode(limits, &split(&stream, &cuts)), whole);
    }
}

#[test]
fn a_realistic_mcp_stream_round_trips() {
    let events = vec![
        Ev {
            id: Some("s0-0".into()),
            event: None,
            data: Some(Vec::new()),
            retry: Some(3000),
        },
        Ev {
            id: Some("s0-1".into()),
            event: Some("message".into()),
            data: Some(br#"{"jsonrpc":"2.0","method":"notifications/progress"}"#.to_vec()),
            retry: None,
        },
        Ev {
            id: Some("s0-2".into()),
            event: None,
            data: Some(b"{\"a\":\n1}".to_vec()),
            retry: None,
        },
    ];
    let bytes = encode(&events);
    let (items, truncated) = decode(DecoderLimits::default(), &[bytes.freeze()]);
    assert!(!truncated);
    assert_eq!(items.len(), 4);
    let Ok(SseItem::Event(priming)) = &items[1] else {
        panic!("expected the priming event, got {:?}", items[1]);
    };
    assert!(priming.is_priming());
    assert_eq!(priming.id.as_deref(), Some("s0-0"));
    assert_eq!(items, expected(&events));
}

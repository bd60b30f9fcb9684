//! Fuzz target for the SSE decoder: arbitrary bytes in arbitrary chunks
//! never panic, decode the same as in one chunk, stay within the limits,
//! and re-encoding what was decoded decodes to the same items.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use shadowcat_transport::sse::{
    DecodeError, Decoder, DecoderLimits, OutgoingEvent, SseItem, Utf8Bytes,
};

type Items = Vec<Result<SseItem, DecodeError>>;

fn decode(limits: DecoderLimits, chunks: &[&[u8]]) -> (Items, bool) {
    let mut dec = Decoder::new(limits);
    let mut out = Vec::new();
    for chunk in chunks {
        dec.push(Bytes::copy_from_slice(chunk));
        out.extend(dec.by_ref());
    }
    (out, dec.finish())
}

/// Writes `items` back as a stream.
fn encode(items: &Items) -> BytesMut {
    let mut dst = BytesMut::new();
    for item in items {
        let written = match item {
            Ok(SseItem::Event(e)) => {
                let mut out = OutgoingEvent::new().data(&e.data);
                if e.has_own_id {
                    out = out.id(e.id.as_ref().map_or("", Utf8Bytes::as_str));
                }
                if let Some(name) = &e.event {
                    out = out.event(name);
                }
                out.encode(&mut dst)
            }
            Ok(SseItem::IdOnly(id)) => OutgoingEvent::new()
                .id(id.as_ref().map_or("", Utf8Bytes::as_str))
                .encode(&mut dst),
            Ok(SseItem::Retry(ms)) => OutgoingEvent::new().retry(*ms).encode(&mut dst),
            Err(_) => break,
        };
        written.expect("decoded fields are always encodable");
    }
    dst
}

fuzz_target!(|input: &[u8]| {
    let Some((&[seed_a, seed_b, size], data)) = input.split_first_chunk::<3>() else {
        return;
    };
    let at = usize::from(u16::from_le_bytes([seed_a, seed_b])) % (data.len() + 1);
    let (head, tail) = data.split_at(at);
    let small: Vec<&[u8]> = data.chunks(usize::from(size % 16) + 1).collect();

    for limits in [
        DecoderLimits::default(),
        DecoderLimits {
            max_line_len: 48,
            max_event_size: 96,
            max_fields_per_event: 6,
        },
    ] {
        let whole = decode(limits, &[data]);
        assert_eq!(decode(limits, &[head, tail]), whole, "split at {at}");
        assert_eq!(decode(limits, &small), whole, "chunks of {}", size % 16 + 1);
        let errors = whole.0.iter().filter(|r| r.is_err()).count();
        assert!(errors <= 1, "an error poisons the decoder");
        if errors == 1 {
            assert!(whole.0.last().is_some_and(Result::is_err));
        }
        for item in &whole.0 {
            if let Ok(SseItem::Event(e)) = item {
                assert!(e.data.len() <= limits.max_event_size);
            }
        }
    }

    let (items, _) = decode(DecoderLimits::default(), &[data]);
    let ok: Items = items.iter().take_while(|r| r.is_ok()).cloned().collect();
    let again = encode(&ok);
    let (round, truncated) = decode(DecoderLimits::default(), &[&again]);
    assert_eq!(round, ok, "re-encoded stream decodes the same");
    assert!(!truncated);
});

//! The `handle-packed` export: the messages of a call decoded from one byte
//! list, and the results encoded into another, as `interface packed` in
//! `wit/handler.wit` lays them out.
//!
//! The host copies one buffer into the guest instead of entering it to
//! allocate every string and byte list of every message, and copies one
//! buffer back. Messages are decoded one at a time, just before they are
//! handled, so a call never holds more than one decoded message.

use sluice_wire::{self as wire, Reader};

use crate::{HandlerError, Header, Message, Output};

/// The host is trusted: a buffer that does not follow the encoding is a bug
/// there, and the call traps with what was wrong.
#[cold]
fn malformed(what: wire::Malformed) -> ! {
    panic!("sluice-guest: the host's packed messages are malformed: {what}")
}

fn text(bytes: &[u8]) -> Result<String, wire::Malformed> {
    if cfg!(any(debug_assertions, feature = "fuzzing")) {
        String::from_utf8(bytes.to_vec()).map_err(|_| wire::Malformed("a string is not UTF-8"))
    } else {
        // SAFETY: the host encodes only Rust strings, which are UTF-8. The
        // bindings generated for `handle` and `handle-batch` trust the
        // host's strings in the same way in release builds.
        Ok(unsafe { String::from_utf8_unchecked(bytes.to_vec()) })
    }
}

fn message(reader: &mut Reader<'_>) -> Result<Message, wire::Malformed> {
    let topic = text(reader.bytes()?)?;
    let partition = reader.i32()?;
    let offset = reader.i64()?;
    let attempt = reader.u32()?;
    let body = reader.body(wire::TIMESTAMP | wire::KEY | wire::VALUE)?;
    // A header is at least its two lengths.
    let mut headers = Vec::with_capacity(reader.capacity(body.headers, 8));
    for _ in 0..body.headers {
        let (key, value) = reader.header()?;
        headers.push(Header {
            key: text(key)?,
            value: value.to_vec(),
        });
    }
    Ok(Message {
        topic,
        partition,
        offset,
        timestamp: body.timestamp,
        key: body.key.map(<[u8]>::to_vec),
        value: body.value.map(<[u8]>::to_vec),
        headers,
        attempt,
    })
}

fn put_result(out: &mut Vec<u8>, result: &Result<Vec<Output>, HandlerError>) {
    match result {
        Ok(outputs) => {
            out.push(wire::OK);
            wire::put_len(out, outputs.len());
            for output in outputs {
                wire::put_bytes(out, output.topic.as_bytes());
                wire::put_body(
                    out,
                    None,
                    output.key.as_deref(),
                    output.value.as_deref(),
                    output
                        .headers
                        .iter()
                        .map(|h| (h.key.as_str(), h.value.as_slice())),
                );
            }
        }
        Err(HandlerError::Retryable(message)) => {
            out.push(wire::RETRYABLE);
            wire::put_bytes(out, message.as_bytes());
        }
        Err(HandlerError::Permanent(message)) => {
            out.push(wire::PERMANENT);
            wire::put_bytes(out, message.as_bytes());
        }
    }
}

/// Handles the encoded `messages` with `handle` in order, stopping after the
/// first error, and returns the encoded results.
pub(crate) fn handle_packed(
    messages: &[u8],
    handle: impl FnMut(Message) -> Result<Vec<Output>, HandlerError>,
) -> Vec<u8> {
    let mut reader = Reader::new(messages);
    let count = reader.u32().unwrap_or_else(|e| malformed(e));
    // Outputs are usually about as large as their messages.
    let mut out = Vec::with_capacity(messages.len() + 64);
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut handled = 0u32;
    // Each message is decoded only when the one before it has been handled.
    let decoded = (0..count).map(|_| message(&mut reader).unwrap_or_else(|e| malformed(e)));
    crate::handle_in_order(decoded, handle, |result| {
        put_result(&mut out, &result);
        handled += 1;
    });
    out[..4].copy_from_slice(&handled.to_le_bytes());
    out
}

/// Decodes every message of a `handle-packed` buffer, or says what is
/// malformed (where the export traps), for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub fn decode_all(messages: &[u8]) -> Result<Vec<Message>, wire::Malformed> {
    let mut reader = Reader::new(messages);
    let (count, capacity) = reader.count(17)?;
    let mut decoded = Vec::with_capacity(capacity);
    for _ in 0..count {
        decoded.push(message(&mut reader)?);
    }
    if !reader.rest().is_empty() {
        return Err(wire::Malformed("bytes follow the last message"));
    }
    Ok(decoded)
}

/// Encodes `results` as the export returns them, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub fn encode_all(results: &[Result<Vec<Output>, HandlerError>]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::put_len(&mut out, results.len());
    for result in results {
        put_result(&mut out, result);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One message as `wit/handler.wit` encodes it: topic "t", partition 2,
    /// offset 5, attempt 3, timestamp 7, key "k", no value, header h=v.
    #[rustfmt::skip]
    const ONE_MESSAGE: &[u8] = &[
        1, 0, 0, 0, // count
        1, 0, 0, 0, b't', // topic
        2, 0, 0, 0, // partition
        5, 0, 0, 0, 0, 0, 0, 0, // offset
        3, 0, 0, 0,   // attempt
        0b011, // timestamp and key present
        7, 0, 0, 0, 0, 0, 0, 0, // timestamp
        1, 0, 0, 0, b'k', // key
        1, 0, 0, 0, // one header
        1, 0, 0, 0, b'h', 1, 0, 0, 0, b'v',
    ];

    fn expected_message() -> Message {
        Message {
            topic: "t".into(),
            partition: 2,
            offset: 5,
            timestamp: Some(7),
            key: Some(b"k".to_vec()),
            value: None,
            headers: vec![Header {
                key: "h".into(),
                value: b"v".to_vec(),
            }],
            attempt: 3,
        }
    }

    #[test]
    fn a_message_is_decoded_as_the_contract_lays_it_out() {
        let mut seen = Vec::new();
        let out = handle_packed(ONE_MESSAGE, |msg| {
            seen.push(msg);
            Ok(vec![Output {
                topic: "o".into(),
                key: None,
                value: Some(b"V".to_vec()),
                headers: Vec::new(),
            }])
        });
        assert_eq!(seen, vec![expected_message()]);
        #[rustfmt::skip]
        let expected: &[u8] = &[
            1, 0, 0, 0, // one result
            wire::OK, 1, 0, 0, 0, // one output
            1, 0, 0, 0, b'o', // topic
            wire::VALUE, 1, 0, 0, 0, b'V', // value only
            0, 0, 0, 0, // no headers
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn handling_stops_after_the_first_error() {
        // Three copies of the message; the second fails.
        let mut three = ONE_MESSAGE.to_vec();
        three[0] = 3;
        for _ in 0..2 {
            three.extend_from_slice(&ONE_MESSAGE[4..]);
        }
        let mut calls = 0;
        let out = handle_packed(&three, |msg| {
            calls += 1;
            assert_eq!(msg, expected_message());
            match calls {
                1 => Ok(Vec::new()),
                _ => Err(HandlerError::Retryable("later".into())),
            }
        });
        assert_eq!(calls, 2, "the message after the failure is not handled");
        #[rustfmt::skip]
        let expected: &[u8] = &[
            2, 0, 0, 0, // two results
            wire::OK, 0, 0, 0, 0, // no outputs
            wire::RETRYABLE, 5, 0, 0, 0, b'l', b'a', b't', b'e', b'r',
        ];
        assert_eq!(out, expected);
    }

    /// A header count the buffer cannot hold is an error, not an
    /// allocation of that many headers (which would abort the guest).
    #[test]
    fn a_header_count_past_the_buffer_is_malformed() {
        let mut huge = ONE_MESSAGE[4..].to_vec();
        let at = huge.len() - 14;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut reader = Reader::new(&huge);
        assert!(message(&mut reader).is_err());
    }

    #[test]
    #[should_panic(expected = "a length runs past the end of the list")]
    fn a_truncated_buffer_traps_with_what_is_wrong() {
        handle_packed(&ONE_MESSAGE[..ONE_MESSAGE.len() - 1], |_| Ok(Vec::new()));
    }
}

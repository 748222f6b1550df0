//! The host's side of the `handle-packed` entry point: messages encoded into
//! one byte list, results decoded from another, as `interface packed` in
//! `wit/handler.wit` lays them out.
//!
//! The layout's pieces are in `sluice-wire`, shared with the guest SDK. The
//! results come from the guest, so decoding trusts nothing: a length past
//! the end, an unknown tag or presence bit, a string that is not UTF-8 or
//! bytes after the last result are errors that name what was wrong, and a
//! count is never used to size an allocation beyond what the buffer can
//! hold.

use sluice_wire::{self as wire, Reader};

use super::bindings::{HandlerError, Header, Message, Output};

/// What a batch call returns: one result per message handled.
pub(crate) type Results = Vec<Result<Vec<Output>, HandlerError>>;

/// Why a guest's encoded results could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("handle-packed returned results that do not follow the contract's encoding: {0}")]
pub(crate) struct Malformed(wire::Malformed);

impl From<wire::Malformed> for Malformed {
    fn from(m: wire::Malformed) -> Self {
        Malformed(m)
    }
}

/// Appends `messages`, encoded, to `out`.
pub(crate) fn encode(messages: &[Message], out: &mut Vec<u8>) {
    wire::put_len(out, messages.len());
    for m in messages {
        wire::put_bytes(out, m.topic.as_bytes());
        out.extend_from_slice(&m.partition.to_le_bytes());
        out.extend_from_slice(&m.offset.to_le_bytes());
        out.extend_from_slice(&m.attempt.to_le_bytes());
        wire::put_body(
            out,
            m.timestamp,
            m.key.as_deref(),
            m.value.as_deref(),
            m.headers
                .iter()
                .map(|h| (h.key.as_str(), h.value.as_slice())),
        );
    }
}

fn text(reader: &mut Reader<'_>) -> Result<String, Malformed> {
    Ok(reader.text()?.to_owned())
}

fn output(reader: &mut Reader<'_>) -> Result<Output, Malformed> {
    let topic = text(reader)?;
    let body = reader.body(wire::KEY | wire::VALUE)?;
    // A header is at least 8 bytes: two empty lengths.
    let mut headers = Vec::with_capacity(reader.capacity(body.headers, 8));
    for _ in 0..body.headers {
        headers.push(Header {
            key: text(reader)?,
            value: reader.bytes()?.to_vec(),
        });
    }
    Ok(Output {
        topic,
        key: body.key.map(<[u8]>::to_vec),
        value: body.value.map(<[u8]>::to_vec),
        headers,
    })
}

fn result(reader: &mut Reader<'_>) -> Result<Result<Vec<Output>, HandlerError>, Malformed> {
    Ok(match reader.u8()? {
        wire::OK => {
            // An output is at least 9 bytes: empty topic, presence, no headers.
            let (n, capacity) = reader.count(9)?;
            let mut outputs = Vec::with_capacity(capacity);
            for _ in 0..n {
                outputs.push(output(reader)?);
            }
            Ok(outputs)
        }
        wire::RETRYABLE => Err(HandlerError::Retryable(text(reader)?)),
        wire::PERMANENT => Err(HandlerError::Permanent(text(reader)?)),
        _ => {
            return Err(Malformed(wire::Malformed(
                "a result's tag is not 0, 1 or 2",
            )));
        }
    })
}

/// Decodes the results a guest returned.
pub(crate) fn decode(bytes: &[u8]) -> Result<Results, Malformed> {
    let mut reader = Reader::new(bytes);
    // A result is at least 5 bytes: its tag and a count or a length.
    let (n, capacity) = reader.count(5)?;
    let mut results = Vec::with_capacity(capacity);
    for _ in 0..n {
        results.push(result(&mut reader)?);
    }
    if !reader.rest().is_empty() {
        return Err(Malformed(wire::Malformed("bytes follow the last result")));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_encoded_as_the_contract_lays_it_out() {
        let with_key = Message {
            topic: "in".into(),
            partition: 1,
            offset: 258,
            timestamp: Some(-2),
            key: Some(b"x".to_vec()),
            value: None,
            headers: vec![Header {
                key: "n".into(),
                value: Vec::new(),
            }],
            attempt: 4,
        };
        let with_value = Message {
            timestamp: None,
            key: None,
            value: Some(b"yz".to_vec()),
            headers: Vec::new(),
            ..with_key.clone()
        };
        let mut out = vec![9];
        encode(&[with_key, with_value], &mut out);
        #[rustfmt::skip]
        let expected: &[u8] = &[
            9, // what was there before is kept
            2, 0, 0, 0, // two messages
            2, 0, 0, 0, b'i', b'n', // topic
            1, 0, 0, 0, // partition
            2, 1, 0, 0, 0, 0, 0, 0, // offset
            4, 0, 0, 0, // attempt
            wire::TIMESTAMP | wire::KEY,
            0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // timestamp
            1, 0, 0, 0, b'x', // key
            1, 0, 0, 0, // one header
            1, 0, 0, 0, b'n', 0, 0, 0, 0,
            // The second message.
            2, 0, 0, 0, b'i', b'n',
            1, 0, 0, 0,
            2, 1, 0, 0, 0, 0, 0, 0,
            4, 0, 0, 0,
            wire::VALUE,
            2, 0, 0, 0, b'y', b'z', // value
            0, 0, 0, 0, // no headers
        ];
        assert_eq!(out, expected);
    }

    #[rustfmt::skip]
    const TWO_RESULTS: &[u8] = &[
        2, 0, 0, 0, // two results
        wire::OK, 1, 0, 0, 0, // one output
        1, 0, 0, 0, b'o', // topic
        wire::KEY | wire::VALUE,
        0, 0, 0, 0, // an empty key
        2, 0, 0, 0, 0xff, 0x00, // a binary value
        1, 0, 0, 0, // one header
        1, 0, 0, 0, b'h', 0, 0, 0, 0,
        wire::PERMANENT, 3, 0, 0, 0, b'b', b'a', b'd',
    ];

    #[test]
    fn results_are_decoded_as_the_contract_lays_them_out() {
        let results = decode(TWO_RESULTS).expect("well formed");
        assert_eq!(
            results,
            vec![
                Ok(vec![Output {
                    topic: "o".into(),
                    key: Some(Vec::new()),
                    value: Some(vec![0xff, 0]),
                    headers: vec![Header {
                        key: "h".into(),
                        value: Vec::new(),
                    }],
                }]),
                Err(HandlerError::Permanent("bad".into())),
            ]
        );
        assert_eq!(
            decode(&[1, 0, 0, 0, wire::RETRYABLE, 0, 0, 0, 0]),
            Ok(vec![Err(HandlerError::Retryable(String::new()))])
        );
        assert_eq!(decode(&[0, 0, 0, 0]), Ok(Vec::new()));
    }

    #[test]
    fn malformed_results_are_refused_with_what_is_wrong() {
        let with = |at: usize, byte: u8| {
            let mut bytes = TWO_RESULTS.to_vec();
            bytes[at] = byte;
            decode(&bytes).expect_err("malformed")
        };
        for cut in 0..TWO_RESULTS.len() {
            assert_eq!(
                decode(&TWO_RESULTS[..cut]),
                Err(Malformed(wire::Malformed(
                    "a length runs past the end of the list"
                ))),
                "cut at {cut}"
            );
        }
        let mut longer = TWO_RESULTS.to_vec();
        longer.push(0);
        assert_eq!(
            decode(&longer),
            Err(Malformed(wire::Malformed("bytes follow the last result")))
        );
        assert_eq!(
            with(4, 3),
            Malformed(wire::Malformed("a result's tag is not 0, 1 or 2"))
        );
        assert_eq!(
            with(14, wire::KEY | wire::VALUE | wire::TIMESTAMP),
            Malformed(wire::Malformed(
                "a presence byte has bits set that are not allowed there"
            ))
        );
        assert_eq!(
            with(13, 0xff),
            Malformed(wire::Malformed(
                "a topic, header key or error message is not UTF-8"
            ))
        );
        // A count far beyond the buffer fails on the data, without
        // reserving room for it first.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff, wire::OK, 0, 0, 0, 0]),
            Err(Malformed(wire::Malformed(
                "a length runs past the end of the list"
            )))
        );
    }
}

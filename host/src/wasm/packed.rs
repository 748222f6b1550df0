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
use super::guest_io;
use super::outputs::{OutputLimitExceeded, OutputLimits, Tally};

/// What a `handle-batch` call returns: one result per message handled.
pub(crate) type Results = Vec<Result<Vec<Output>, HandlerError>>;

/// What decoding found for one message: its outputs, the handler's error,
/// or outputs that break the route's bounds.
pub(crate) type Decoded = Result<Vec<Output>, NoOutputs>;

/// Why one message's result gives no outputs to produce: the handler's own
/// error, or outputs that break a bound. It is that message's failure alone,
/// where [`Malformed`] is the whole buffer's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NoOutputs {
    /// The handler returned an error, its message already made inert
    /// (`guest_io::inert`).
    Handler(HandlerError),
    /// The outputs break one of the route's bounds; they were not built.
    Limit(OutputLimitExceeded),
}

/// Why a guest's encoded results could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("handle-packed returned results that do not follow the contract's encoding: {0}")]
pub(crate) struct Malformed(wire::Malformed);

impl From<wire::Malformed> for Malformed {
    fn from(m: wire::Malformed) -> Self {
        Malformed(m)
    }
}

/// Reading one message's outputs stopped: the buffer is malformed, or a
/// bound was broken.
enum Stop {
    Malformed(wire::Malformed),
    Limit(OutputLimitExceeded),
}

impl From<wire::Malformed> for Stop {
    fn from(m: wire::Malformed) -> Self {
        Stop::Malformed(m)
    }
}

impl From<OutputLimitExceeded> for Stop {
    fn from(e: OutputLimitExceeded) -> Self {
        Stop::Limit(e)
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

/// Reads one output, measuring it against `tally` before copying anything.
fn output(reader: &mut Reader<'_>, tally: &mut Tally<'_>) -> Result<Output, Stop> {
    let topic = reader.text()?;
    tally.topic(topic.len())?;
    let body = reader.body(wire::KEY | wire::VALUE)?;
    tally.headers(body.headers)?;
    // A first pass over the headers measures them; the second copies them.
    let headers_at = reader.clone();
    let mut size = body.key.map_or(0, <[u8]>::len) + body.value.map_or(0, <[u8]>::len);
    for _ in 0..body.headers {
        let (key, value) = reader.header()?;
        size = size.saturating_add(key.len() + value.len());
    }
    tally.output(size)?;
    let mut again = headers_at;
    // The count is within the route's bound, and every header was read.
    let mut headers = Vec::with_capacity(body.headers as usize);
    for _ in 0..body.headers {
        headers.push(Header {
            key: again.text()?.to_owned(),
            value: again.bytes()?.to_vec(),
        });
    }
    Ok(Output {
        topic: topic.to_owned(),
        key: body.key.map(<[u8]>::to_vec),
        value: body.value.map(<[u8]>::to_vec),
        headers,
    })
}

/// Reads the outputs of one message.
fn outputs(reader: &mut Reader<'_>, limits: &OutputLimits) -> Result<Vec<Output>, Stop> {
    let mut tally = Tally::new(limits);
    // An output is at least 9 bytes: empty topic, presence, no headers.
    let (n, capacity) = reader.count(9)?;
    tally.outputs(n)?;
    let mut outputs = Vec::with_capacity(capacity);
    for _ in 0..n {
        outputs.push(output(reader, &mut tally)?);
    }
    Ok(outputs)
}

/// A handler's error message, bounded as guest text is.
fn reason(reader: &mut Reader<'_>) -> Result<String, wire::Malformed> {
    Ok(guest_io::inert(reader.text()?))
}

fn result(reader: &mut Reader<'_>, limits: &OutputLimits) -> Result<Decoded, Malformed> {
    Ok(match reader.u8()? {
        wire::OK => match outputs(reader, limits) {
            Ok(outputs) => Ok(outputs),
            Err(Stop::Limit(e)) => Err(NoOutputs::Limit(e)),
            Err(Stop::Malformed(m)) => return Err(Malformed(m)),
        },
        wire::RETRYABLE => Err(NoOutputs::Handler(HandlerError::Retryable(reason(reader)?))),
        wire::PERMANENT => Err(NoOutputs::Handler(HandlerError::Permanent(reason(reader)?))),
        _ => {
            return Err(Malformed(wire::Malformed(
                "a result's tag is not 0, 1 or 2",
            )));
        }
    })
}

/// Decodes the results a guest returned for `expected` messages, checking
/// the outputs against `limits` as they are read. Reading stops after a
/// message whose outputs break a bound: the pipeline stops at the first
/// failure, so nothing behind it is built.
pub(crate) fn decode(
    bytes: &[u8],
    expected: usize,
    limits: &OutputLimits,
) -> Result<Vec<Decoded>, Malformed> {
    let mut reader = Reader::new(bytes);
    // A result is at least 5 bytes: its tag and a count or a length.
    let (n, capacity) = reader.count(5)?;
    if n as usize > expected {
        return Err(Malformed(wire::Malformed(
            "there are more results than messages",
        )));
    }
    let mut results = Vec::with_capacity(capacity);
    for _ in 0..n {
        let decoded = result(&mut reader, limits)?;
        let refused = matches!(decoded, Err(NoOutputs::Limit(_)));
        results.push(decoded);
        if refused {
            return Ok(results);
        }
    }
    if !reader.rest().is_empty() {
        return Err(Malformed(wire::Malformed("bytes follow the last result")));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes with room for any number of results, within the default
    /// bounds.
    fn decode(bytes: &[u8]) -> Result<Vec<Decoded>, Malformed> {
        super::decode(bytes, usize::MAX, &OutputLimits::default())
    }

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
                Err(NoOutputs::Handler(HandlerError::Permanent("bad".into()))),
            ]
        );
        assert_eq!(
            decode(&[1, 0, 0, 0, wire::RETRYABLE, 0, 0, 0, 0]),
            Ok(vec![Err(NoOutputs::Handler(HandlerError::Retryable(
                String::new()
            )))])
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

    /// One result with one output: topic `o`, a value of `value` bytes and
    /// `headers` one-byte headers.
    fn one_output(value: usize, headers: u32) -> Vec<u8> {
        let mut bytes = vec![1, 0, 0, 0, wire::OK, 1, 0, 0, 0];
        wire::put_bytes(&mut bytes, b"o");
        let header = [("h", &b"1"[..])];
        let headers = (0..headers).map(|_| header[0]);
        let value = vec![b'v'; value];
        let headers: Vec<_> = headers.collect();
        wire::put_body(&mut bytes, None, None, Some(&value), headers.into_iter());
        bytes
    }

    #[test]
    fn outputs_over_a_bound_are_refused_naming_it_before_they_are_built() {
        let limits = OutputLimits {
            max_outputs: 1,
            max_output_bytes: 100,
            max_output_headers: 2,
            max_returned_bytes: 1000,
        };
        let refused = |bytes: &[u8]| match super::decode(bytes, 1, &limits) {
            Ok(results) => match results.as_slice() {
                [Err(NoOutputs::Limit(e))] => Some((e.setting, e.value)),
                _ => None,
            },
            Err(_) => None,
        };
        assert_eq!(refused(&one_output(96, 2)), None, "within every bound");
        assert_eq!(refused(&one_output(100, 0)), None, "at the bound");
        assert_eq!(
            refused(&one_output(101, 0)),
            Some(("max_output_bytes", 101))
        );
        assert_eq!(refused(&one_output(1, 3)), Some(("max_output_headers", 3)));
        // A count is refused before the outputs it announces are read.
        let mut many = one_output(1, 0);
        many[5] = 0xff;
        assert_eq!(refused(&many), Some(("max_outputs", 255)));
    }

    /// Found by the `results` fuzz target: an output over two bounds was
    /// refused naming one through `handle-packed` and the other through
    /// `handle-batch`.
    #[test]
    fn both_entry_points_name_the_same_bound() {
        let limits = OutputLimits {
            max_outputs: 1,
            max_output_bytes: 100,
            max_output_headers: 0,
            max_returned_bytes: 0,
        };
        let named = |decoded: &[Decoded]| match decoded {
            [Err(NoOutputs::Limit(e))] => Some(e.setting),
            _ => None,
        };
        let packed = super::decode(&one_output(1, 1), 1, &limits).expect("well-formed");
        let output = Output {
            topic: "o".into(),
            key: None,
            value: Some(b"v".to_vec()),
            headers: vec![Header {
                key: "h".into(),
                value: b"1".to_vec(),
            }],
        };
        let batch = crate::wasm::invoke::batch_decoded(vec![Ok(vec![output])], 1, &limits);
        assert_eq!(named(&packed), Some("max_returned_bytes"));
        assert_eq!(named(&batch), named(&packed));
    }

    #[test]
    fn more_results_than_messages_are_malformed() {
        let two = [2, 0, 0, 0, wire::OK, 0, 0, 0, 0, wire::OK, 0, 0, 0, 0];
        assert_eq!(
            super::decode(&two, 1, &OutputLimits::default()),
            Err(Malformed(wire::Malformed(
                "there are more results than messages"
            )))
        );
        assert_eq!(
            super::decode(&two, 2, &OutputLimits::default()).map(|r| r.len()),
            Ok(2)
        );
    }

    #[test]
    fn a_handler_error_message_is_cut_and_made_inert() {
        let mut bytes = vec![1, 0, 0, 0, wire::PERMANENT];
        let text = format!("line\nforged{}", "x".repeat(5000));
        wire::put_bytes(&mut bytes, text.as_bytes());
        let results = decode(&bytes).expect("well formed");
        let Some(Err(NoOutputs::Handler(HandlerError::Permanent(message)))) = results.first()
        else {
            panic!("a permanent error: {results:?}");
        };
        assert!(message.starts_with("line\\nforged"), "{message}");
        assert!(message.len() < 1200 && message.contains("cut"), "{message}");
    }
}

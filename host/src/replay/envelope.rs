//! Reading a dead-letter record back: the JSON envelope written by
//! [`crate::pipeline::dlq`], decoded to the original message's exact bytes.
//!
//! Owns decoding only; a record that is not a valid envelope is described,
//! never a panic.

use base64::Engine as _;
use serde_json::{Map, Value};

use super::time::parse_rfc3339;
use crate::kafka::headers::RawHeader;

/// The header carrying how many times a message has been replayed.
pub const REPLAY_COUNT_HEADER: &str = "x-replay-count";
/// The header carrying when a message was replayed (ISO-8601 UTC).
pub const REPLAYED_AT_HEADER: &str = "x-replayed-at";
/// The header carrying the offset of the dead-letter record replayed.
pub const DLQ_OFFSET_HEADER: &str = "x-original-dlq-offset";
/// The header carrying the partition of the dead-letter record replayed.
pub const DLQ_PARTITION_HEADER: &str = "x-original-dlq-partition";

/// The headers a replay sets; copies of them in the original message are
/// replaced, not repeated.
pub const REPLAY_HEADERS: [&str; 4] = [
    REPLAY_COUNT_HEADER,
    REPLAYED_AT_HEADER,
    DLQ_OFFSET_HEADER,
    DLQ_PARTITION_HEADER,
];

/// A decoded dead-letter envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The topic the message was consumed from.
    pub original_topic: String,
    /// Its partition.
    pub original_partition: i32,
    /// Its offset.
    pub original_offset: i64,
    /// Its timestamp in milliseconds since the epoch, if it had one.
    pub original_timestamp: Option<i64>,
    /// Its key as the dead letter holds it: exact, unless
    /// [`Truncation::key`] says only a prefix was kept.
    pub key: Option<Vec<u8>>,
    /// Its value as the dead letter holds it: exact, unless
    /// [`Truncation::value`] says only a prefix was kept.
    pub value: Option<Vec<u8>>,
    /// Its headers, in order, with keys and values as bytes: exact, unless
    /// [`Truncation`] says some were left out or cut.
    pub headers: Vec<RawHeader>,
    /// What the writer cut to make the dead letter fit in a record.
    pub truncation: Truncation,
    /// Why it failed.
    pub failure_reason: String,
    /// When it failed, as written (ISO-8601 UTC).
    pub failure_timestamp: String,
    /// When it failed, in milliseconds since the epoch.
    pub failed_at_ms: i64,
    /// The correlation id of the failed handling.
    pub correlation_id: String,
    /// How many retries were made before giving up.
    pub retry_count: u64,
    /// The error type's name (`HandlerError`, ...).
    pub error_type: String,
    /// The module that handled it.
    pub module: String,
    /// The module's content hash.
    pub module_hash: String,
}

/// A part of the original message the writer cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// The original's whole size (bytes, or a count of headers), when the
    /// writer gave it.
    pub original: Option<u64>,
}

/// What a dead letter's writer cut so that it fits under the producer's
/// largest record: every field `None` (or empty, or false) when nothing was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Truncation {
    /// The key holds only a prefix (`key_truncated`, `original_key_size`).
    pub key: Option<Cut>,
    /// The value holds only a prefix (`value_truncated`,
    /// `original_value_size`).
    pub value: Option<Cut>,
    /// Some headers were left out (`headers_truncated`,
    /// `original_header_count`).
    pub headers: Option<Cut>,
    /// Headers whose value holds only a prefix, by index in
    /// [`Envelope::headers`].
    pub header_values: Vec<(usize, Cut)>,
    /// The failure reason was cut (`failure_reason_truncated`); the
    /// message itself may still be whole.
    pub failure_reason: bool,
}

impl Truncation {
    /// Whether the dead letter holds the whole original message: key,
    /// value and headers (a cut failure reason does not matter).
    pub fn message_complete(&self) -> bool {
        self.key.is_none()
            && self.value.is_none()
            && self.headers.is_none()
            && self.header_values.is_empty()
    }

    /// Whether anything at all was cut.
    pub fn any(&self) -> bool {
        !self.message_complete() || self.failure_reason
    }
}

impl Envelope {
    /// Decodes a dead-letter record's value; the error says what is wrong.
    pub fn decode(value: Option<&[u8]>) -> Result<Envelope, String> {
        let bytes = value.ok_or("the record has no value")?;
        let json: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("the value is not JSON: {e}"))?;
        let top = json.as_object().ok_or("the value is not a JSON object")?;
        let original = top
            .get("original_message")
            .and_then(Value::as_object)
            .ok_or("`original_message` is missing or not an object")?;
        let original_offset = match original.get("offset") {
            Some(Value::String(s)) => s.parse().ok(),
            Some(Value::Number(n)) => n.as_i64(),
            _ => None,
        }
        .ok_or("`original_message.offset` is missing or not a number")?;
        let original_partition = original
            .get("partition")
            .and_then(Value::as_i64)
            .and_then(|p| i32::try_from(p).ok())
            .ok_or("`original_message.partition` is missing or not a partition number")?;
        let mut header_values = Vec::new();
        let headers = match original.get("headers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(entries)) => entries
                .iter()
                .enumerate()
                .map(|(i, entry)| {
                    let (header, cut) = decode_header(i, entry)?;
                    if let Some(cut) = cut {
                        header_values.push((i, cut));
                    }
                    Ok(header)
                })
                .collect::<Result<_, String>>()?,
            Some(_) => return Err("`original_message.headers` is not an array".into()),
        };
        let truncation = Truncation {
            key: cut(original, "key", "original_key_size", "original_message.")?,
            value: cut(
                original,
                "value",
                "original_value_size",
                "original_message.",
            )?,
            headers: cut(
                original,
                "headers",
                "original_header_count",
                "original_message.",
            )?,
            header_values,
            failure_reason: flag(top, "failure_reason_truncated", "")?,
        };
        let failure_timestamp = text(top, "failure_timestamp")
            .ok_or("`failure_timestamp` is missing or not a string")?;
        let failed_at_ms = parse_rfc3339(&failure_timestamp)
            .ok_or_else(|| format!("`failure_timestamp` {failure_timestamp:?} is not RFC 3339"))?;
        Ok(Envelope {
            original_topic: text(top, "original_topic")
                .filter(|t| !t.is_empty())
                .ok_or("`original_topic` is missing or empty")?,
            original_partition,
            original_offset,
            original_timestamp: original.get("timestamp").and_then(Value::as_i64),
            key: decode_bytes(original, "key", "original_message.")?,
            value: decode_bytes(original, "value", "original_message.")?,
            headers,
            truncation,
            failure_reason: text(top, "failure_reason").unwrap_or_default(),
            failure_timestamp,
            failed_at_ms,
            correlation_id: text(top, "correlation_id").unwrap_or_default(),
            retry_count: top.get("retry_count").and_then(Value::as_u64).unwrap_or(0),
            error_type: text(top, "error_type").ok_or("`error_type` is missing")?,
            module: text(top, "module").unwrap_or_default(),
            module_hash: text(top, "module_hash").unwrap_or_default(),
        })
    }

    /// How many times the original message had already been replayed: its
    /// own last `x-replay-count` header, 0 without one.
    pub fn replay_count(&self) -> Result<u32, String> {
        replay_count(&self.headers)
    }

    /// What the dead letter holds of a cut message, in words ("its first
    /// 1024 of 2000000 value bytes"); `None` when it holds the whole message.
    pub fn held(&self) -> Option<String> {
        let t = &self.truncation;
        let size = |cut: &Cut| {
            cut.original
                .map_or_else(String::new, |n| format!(" of {n}"))
        };
        let mut parts = Vec::new();
        if let Some(cut) = &t.value {
            let kept = self.value.as_ref().map_or(0, Vec::len);
            parts.push(format!("its first {kept}{} value bytes", size(cut)));
        }
        if let Some(cut) = &t.key {
            let kept = self.key.as_ref().map_or(0, Vec::len);
            parts.push(format!("its first {kept}{} key bytes", size(cut)));
        }
        if let Some(cut) = &t.headers {
            parts.push(format!(
                "{}{} of its headers",
                self.headers.len(),
                size(cut)
            ));
        }
        if !t.header_values.is_empty() {
            parts.push(format!(
                "a prefix of {} header value(s)",
                t.header_values.len()
            ));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// How many times a message with these headers had already been replayed:
/// its last `x-replay-count` header, 0 without one.
pub fn replay_count(headers: &[RawHeader]) -> Result<u32, String> {
    let Some(h) = headers
        .iter()
        .rev()
        .find(|h| h.key == REPLAY_COUNT_HEADER.as_bytes())
    else {
        return Ok(0);
    };
    let v = h.value.as_deref().unwrap_or_default();
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            format!(
                "its {REPLAY_COUNT_HEADER} header {:?} is not a number",
                String::from_utf8_lossy(v)
            )
        })
}

fn text(map: &Map<String, Value>, name: &str) -> Option<String> {
    map.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// An optional boolean marker: absent or null is false.
fn flag(map: &Map<String, Value>, name: &str, path: &str) -> Result<bool, String> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("`{path}{name}` is not a boolean")),
    }
}

/// Reads a `{name}_truncated` marker and the original size beside it.
fn cut(
    map: &Map<String, Value>,
    name: &str,
    size: &str,
    path: &str,
) -> Result<Option<Cut>, String> {
    if !flag(map, &format!("{name}_truncated"), path)? {
        return Ok(None);
    }
    let original = match map.get(size) {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| format!("`{path}{size}` is not a whole number"))?,
        ),
    };
    Ok(Some(Cut { original }))
}

/// Reads bytes written by the dead-letter writer's `put_bytes`: a string,
/// base64 when `{name}_encoding` is `"base64"`, or null for none.
fn decode_bytes(
    map: &Map<String, Value>,
    name: &str,
    path: &str,
) -> Result<Option<Vec<u8>>, String> {
    let encoding = map.get(&format!("{name}_encoding")).and_then(Value::as_str);
    match (map.get(name), encoding) {
        (None | Some(Value::Null), _) => Ok(None),
        (Some(Value::String(s)), None) => Ok(Some(s.as_bytes().to_vec())),
        (Some(Value::String(s)), Some("base64")) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(Some)
            .map_err(|e| format!("`{path}{name}` is not valid base64: {e}")),
        (Some(Value::String(_)), Some(other)) => Err(format!(
            "`{path}{name}_encoding` is {other:?}; only \"base64\" is known"
        )),
        (Some(_), _) => Err(format!("`{path}{name}` is not a string")),
    }
}

/// One original header: its key (text, or base64 with `key_encoding`) and
/// value as bytes, and whether its value was cut.
fn decode_header(i: usize, entry: &Value) -> Result<(RawHeader, Option<Cut>), String> {
    let map = entry
        .as_object()
        .ok_or_else(|| format!("`original_message.headers[{i}]` is not an object"))?;
    let path = format!("original_message.headers[{i}].");
    let key = decode_bytes(map, "key", &path)?.ok_or_else(|| format!("`{path}key` is missing"))?;
    let value = decode_bytes(map, "value", &path)?;
    let cut = cut(map, "value", "original_value_size", &path)?;
    Ok((RawHeader { key, value }, cut))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::pipeline::dlq::{DeadLetter, ErrorType};
    use crate::wasm::{Header, Message};

    fn written(key: Option<Vec<u8>>, value: Option<Vec<u8>>, headers: Vec<Header>) -> Vec<u8> {
        let message = Message {
            topic: "orders".into(),
            partition: 2,
            offset: 12345,
            timestamp: Some(1_736_937_000_000),
            key,
            value,
            headers,
            attempt: 1,
        };
        let letter = DeadLetter {
            message: &message,
            raw_keys: &[],
            error_type: ErrorType::HandlerTrap,
            reason: "wasm trap: unreachable".into(),
            correlation_id: "corr-1",
            retry_count: 2,
            module: "enrich",
            module_hash: "ab12",
            failed_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_736_937_000_123),
        };
        letter.envelope().to_string().into_bytes()
    }

    #[test]
    fn the_writers_envelope_decodes_to_the_exact_bytes() {
        let headers = vec![
            Header {
                key: "trace".into(),
                value: vec![0xff, 0x00],
            },
            Header {
                key: REPLAY_COUNT_HEADER.into(),
                value: b"2".to_vec(),
            },
        ];
        let bytes = written(Some(vec![0xc3, 0x28]), Some(b"{\"a\":1}".to_vec()), headers);
        let e = Envelope::decode(Some(&bytes)).expect("a valid envelope");
        assert_eq!(e.original_topic, "orders");
        assert_eq!((e.original_partition, e.original_offset), (2, 12345));
        assert_eq!(e.original_timestamp, Some(1_736_937_000_000));
        assert_eq!(e.key, Some(vec![0xc3, 0x28]));
        assert_eq!(e.value, Some(b"{\"a\":1}".to_vec()));
        assert_eq!(
            e.headers[0],
            RawHeader {
                key: b"trace".to_vec(),
                value: Some(vec![0xff, 0x00])
            }
        );
        assert!(e.truncation.message_complete() && !e.truncation.any());
        assert_eq!(e.held(), None);
        assert_eq!(e.failure_timestamp, "2025-01-15T10:30:00.123Z");
        assert_eq!(e.failed_at_ms, 1_736_937_000_123);
        assert_eq!(e.error_type, "HandlerTrap");
        assert_eq!((e.correlation_id.as_str(), e.retry_count), ("corr-1", 2));
        assert_eq!(e.replay_count(), Ok(2));
    }

    #[test]
    fn absent_key_and_value_stay_absent() {
        let bytes = written(None, None, Vec::new());
        let e = Envelope::decode(Some(&bytes)).expect("a valid envelope");
        assert_eq!((e.key.as_deref(), e.value.as_deref()), (None, None));
        assert_eq!(e.replay_count(), Ok(0));
    }

    #[test]
    fn anything_else_is_described_not_decoded() {
        for (value, why) in [
            (None, "no value"),
            (Some(&b"not json"[..]), "not JSON"),
            (Some(b"[1]"), "not a JSON object"),
            (Some(b"{}"), "`original_message`"),
            (
                Some(br#"{"original_message":{"offset":"1","partition":0,"value":"%","value_encoding":"base64"},"original_topic":"t","failure_timestamp":"2025-01-15T10:30:00.123Z","error_type":"HandlerError"}"#),
                "not valid base64",
            ),
            (
                Some(br#"{"original_message":{"offset":"1","partition":0},"original_topic":"t","failure_timestamp":"soon","error_type":"HandlerError"}"#),
                "not RFC 3339",
            ),
        ] {
            let error = Envelope::decode(value).expect_err(why);
            assert!(error.contains(why), "{error:?} should say {why:?}");
        }
    }

    /// A dead letter as the writer cuts it to fit: markers beside a prefix.
    fn cut_letter(original: Value, top: &[(&str, Value)]) -> Vec<u8> {
        let mut letter = serde_json::json!({
            "original_topic": "orders",
            "original_message": original,
            "failure_reason": "r",
            "failure_timestamp": "2026-01-01T00:00:00.000Z",
            "error_type": "HandlerError",
        });
        for (name, value) in top {
            letter[*name] = value.clone();
        }
        letter.to_string().into_bytes()
    }

    #[test]
    fn cut_parts_are_marked_and_the_message_is_not_complete() {
        let bytes = cut_letter(
            serde_json::json!({
                "offset": "77", "partition": 1, "timestamp": null,
                "key": "ab", "key_truncated": true, "original_key_size": 20000,
                "value": "/w==", "value_encoding": "base64",
                "value_truncated": true, "original_value_size": 2_000_000,
                "headers": [
                    {"key": "//4=", "key_encoding": "base64", "value": "v"},
                    {"key": "big", "value": "xy", "value_truncated": true,
                     "original_value_size": 9000},
                ],
                "headers_truncated": true, "original_header_count": 5,
            }),
            &[("failure_reason_truncated", serde_json::json!(true))],
        );
        let e = Envelope::decode(Some(&bytes)).expect("a valid envelope");
        assert_eq!((e.original_partition, e.original_offset), (1, 77));
        assert_eq!(e.key.as_deref(), Some(&b"ab"[..]));
        assert_eq!(e.value.as_deref(), Some(&[0xff_u8][..]));
        assert_eq!(
            e.headers[0],
            RawHeader {
                key: vec![0xff, 0xfe],
                value: Some(b"v".to_vec())
            },
            "a key that is not UTF-8 comes back as its bytes"
        );
        let t = &e.truncation;
        let cut = |n| Some(Cut { original: Some(n) });
        assert_eq!(
            (t.key, t.value, t.headers),
            (cut(20000), cut(2_000_000), cut(5))
        );
        assert_eq!(
            t.header_values,
            [(
                1,
                Cut {
                    original: Some(9000)
                }
            )]
        );
        assert!(t.failure_reason && !t.message_complete());
        assert_eq!(
            e.held().as_deref(),
            Some(
                "its first 1 of 2000000 value bytes, its first 2 of 20000 key bytes, 2 of 5 of \
                 its headers, a prefix of 1 header value(s)"
            )
        );
    }

    #[test]
    fn a_cut_reason_alone_leaves_the_message_complete() {
        let bytes = cut_letter(
            serde_json::json!({"offset": "1", "partition": 0, "value": "v", "headers": [],
                               "value_truncated": false}),
            &[("failure_reason_truncated", serde_json::json!(true))],
        );
        let e = Envelope::decode(Some(&bytes)).expect("a valid envelope");
        assert!(e.truncation.message_complete() && e.truncation.any());
        assert_eq!(e.held(), None);
        let null_value = cut_letter(
            serde_json::json!({"offset": "1", "partition": 0, "value": null,
                               "value_truncated": true}),
            &[],
        );
        let e = Envelope::decode(Some(&null_value)).expect("a valid envelope");
        assert_eq!(e.truncation.value, Some(Cut { original: None }));
        assert_eq!(e.held().as_deref(), Some("its first 0 value bytes"));
    }

    #[test]
    fn malformed_markers_are_described() {
        for (original, why) in [
            (
                serde_json::json!({"offset": "1", "partition": 0, "value_truncated": "yes"}),
                "`original_message.value_truncated` is not a boolean",
            ),
            (
                serde_json::json!({"offset": "1", "partition": 0, "value_truncated": true,
                                   "original_value_size": -3}),
                "`original_message.original_value_size` is not a whole number",
            ),
            (
                serde_json::json!({"offset": "1", "partition": 0,
                                   "headers": [{"key": "%", "key_encoding": "base64"}]}),
                "`original_message.headers[0].key` is not valid base64",
            ),
        ] {
            let error = Envelope::decode(Some(&cut_letter(original, &[]))).expect_err(why);
            assert!(error.contains(why), "{error:?} should say {why:?}");
        }
    }
}

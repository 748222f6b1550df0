//! Reading a dead-letter record back: the JSON envelope written by
//! [`crate::pipeline::dlq`], decoded to the original message's exact bytes.
//!
//! Owns decoding only; a record that is not a valid envelope is described,
//! never a panic.

use base64::Engine as _;
use serde_json::{Map, Value};

use super::time::parse_rfc3339;

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
    /// Its key, exactly as consumed.
    pub key: Option<Vec<u8>>,
    /// Its value, exactly as consumed.
    pub value: Option<Vec<u8>>,
    /// Its headers, in order, exactly as consumed.
    pub headers: Vec<(String, Vec<u8>)>,
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
        let headers = match original.get("headers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(entries)) => entries
                .iter()
                .enumerate()
                .map(|(i, entry)| decode_header(i, entry))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("`original_message.headers` is not an array".into()),
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
        match self
            .headers
            .iter()
            .rev()
            .find(|(k, _)| k == REPLAY_COUNT_HEADER)
        {
            None => Ok(0),
            Some((_, v)) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| {
                    format!(
                        "its {REPLAY_COUNT_HEADER} header {:?} is not a number",
                        String::from_utf8_lossy(v)
                    )
                }),
        }
    }
}

fn text(map: &Map<String, Value>, name: &str) -> Option<String> {
    map.get(name).and_then(Value::as_str).map(str::to_owned)
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

fn decode_header(i: usize, entry: &Value) -> Result<(String, Vec<u8>), String> {
    let map = entry
        .as_object()
        .ok_or_else(|| format!("`original_message.headers[{i}]` is not an object"))?;
    let key = text(map, "key")
        .ok_or_else(|| format!("`original_message.headers[{i}].key` is missing"))?;
    let path = format!("original_message.headers[{i}].");
    let value = decode_bytes(map, "value", &path)?.unwrap_or_default();
    Ok((key, value))
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
        assert_eq!(e.headers[0], ("trace".to_owned(), vec![0xff, 0x00]));
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
}

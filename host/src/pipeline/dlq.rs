//! Dead-letter records: the JSON envelope and headers of a failed message,
//! compatible with the event bus's format and safe for any bytes.

use std::time::SystemTime;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::wasm::{Failure, Header, Message};

/// Why a message was dead-lettered: a small fixed set, used as the
/// `error_type` field and header and as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// The handler returned a permanent error.
    HandlerError,
    /// The handler kept returning retryable errors (or could not be
    /// instantiated) until the retries ran out.
    RetriesExhausted,
    /// The handler kept timing out until the retries ran out.
    HandlerTimeout,
    /// The handler trapped: a panic, a stack overflow, a bad memory access.
    HandlerTrap,
    /// The handler grew its memory past the route's limit.
    MemoryLimitExceeded,
    /// The handler emitted to a topic that is not in the route's
    /// `output_topics`, or outputs over one of the route's output bounds.
    InvalidOutput,
}

impl ErrorType {
    /// Every error type, for documentation and metrics.
    pub const ALL: [ErrorType; 6] = [
        ErrorType::HandlerError,
        ErrorType::RetriesExhausted,
        ErrorType::HandlerTimeout,
        ErrorType::HandlerTrap,
        ErrorType::MemoryLimitExceeded,
        ErrorType::InvalidOutput,
    ];

    /// The name written into dead-letter records.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::HandlerError => "HandlerError",
            ErrorType::RetriesExhausted => "RetriesExhausted",
            ErrorType::HandlerTimeout => "HandlerTimeout",
            ErrorType::HandlerTrap => "HandlerTrap",
            ErrorType::MemoryLimitExceeded => "MemoryLimitExceeded",
            ErrorType::InvalidOutput => "InvalidOutput",
        }
    }

    /// The error type of a handler failure that will not be retried again.
    pub fn of(failure: &Failure) -> ErrorType {
        match failure {
            Failure::Handler {
                retryable: false, ..
            } => ErrorType::HandlerError,
            Failure::Handler {
                retryable: true, ..
            }
            | Failure::Instantiate(_) => ErrorType::RetriesExhausted,
            Failure::Timeout(_) => ErrorType::HandlerTimeout,
            Failure::Trap { .. } => ErrorType::HandlerTrap,
            Failure::MemoryLimitExceeded { .. } => ErrorType::MemoryLimitExceeded,
            Failure::InvalidOutput(_) => ErrorType::InvalidOutput,
        }
    }
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything known about a failure, for the dead-letter record.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// The message that failed.
    pub message: &'a Message,
    /// The error type.
    pub error_type: ErrorType,
    /// A human-readable reason.
    pub reason: String,
    /// The correlation id carried by the message and its outputs.
    pub correlation_id: &'a str,
    /// How many retries were made before giving up.
    pub retry_count: u32,
    /// The module that handled it.
    pub module: &'a str,
    /// The module's content hash.
    pub module_hash: &'a str,
    /// When it failed.
    pub failed_at: SystemTime,
}

/// The longest failure reason put in a header (the envelope keeps it whole).
const MAX_REASON_HEADER: usize = 1024;

impl DeadLetter<'_> {
    /// The JSON envelope: the event bus's fields plus the original bytes
    /// (base64 where they are not UTF-8), headers, module and hash.
    pub fn envelope(&self) -> Value {
        let m = self.message;
        let mut original = Map::new();
        put_bytes(&mut original, "key", m.key.as_deref());
        put_bytes(&mut original, "value", m.value.as_deref());
        original.insert("offset".into(), Value::String(m.offset.to_string()));
        original.insert("partition".into(), json!(m.partition));
        original.insert("timestamp".into(), json!(m.timestamp));
        let headers: Vec<Value> = m
            .headers
            .iter()
            .map(|h| {
                let mut entry = Map::new();
                entry.insert("key".into(), Value::String(h.key.clone()));
                put_bytes(&mut entry, "value", Some(&h.value));
                Value::Object(entry)
            })
            .collect();
        original.insert("headers".into(), Value::Array(headers));
        json!({
            "original_topic": m.topic,
            "original_message": original,
            "failure_reason": self.reason,
            "failure_timestamp": iso8601_millis(self.failed_at),
            "correlation_id": self.correlation_id,
            "retry_count": self.retry_count,
            "error_type": self.error_type.as_str(),
            "module": self.module,
            "module_hash": self.module_hash,
        })
    }

    /// The record headers, all UTF-8 strings.
    pub fn headers(&self) -> Vec<Header> {
        let m = self.message;
        let mut reason = self.reason.as_str();
        if reason.len() > MAX_REASON_HEADER {
            let mut end = MAX_REASON_HEADER;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason = &reason[..end];
        }
        [
            ("original_topic", m.topic.clone()),
            ("original_partition", m.partition.to_string()),
            ("original_offset", m.offset.to_string()),
            ("failure_reason", reason.to_owned()),
            ("failure_timestamp", iso8601_millis(self.failed_at)),
            ("correlation_id", self.correlation_id.to_owned()),
            ("error_type", self.error_type.as_str().to_owned()),
            ("module", self.module.to_owned()),
            ("module_hash", self.module_hash.to_owned()),
        ]
        .into_iter()
        .map(|(key, value)| Header {
            key: key.to_owned(),
            value: value.into_bytes(),
        })
        .collect()
    }
}

/// Puts bytes under `name` as a string, or as base64 with
/// `{name}_encoding: "base64"` beside it when they are not UTF-8.
fn put_bytes(map: &mut Map<String, Value>, name: &str, bytes: Option<&[u8]>) {
    let value = match bytes {
        None => Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => Value::String(s.to_owned()),
            Err(_) => {
                map.insert(format!("{name}_encoding"), Value::String("base64".into()));
                Value::String(base64::engine::general_purpose::STANDARD.encode(b))
            }
        },
    };
    map.insert(name.to_owned(), value);
}

/// Formats a time as ISO-8601 UTC with milliseconds: `2025-01-15T10:30:00.000Z`.
pub fn iso8601_millis(t: SystemTime) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, mo, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn message(value: &[u8]) -> Message {
        Message {
            topic: "orders".into(),
            partition: 2,
            offset: 12345,
            timestamp: Some(1_736_937_000_000),
            key: Some(b"user-123".to_vec()),
            value: Some(value.to_vec()),
            headers: vec![Header {
                key: "h".into(),
                value: vec![0xff, 0x00],
            }],
            attempt: 1,
        }
    }

    fn letter(m: &Message) -> DeadLetter<'_> {
        DeadLetter {
            message: m,
            error_type: ErrorType::HandlerTimeout,
            reason: "handler did not return within 1000 ms".into(),
            correlation_id: "550e8400-e29b-41d4-a716-446655440000",
            retry_count: 3,
            module: "enrich",
            module_hash: "ab12",
            failed_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_736_937_000_123),
        }
    }

    #[test]
    fn envelope_has_the_event_bus_fields() {
        let m = message(br#"{"user_id": "123"}"#);
        let e = letter(&m).envelope();
        assert_eq!(e["original_topic"], "orders");
        assert_eq!(e["original_message"]["key"], "user-123");
        assert_eq!(e["original_message"]["value"], r#"{"user_id": "123"}"#);
        assert_eq!(e["original_message"]["offset"], "12345");
        assert_eq!(e["original_message"]["partition"], 2);
        assert_eq!(e["original_message"]["timestamp"], 1_736_937_000_000_i64);
        assert_eq!(e["failure_timestamp"], "2025-01-15T10:30:00.123Z");
        assert_eq!(e["retry_count"], 3);
        assert_eq!(e["error_type"], "HandlerTimeout");
        assert_eq!(e["module"], "enrich");
        assert_eq!(e["module_hash"], "ab12");
        assert!(e["original_message"].get("value_encoding").is_none());
    }

    #[test]
    fn non_utf8_bytes_are_base64_with_an_encoding_marker() {
        let m = message(&[0xc3, 0x28, 0x00]);
        let e = letter(&m).envelope();
        assert_eq!(e["original_message"]["value"], "wygA");
        assert_eq!(e["original_message"]["value_encoding"], "base64");
        assert_eq!(e["original_message"]["headers"][0]["value"], "/wA=");
        assert_eq!(
            e["original_message"]["headers"][0]["value_encoding"],
            "base64"
        );
    }

    #[test]
    fn headers_are_utf8_strings() {
        let m = message(b"x");
        let headers = letter(&m).headers();
        let get = |k: &str| {
            headers
                .iter()
                .find(|h| h.key == k)
                .map(|h| String::from_utf8(h.value.clone()).expect("utf-8"))
        };
        assert_eq!(get("original_offset").as_deref(), Some("12345"));
        assert_eq!(get("original_partition").as_deref(), Some("2"));
        assert_eq!(get("error_type").as_deref(), Some("HandlerTimeout"));
        assert_eq!(
            get("failure_timestamp").as_deref(),
            Some("2025-01-15T10:30:00.123Z")
        );
        assert_eq!(headers.len(), 9);
    }

    #[test]
    fn civil_dates_across_leap_years() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_103), (2025, 1, 15));
    }
}

//! Dead-letter records: the JSON envelope and headers of a failed message,
//! compatible with the event bus's format and safe for any bytes.

use std::time::SystemTime;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::wasm::{Header, Message};

pub use crate::policy::ErrorType;

/// Header keys of a message that were not UTF-8, by header index: the
/// handler sees them lossily decoded, the envelope keeps their bytes.
pub type RawKeys = Vec<(usize, Vec<u8>)>;

/// Everything known about a failure, for the dead-letter record.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// The message that failed.
    pub message: &'a Message,
    /// The bytes of its header keys that were not UTF-8.
    pub raw_keys: &'a [(usize, Vec<u8>)],
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

/// The longest failure reason put in a header.
const MAX_REASON_HEADER: usize = 1024;

/// The longest failure reason kept in the envelope; a longer one is cut,
/// marked as cut, and `failure_reason_truncated` is set.
pub const MAX_REASON: usize = 4096;

/// What a reason is cut to when nothing else is left to cut.
const MIN_REASON: usize = 256;

/// The longest original key a dead-letter record keeps as its own key; a
/// longer one stays (perhaps cut) in the envelope only.
pub const MAX_RECORD_KEY: usize = 16 * 1024;

/// Room left in a dead-letter record for the broker's record framing.
const RECORD_OVERHEAD: usize = 1024;

/// A dead-letter record ready to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The original key, unless longer than [`MAX_RECORD_KEY`].
    pub key: Option<Vec<u8>>,
    /// The JSON envelope.
    pub value: Vec<u8>,
    /// The headers, all UTF-8 strings.
    pub headers: Vec<Header>,
}

/// How much of each part of the original message an envelope keeps:
/// `None` keeps it whole.
#[derive(Debug, Clone, Copy, Default)]
struct Cuts {
    key: Option<usize>,
    value: Option<usize>,
    /// Leave the headers out.
    headers: bool,
    reason: Option<usize>,
}

impl DeadLetter<'_> {
    /// The record for a dead-letter topic whose records may be at most
    /// `max_bytes` long (the producer's `message.max.bytes`): the envelope
    /// is cut, with markers, until key, value and headers fit. The original
    /// coordinates are always kept, so a cut envelope still locates the
    /// whole record in its topic.
    pub fn record(&self, max_bytes: usize) -> Record {
        let headers = self.headers();
        let key = self
            .message
            .key
            .as_ref()
            .filter(|k| k.len() <= MAX_RECORD_KEY)
            .cloned();
        let framing: usize = headers
            .iter()
            .map(|h| h.key.len() + h.value.len() + 8)
            .sum();
        let budget =
            max_bytes.saturating_sub(RECORD_OVERHEAD + framing + key.as_ref().map_or(0, Vec::len));
        Record {
            key,
            value: self.fitted(budget),
            headers,
        }
    }

    /// The envelope, whole if it fits in `budget` bytes; otherwise the
    /// value, then the key, then the headers, then the reason are cut.
    fn fitted(&self, budget: usize) -> Vec<u8> {
        let mut cuts = Cuts::default();
        let whole = self.encoded(cuts);
        if whole.len() <= budget {
            return whole;
        }
        let m = self.message;
        let value_len = m.value.as_ref().map_or(0, Vec::len);
        let key_len = m.key.as_ref().map_or(0, Vec::len);
        cuts.value = Some(self.longest(budget, value_len, |n| Cuts {
            value: Some(n),
            ..cuts
        }));
        if self.encoded(cuts).len() <= budget {
            return self.encoded(cuts);
        }
        cuts.key = Some(self.longest(budget, key_len, |n| Cuts {
            key: Some(n),
            ..cuts
        }));
        if self.encoded(cuts).len() <= budget {
            return self.encoded(cuts);
        }
        cuts.headers = true;
        if self.encoded(cuts).len() <= budget {
            return self.encoded(cuts);
        }
        cuts.reason = Some(MIN_REASON);
        self.encoded(cuts)
    }

    /// The largest `n <= len` whose cut makes the envelope fit in
    /// `budget`, or 0.
    fn longest(&self, budget: usize, len: usize, cut: impl Fn(usize) -> Cuts) -> usize {
        let (mut fits, mut too_long) = (0, len + 1);
        while fits + 1 < too_long {
            let mid = fits + (too_long - fits) / 2;
            if self.encoded(cut(mid)).len() <= budget {
                fits = mid;
            } else {
                too_long = mid;
            }
        }
        fits
    }

    fn encoded(&self, cuts: Cuts) -> Vec<u8> {
        serde_json::to_vec(&self.envelope_with(cuts)).unwrap_or_default()
    }

    /// The JSON envelope: the event bus's fields plus the original bytes
    /// (base64 where they are not UTF-8), headers, module and hash.
    pub fn envelope(&self) -> Value {
        self.envelope_with(Cuts::default())
    }

    fn envelope_with(&self, cuts: Cuts) -> Value {
        let m = self.message;
        let mut original = Map::new();
        put_bytes(&mut original, "key", m.key.as_deref(), cuts.key);
        put_bytes(&mut original, "value", m.value.as_deref(), cuts.value);
        original.insert("offset".into(), Value::String(m.offset.to_string()));
        original.insert("partition".into(), json!(m.partition));
        original.insert("timestamp".into(), json!(m.timestamp));
        let headers: Vec<Value> = if cuts.headers {
            original.insert("headers_truncated".into(), Value::Bool(true));
            original.insert("original_header_count".into(), json!(m.headers.len()));
            Vec::new()
        } else {
            m.headers
                .iter()
                .enumerate()
                .map(|(i, h)| self.header_entry(i, h))
                .collect()
        };
        original.insert("headers".into(), Value::Array(headers));
        let max_reason = cuts.reason.unwrap_or(MAX_REASON);
        let (reason, reason_cut) = cut_text(&self.reason, max_reason);
        let mut envelope = json!({
            "original_topic": m.topic,
            "original_message": original,
            "failure_reason": reason,
            "failure_timestamp": iso8601_millis(self.failed_at),
            "correlation_id": self.correlation_id,
            "retry_count": self.retry_count,
            "error_type": self.error_type.as_str(),
            "module": self.module,
            "module_hash": self.module_hash,
        });
        if reason_cut {
            envelope["failure_reason_truncated"] = Value::Bool(true);
        }
        envelope
    }

    /// One original header: its key as text, or as base64 with
    /// `key_encoding` when its bytes were not UTF-8.
    fn header_entry(&self, index: usize, header: &Header) -> Value {
        let mut entry = Map::new();
        match self.raw_keys.iter().find(|(i, _)| *i == index) {
            Some((_, raw)) => put_bytes(&mut entry, "key", Some(raw), None),
            None => {
                entry.insert("key".into(), Value::String(header.key.clone()));
            }
        }
        put_bytes(&mut entry, "value", Some(&header.value), None);
        Value::Object(entry)
    }

    /// The record headers, all UTF-8 strings.
    pub fn headers(&self) -> Vec<Header> {
        let m = self.message;
        let (reason, _) = cut_text(&self.reason, MAX_REASON_HEADER);
        [
            ("original_topic", m.topic.clone()),
            ("original_partition", m.partition.to_string()),
            ("original_offset", m.offset.to_string()),
            ("failure_reason", reason),
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

/// `text` cut to at most `max` bytes on a character boundary, with a note
/// of its whole length, and whether it was cut.
pub fn cut_text(text: &str, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text.to_owned(), false);
    }
    let note = format!(" [cut: {} bytes in all]", text.len());
    let mut end = max.saturating_sub(note.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (format!("{}{note}", &text[..end]), true)
}

/// Puts bytes under `name` as a string, or as base64 with
/// `{name}_encoding: "base64"` beside it when they are not UTF-8. With
/// `cut` shorter than the bytes, only that many are kept, and
/// `{name}_truncated` and `original_{name}_size` say so.
fn put_bytes(map: &mut Map<String, Value>, name: &str, bytes: Option<&[u8]>, cut: Option<usize>) {
    let value = match bytes {
        None => Value::Null,
        Some(b) => {
            let text = std::str::from_utf8(b).ok();
            let kept = match cut.filter(|&n| n < b.len()) {
                Some(n) => {
                    map.insert(format!("{name}_truncated"), Value::Bool(true));
                    map.insert(format!("original_{name}_size"), json!(b.len()));
                    n
                }
                None => b.len(),
            };
            match text {
                Some(t) => {
                    let mut end = kept;
                    while !t.is_char_boundary(end) {
                        end -= 1;
                    }
                    Value::String(t[..end].to_owned())
                }
                None => {
                    map.insert(format!("{name}_encoding"), Value::String("base64".into()));
                    Value::String(base64::engine::general_purpose::STANDARD.encode(&b[..kept]))
                }
            }
        }
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
            raw_keys: &[],
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

    /// Decodes a record's envelope.
    fn decoded(record: &Record) -> Value {
        serde_json::from_slice(&record.value).expect("the envelope is JSON")
    }

    #[test]
    fn a_record_that_fits_is_whole() {
        let m = message(b"small");
        let record = letter(&m).record(1_000_000);
        assert_eq!(decoded(&record), letter(&m).envelope());
        assert_eq!(record.key.as_deref(), Some(&b"user-123"[..]));
    }

    #[test]
    fn a_long_reason_is_cut_and_marked() {
        let m = message(b"x");
        let mut l = letter(&m);
        l.reason = "r".repeat(3 << 20);
        let record = l.record(1_000_000);
        let e = decoded(&record);
        let reason = e["failure_reason"].as_str().expect("a reason");
        assert!(reason.len() <= MAX_REASON, "{}", reason.len());
        assert!(reason.ends_with(&format!("[cut: {} bytes in all]", 3 << 20)));
        assert_eq!(e["failure_reason_truncated"], true);
        let header = record
            .headers
            .iter()
            .find(|h| h.key == "failure_reason")
            .expect("header");
        assert!(header.value.len() <= MAX_REASON_HEADER);
    }

    #[test]
    fn an_envelope_past_the_record_limit_is_cut_to_fit_with_markers() {
        // Binary: base64 grows it by a third, past the limit.
        let value: Vec<u8> = (0..800_000u32).map(|i| (i % 251) as u8 | 0x80).collect();
        let m = message(&value);
        let max = 1_000_000;
        let record = letter(&m).record(max);
        let size = record.value.len()
            + record.key.as_ref().map_or(0, Vec::len)
            + record
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.len())
                .sum::<usize>();
        assert!(size <= max, "{size} bytes");
        let e = decoded(&record);
        let original = &e["original_message"];
        assert_eq!(original["value_truncated"], true);
        assert_eq!(original["original_value_size"], 800_000);
        assert_eq!(original["value_encoding"], "base64");
        let kept = base64::engine::general_purpose::STANDARD
            .decode(original["value"].as_str().expect("base64"))
            .expect("valid base64");
        assert!(
            kept.len() > 600_000,
            "most of the value is kept: {}",
            kept.len()
        );
        assert_eq!(&kept[..], &value[..kept.len()], "a prefix of the value");
        assert_eq!(original["offset"], "12345", "the coordinates are kept");
        assert_eq!(original["partition"], 2);
        assert!(original.get("key_truncated").is_none());
    }

    #[test]
    fn key_and_headers_are_cut_when_the_value_is_not_enough() {
        let mut m = message(b"v");
        m.key = Some(vec![b'k'; 50_000]);
        m.headers = (0..100)
            .map(|i| Header {
                key: format!("h{i}"),
                value: vec![b'h'; 1_000],
            })
            .collect();
        let record = letter(&m).record(20_000);
        assert!(record.value.len() <= 20_000);
        assert_eq!(
            record.key, None,
            "a key past MAX_RECORD_KEY is not the record's key"
        );
        let original = &decoded(&record)["original_message"];
        assert_eq!(original["key_truncated"], true);
        assert_eq!(original["original_key_size"], 50_000);
        assert_eq!(original["headers_truncated"], true);
        assert_eq!(original["original_header_count"], 100);
    }

    #[test]
    fn header_keys_that_were_not_utf8_are_kept_as_base64() {
        let mut m = message(b"x");
        m.headers[0].key = "\u{fffd}\u{fffd}k".into();
        let raw = [(0, vec![0xff, 0xfe, b'k'])];
        let mut l = letter(&m);
        l.raw_keys = &raw;
        let e = l.envelope();
        let header = &e["original_message"]["headers"][0];
        assert_eq!(header["key"], "//5r");
        assert_eq!(header["key_encoding"], "base64");
    }

    #[test]
    fn cut_text_keeps_character_boundaries() {
        let (cut, was) = cut_text(&"é".repeat(100), 60);
        assert!(was && cut.len() <= 60 && cut.starts_with('é'));
        assert_eq!(cut_text("short", 60), ("short".to_owned(), false));
    }

    #[test]
    fn civil_dates_across_leap_years() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_103), (2025, 1, 15));
    }
}

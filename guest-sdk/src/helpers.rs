//! Conveniences on the generated types and the host's `config` import.
//!
//! Everything here is reachable by message content, so nothing here panics:
//! a payload that does not fit becomes a [`HandlerError::Permanent`] that
//! says why.

use std::fmt::Display;

use crate::{HandlerError, Header, Message, Output};

impl Message {
    /// The value as UTF-8 text.
    ///
    /// A missing value or invalid UTF-8 is a [`HandlerError::Permanent`].
    pub fn value_str(&self) -> Result<&str, HandlerError> {
        as_text("value", self.value.as_deref())
    }

    /// The key as UTF-8 text.
    ///
    /// A missing key or invalid UTF-8 is a [`HandlerError::Permanent`].
    pub fn key_str(&self) -> Result<&str, HandlerError> {
        as_text("key", self.key.as_deref())
    }

    /// The value parsed as JSON into `T`.
    ///
    /// A missing value, invalid JSON or JSON of another shape than `T` is a
    /// [`HandlerError::Permanent`] quoting serde_json's reason, with its line
    /// and column.
    #[cfg(feature = "json")]
    pub fn value_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HandlerError> {
        let bytes = self
            .value
            .as_deref()
            .ok_or_else(|| HandlerError::permanent("message has no value"))?;
        serde_json::from_slice(bytes).map_err(|e| {
            HandlerError::permanent(format!("message value is not the expected JSON: {e}"))
        })
    }

    /// The value of header `name` (case-sensitive). Kafka allows a key to
    /// repeat; like Kafka's `lastHeader`, the last one wins.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .rev()
            .find(|h| h.key == name)
            .map(|h| h.value.as_slice())
    }

    /// [`Message::header`] as UTF-8 text; `None` when it is absent or not
    /// UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

fn as_text<'a>(what: &str, bytes: Option<&'a [u8]>) -> Result<&'a str, HandlerError> {
    let bytes = bytes.ok_or_else(|| HandlerError::permanent(format!("message has no {what}")))?;
    std::str::from_utf8(bytes)
        .map_err(|e| HandlerError::permanent(format!("message {what} is not UTF-8: {e}")))
}

impl Output {
    /// A record for `topic`, without key, value or headers yet. The topic
    /// must be one of the route's `output_topics`.
    ///
    /// ```
    /// use sluice_guest::Output;
    ///
    /// let out = Output::to("orders.accepted")
    ///     .key("order-17")
    ///     .value("ok")
    ///     .header("source", "billing");
    /// assert_eq!(out.value.as_deref(), Some(&b"ok"[..]));
    /// ```
    pub fn to(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            key: None,
            value: None,
            headers: Vec::new(),
        }
    }

    /// Sets the key.
    #[must_use]
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the value.
    #[must_use]
    pub fn value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Sets the value to `value` serialised as JSON.
    ///
    /// Fails (permanently) only when `value` cannot be represented as JSON,
    /// such as a map with non-string keys.
    #[cfg(feature = "json")]
    pub fn json<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Result<Self, HandlerError> {
        let bytes = serde_json::to_vec(value).map_err(|e| {
            HandlerError::permanent(format!("output value is not representable as JSON: {e}"))
        })?;
        self.value = Some(bytes);
        Ok(self)
    }

    /// Appends a header; a key may repeat.
    #[must_use]
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value: value.into(),
        });
        self
    }
}

impl HandlerError {
    /// A passing condition (a dependency is down, a rate limit): Sluice may
    /// deliver the message again with [`Message::attempt`] increased.
    pub fn retryable(reason: impl Display) -> Self {
        Self::Retryable(reason.to_string())
    }

    /// The message itself is bad: retrying cannot help, so Sluice
    /// dead-letters it with `reason`.
    pub fn permanent(reason: impl Display) -> Self {
        Self::Permanent(reason.to_string())
    }

    /// The reason given when the error was made.
    pub fn reason(&self) -> &str {
        match self {
            Self::Retryable(reason) | Self::Permanent(reason) => reason,
        }
    }

    /// Whether Sluice may deliver the message again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable(_))
    }
}

/// The value of `key` in the route's `[routes.config]` table, if set.
///
/// The host is asked once per key: the table never changes during an
/// instance's life (a config change starts new instances), so the answer is
/// kept and later calls cost no call to the host.
///
/// Off wasm32 (a handler's unit tests) there is no host to ask: it always
/// returns `None`.
pub fn config(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    {
        use std::cell::RefCell;

        thread_local! {
            /// The keys asked for so far, with the host's answers.
            static ASKED: RefCell<Vec<(String, Option<String>)>> = const { RefCell::new(Vec::new()) };
        }
        ASKED.with_borrow_mut(|asked| {
            if let Some((_, value)) = asked.iter().find(|(k, _)| k == key) {
                return value.clone();
            }
            let value = crate::bindings::sluice::handler::host::config(key);
            asked.push((key.to_owned(), value.clone()));
            value
        })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = key;
        None
    }
}

/// [`config`], or `default` when the route does not set `key`.
pub fn config_or(key: &str, default: impl Into<String>) -> String {
    config(key).unwrap_or_else(|| default.into())
}

/// [`config`], or what `default` makes when the route does not set `key`:
/// for a default that must be built (`format!`), which is then built only
/// when it is needed rather than for every message.
pub fn config_or_else(key: &str, default: impl FnOnce() -> String) -> String {
    config(key).unwrap_or_else(default)
}

/// Tells the host which message of a batch is being handled, for log
/// attribution. Off wasm32 there is no host: it does nothing.
pub(crate) fn handling(index: usize) {
    #[cfg(target_arch = "wasm32")]
    {
        crate::bindings::sluice::handler::host::handling(u32::try_from(index).unwrap_or(u32::MAX));
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = index;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(value: Option<&[u8]>) -> Message {
        Message {
            topic: "in".into(),
            partition: 0,
            offset: 0,
            timestamp: None,
            key: None,
            value: value.map(<[u8]>::to_vec),
            headers: vec![
                Header {
                    key: "a".into(),
                    value: b"first".to_vec(),
                },
                Header {
                    key: "a".into(),
                    value: b"last".to_vec(),
                },
                Header {
                    key: "bin".into(),
                    value: vec![0xff],
                },
            ],
            attempt: 1,
        }
    }

    fn permanent_reason(result: Result<impl std::fmt::Debug, HandlerError>) -> String {
        match result {
            Err(HandlerError::Permanent(reason)) => reason,
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }

    #[test]
    fn text_accessors_reject_missing_and_non_utf8_payloads() {
        assert_eq!(message(Some(b"hi")).value_str().ok(), Some("hi"));
        assert_eq!(
            permanent_reason(message(None).value_str()),
            "message has no value"
        );
        assert_eq!(
            permanent_reason(message(None).key_str()),
            "message has no key"
        );
        let reason = permanent_reason(message(Some(&[b'a', 0xc3])).value_str());
        assert!(
            reason.starts_with("message value is not UTF-8: "),
            "{reason}"
        );
    }

    #[cfg(feature = "json")]
    #[test]
    fn value_json_reports_where_parsing_failed() {
        let parsed: serde_json::Value = message(Some(br#"{"a":1}"#))
            .value_json()
            .ok()
            .unwrap_or_default();
        assert_eq!(parsed["a"], 1);
        let reason =
            permanent_reason(message(Some(b"{\n  \"a\": }")).value_json::<serde_json::Value>());
        assert!(reason.contains("line 2 column 8"), "{reason}");
        assert_eq!(
            permanent_reason(message(None).value_json::<serde_json::Value>()),
            "message has no value"
        );
    }

    #[test]
    fn last_header_wins_and_non_utf8_headers_are_not_text() {
        let msg = message(None);
        assert_eq!(msg.header("a"), Some(&b"last"[..]));
        assert_eq!(msg.header_str("a"), Some("last"));
        assert_eq!(msg.header("bin"), Some(&[0xff][..]));
        assert_eq!(msg.header_str("bin"), None);
        assert_eq!(msg.header("A"), None);
    }

    #[test]
    fn output_builder_sets_every_field() {
        let out = Output::to("t")
            .key("k")
            .value(vec![1, 2])
            .header("h", "v")
            .header("h", "w");
        assert_eq!(out.topic, "t");
        assert_eq!(out.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(out.value.as_deref(), Some(&[1, 2][..]));
        assert_eq!(out.headers.len(), 2);
    }

    #[cfg(feature = "json")]
    #[test]
    fn output_json_fails_without_panicking() {
        let out = Output::to("t").json(&serde_json::json!({"a": 1})).ok();
        assert_eq!(
            out.and_then(|o| o.value).as_deref(),
            Some(&br#"{"a":1}"#[..])
        );
        let mut bad = std::collections::BTreeMap::new();
        bad.insert((1, 2), 3);
        let reason = permanent_reason(Output::to("t").json(&bad));
        assert!(
            reason.starts_with("output value is not representable as JSON"),
            "{reason}"
        );
    }

    #[test]
    fn errors_keep_their_kind_and_reason() {
        let e = HandlerError::retryable(format_args!("db down ({} tries)", 3));
        assert!(e.is_retryable());
        assert_eq!(e.reason(), "db down (3 tries)");
        assert!(!HandlerError::permanent("bad").is_retryable());
    }

    #[test]
    fn config_has_no_host_off_wasm() {
        assert_eq!(config("anything"), None);
        assert_eq!(config_or("anything", "fallback"), "fallback");
        assert_eq!(config_or_else("anything", || "made".to_owned()), "made");
    }
}

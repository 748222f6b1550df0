//! What the consumer loop makes of what the client hands it: a consumed
//! record as the handler's message, and consumer errors logged without
//! flooding.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::Message as _;
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;

use super::super::dlq;
use crate::kafka;
use crate::wasm::{Header, Message};

/// Copies a consumed message into the handler's message type. A header key
/// that is not UTF-8 is handed over lossily decoded; its bytes are returned
/// beside the message, by header index, for its dead letter.
pub(super) fn to_message(m: &BorrowedMessage<'_>, topic: &str) -> (Message, dlq::RawKeys) {
    let mut raw_keys = dlq::RawKeys::new();
    let headers = m.headers().map_or_else(Vec::new, |hs| {
        kafka::headers::read(hs)
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                let key = match String::from_utf8(h.key) {
                    Ok(key) => key,
                    Err(e) => {
                        let key = String::from_utf8_lossy(e.as_bytes()).into_owned();
                        raw_keys.push((i, e.into_bytes()));
                        key
                    }
                };
                Header {
                    key,
                    value: h.value.unwrap_or_default(),
                }
            })
            .collect()
    });
    let message = Message {
        topic: topic.to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
        attempt: 1,
    };
    (message, raw_keys)
}

/// Logs consumer errors without flooding: each distinct error at most once
/// every 30 seconds, with a count of the repeats.
#[derive(Default)]
pub(super) struct ErrorLog {
    /// Per error text: when it was last logged, and repeats since.
    last: HashMap<String, (Option<Instant>, u64)>,
    /// Record errors already logged.
    once: Vec<String>,
}

impl ErrorLog {
    const EVERY: Duration = Duration::from_secs(30);

    /// Logs a record error the first time it comes; its repeats are
    /// counted in metrics and health.
    pub(super) fn report_once(&mut self, error: &KafkaError) {
        let text = error.to_string();
        if !self.once.contains(&text) {
            tracing::warn!(
                "Kafka consumer: {text}; said once, its repeats are counted in \
                 sluice_consumer_record_errors_total"
            );
            self.once.push(text);
        }
    }

    pub(super) fn report(&mut self, error: &KafkaError) {
        let text = error.to_string();
        let now = Instant::now();
        let (logged, repeats) = self.last.entry(text.clone()).or_insert((None, 0));
        *repeats += 1;
        if logged.is_none_or(|at| now.duration_since(at) >= Self::EVERY) {
            tracing::warn!(repeats = *repeats, "Kafka consumer: {text}");
            *logged = Some(now);
            *repeats = 0;
        }
    }
}

//! Fetching the original record a cut dead letter points at, so that a
//! replay produces the message's exact bytes and never the prefix the dead
//! letter holds.
//!
//! Owns one plain assigned read per cut letter; it never joins a consumer
//! group nor commits an offset.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message as _, Offset, TopicPartitionList};

use super::{Envelope, ReplayError};
use crate::config::Config;
use crate::kafka::headers::{self, RawHeader};

/// A message to replay: exact key, value and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub value: Option<Vec<u8>>,
    /// Its headers, in order.
    pub headers: Vec<RawHeader>,
}

impl Original {
    /// The message as a complete envelope holds it.
    pub fn from_envelope(envelope: &Envelope) -> Original {
        Original {
            key: envelope.key.clone(),
            value: envelope.value.clone(),
            headers: envelope.headers.clone(),
        }
    }

    fn from_record(m: &BorrowedMessage<'_>) -> Original {
        Original {
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers: m.headers().map(headers::read).unwrap_or_default(),
        }
    }
}

/// What fetching a cut letter's original found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginalFetch {
    /// The record at exactly the letter's coordinates, agreeing with the
    /// bytes the letter holds.
    Found(Original),
    /// The record is no longer there: why, in words.
    Gone(String),
    /// The broker did not answer: why, in words.
    Failed(String),
}

/// Fetches the original record of `envelope` (which is cut) from its
/// topic, partition and offset, waiting at most `timeout`.
///
/// The read starts at the offset; a broker that no longer holds it answers
/// from another offset (librdkafka resets a position out of range to the
/// earliest one) or reports the partition's end, and both mean the record
/// is gone. A record found there whose bytes do not begin with the ones
/// the letter holds is another message (the topic was recreated) and is
/// gone too.
pub fn fetch(
    config: &Config,
    bootstrap: &str,
    envelope: &Envelope,
    timeout: Duration,
) -> OriginalFetch {
    let (topic, partition, offset) = (
        envelope.original_topic.as_str(),
        envelope.original_partition,
        envelope.original_offset,
    );
    let place = format!("{topic}/{partition}@{offset}");
    let held = envelope.held().unwrap_or_default();
    let gone = |why: String| {
        OriginalFetch::Gone(format!(
            "original record {place} is no longer in the topic ({why}); the dead letter holds \
             only {held}"
        ))
    };
    let consumer = match reader(config, bootstrap, topic, partition, offset) {
        Ok(consumer) => consumer,
        Err(e) => return OriginalFetch::Failed(format!("cannot read {place}: {e}")),
    };
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match consumer.poll(left.min(Duration::from_millis(200))) {
            Some(Ok(m)) if m.topic() == topic && m.partition() == partition => {
                if m.offset() != offset {
                    return gone(format!("the partition answered offset {}", m.offset()));
                }
                let original = Original::from_record(&m);
                return if holds_prefix(envelope, &original) {
                    OriginalFetch::Found(original)
                } else {
                    gone("the record there is another message: its bytes differ".into())
                };
            }
            Some(Ok(_)) => {}
            Some(Err(KafkaError::PartitionEOF(p))) if p == partition => {
                return gone("the partition ends before it".into());
            }
            Some(Err(e)) => last_error = Some(e.to_string()),
            None => {}
        }
    }
    OriginalFetch::Failed(format!(
        "no answer for original record {place} within {timeout:?}{}",
        last_error.map_or_else(String::new, |e| format!(": {e}"))
    ))
}

/// A consumer assigned to one offset. An offset out of range starts from
/// the earliest one, whose record is then seen to be another.
fn reader(
    config: &Config,
    bootstrap: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<BaseConsumer, ReplayError> {
    let consumer = super::reader(config, bootstrap, "original-record reader")?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(offset))
        .and_then(|()| consumer.assign(&list))
        .map_err(|source| ReplayError::Kafka {
            what: format!("assigning {topic}/{partition}"),
            source,
        })?;
    Ok(consumer)
}

/// Whether `original` begins with what the cut `envelope` holds: each cut
/// part a prefix, each whole part equal.
fn holds_prefix(envelope: &Envelope, original: &Original) -> bool {
    let t = &envelope.truncation;
    let agrees = |held: &Option<Vec<u8>>, whole: &Option<Vec<u8>>, cut: bool| match (held, whole) {
        (None, whole) => cut || whole.is_none(),
        (Some(held), Some(whole)) if cut => whole.starts_with(held),
        (held, whole) => held == whole,
    };
    let headers_agree = envelope.headers.len() <= original.headers.len()
        && (t.headers.is_some() || envelope.headers.len() == original.headers.len())
        && envelope
            .headers
            .iter()
            .zip(&original.headers)
            .enumerate()
            .all(|(i, (held, whole))| {
                let cut = t.header_values.iter().any(|(j, _)| *j == i);
                held.key == whole.key && agrees(&held.value, &whole.value, cut)
            });
    agrees(&envelope.key, &original.key, t.key.is_some())
        && agrees(&envelope.value, &original.value, t.value.is_some())
        && headers_agree
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut_envelope(value: &str) -> Envelope {
        let letter = serde_json::json!({
            "original_topic": "orders",
            "original_message": {"offset": "7", "partition": 0, "key": "k", "value": value,
                                 "value_truncated": true, "original_value_size": 9,
                                 "headers": [{"key": "h", "value": "1"}]},
            "failure_timestamp": "2026-01-01T00:00:00.000Z",
            "error_type": "HandlerError",
        });
        Envelope::decode(Some(letter.to_string().as_bytes())).expect("a valid envelope")
    }

    fn original(key: &str, value: &str, headers: &[(&str, &str)]) -> Original {
        Original {
            key: Some(key.as_bytes().to_vec()),
            value: Some(value.as_bytes().to_vec()),
            headers: headers
                .iter()
                .map(|(k, v)| RawHeader {
                    key: k.as_bytes().to_vec(),
                    value: Some(v.as_bytes().to_vec()),
                })
                .collect(),
        }
    }

    #[test]
    fn the_original_must_begin_with_what_the_letter_holds() {
        let e = cut_envelope("abc");
        assert!(holds_prefix(&e, &original("k", "abcdefghi", &[("h", "1")])));
        assert!(!holds_prefix(
            &e,
            &original("k", "xbcdefghi", &[("h", "1")])
        ));
        assert!(
            !holds_prefix(&e, &original("other", "abcdefghi", &[("h", "1")])),
            "a key that was not cut must be equal"
        );
        assert!(
            !holds_prefix(&e, &original("k", "abcdefghi", &[("h", "1"), ("g", "2")])),
            "headers that were not cut must all be there"
        );
    }
}

//! Replaying dead letters: each original message produced back to its
//! original topic with its exact key, value and headers, plus the replay
//! headers, at a bounded rate, with every acknowledgement awaited.
//!
//! Owns the replay producer; it never reads nor commits anything.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use tokio::time::Instant;

use super::{
    DLQ_OFFSET_HEADER, DLQ_PARTITION_HEADER, DlqRecord, Envelope, REPLAY_COUNT_HEADER,
    REPLAY_HEADERS, REPLAYED_AT_HEADER, ReplayError,
};
use crate::config::Config;
use crate::pipeline::CORRELATION_HEADER;
use crate::pipeline::dlq::iso8601_millis;

/// How a replay runs.
#[derive(Debug, Clone, Copy)]
pub struct ReplayOptions {
    /// Report what would be replayed; produce nothing.
    pub dry_run: bool,
    /// Most messages produced per second (0 or less: no limit).
    pub rate_limit: f64,
    /// A message already replayed this many times (or more) is not
    /// replayed again.
    pub max_replay_count: u32,
}

/// What happened to one selected dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Produced and acknowledged.
    Replayed {
        /// Where it was written.
        partition: i32,
        /// Its new offset.
        offset: i64,
    },
    /// Would be replayed (dry run).
    WouldReplay,
    /// Not replayed: already replayed `--max-replay-count` times.
    OverLimit {
        /// Why, in words.
        reason: String,
    },
    /// Not replayed: the record is not a valid envelope (or its replay
    /// count is unreadable).
    Unreadable {
        /// Why, in words.
        reason: String,
    },
    /// The produce failed.
    Failed {
        /// librdkafka's or the broker's error.
        reason: String,
    },
}

impl Outcome {
    /// A stable name for output: `replayed`, `would_replay`,
    /// `skipped_over_limit`, `skipped_unreadable` or `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Replayed { .. } => "replayed",
            Outcome::WouldReplay => "would_replay",
            Outcome::OverLimit { .. } => "skipped_over_limit",
            Outcome::Unreadable { .. } => "skipped_unreadable",
            Outcome::Failed { .. } => "failed",
        }
    }
}

/// One selected dead letter and what happened to it.
#[derive(Debug, Clone)]
pub struct ReplayResult<'a> {
    /// The dead letter.
    pub record: &'a DlqRecord,
    /// The original message's previous replay count, when readable.
    pub previous_replays: Option<u32>,
    /// What happened.
    pub outcome: Outcome,
}

/// How many dead letters ended each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Produced and acknowledged.
    pub replayed: usize,
    /// Would be replayed (dry run).
    pub would_replay: usize,
    /// Skipped: replay count at or over the limit.
    pub skipped_over_limit: usize,
    /// Skipped: not a valid envelope.
    pub skipped_unreadable: usize,
    /// Produce failed.
    pub failed: usize,
}

impl ReplaySummary {
    /// Counts `results`.
    pub fn of(results: &[ReplayResult<'_>]) -> ReplaySummary {
        let mut s = ReplaySummary::default();
        for r in results {
            *match r.outcome {
                Outcome::Replayed { .. } => &mut s.replayed,
                Outcome::WouldReplay => &mut s.would_replay,
                Outcome::OverLimit { .. } => &mut s.skipped_over_limit,
                Outcome::Unreadable { .. } => &mut s.skipped_unreadable,
                Outcome::Failed { .. } => &mut s.failed,
            } += 1;
        }
        s
    }
}

/// Replays the `selected` dead letters in order. Returns one result per
/// record; produce failures are results, not errors (the error is for a
/// producer that cannot be created).
pub async fn replay<'a>(
    config: &Config,
    selected: &'a [DlqRecord],
    options: ReplayOptions,
) -> Result<Vec<ReplayResult<'a>>, ReplayError> {
    let mut results = Vec::with_capacity(selected.len());
    let mut to_send = Vec::new();
    for record in selected {
        let (previous_replays, outcome) = judge(record, options.max_replay_count);
        if outcome.is_none() {
            to_send.push(results.len());
        }
        results.push(ReplayResult {
            record,
            previous_replays,
            outcome: outcome.unwrap_or(Outcome::WouldReplay),
        });
    }
    if options.dry_run || to_send.is_empty() {
        return Ok(results);
    }

    let bootstrap = super::bootstrap(config)?;
    let producer = producer(config, bootstrap)?;
    let mut partitions: HashMap<String, Result<i32, String>> = HashMap::new();
    let interval =
        (options.rate_limit > 0.0).then(|| Duration::from_secs_f64(1.0 / options.rate_limit));
    let start = Instant::now();
    let mut pending: VecDeque<(usize, DeliveryFuture)> = VecDeque::new();
    for (n, &i) in to_send.iter().enumerate() {
        let record = results[i].record;
        let Ok(envelope) = &record.envelope else {
            continue;
        };
        let count = partitions
            .entry(envelope.original_topic.clone())
            .or_insert_with(|| partition_count(&producer, config, &envelope.original_topic));
        let count = match count {
            Ok(count) => *count,
            Err(reason) => {
                results[i].outcome = Outcome::Failed {
                    reason: reason.clone(),
                };
                continue;
            }
        };
        if let Some(interval) = interval {
            tokio::time::sleep_until(start + interval.mul_f64(n as f64)).await;
        }
        let previous = results[i].previous_replays.unwrap_or(0);
        let headers = replay_headers(record, envelope, previous, SystemTime::now());
        let mut out = FutureRecord::<[u8], [u8]>::to(&envelope.original_topic).headers(headers);
        if let Some(key) = &envelope.key {
            out = out.key(key);
        }
        if let Some(value) = &envelope.value {
            out = out.payload(value);
        }
        // The original partition keeps the message beside its key's
        // siblings; a topic that shrank falls back to the key partitioner.
        if envelope.original_partition < count {
            out = out.partition(envelope.original_partition);
        }
        loop {
            match producer.send_result(out) {
                Ok(delivery) => {
                    pending.push_back((i, delivery));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    out = back;
                    // The local queue is full: wait for the oldest delivery.
                    match pending.pop_front() {
                        Some((j, delivery)) => results[j].outcome = delivered(delivery.await),
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                Err((e, _)) => {
                    results[i].outcome = Outcome::Failed {
                        reason: e.to_string(),
                    };
                    break;
                }
            }
        }
    }
    for (j, delivery) in pending {
        results[j].outcome = delivered(delivery.await);
    }
    Ok(results)
}

/// Decides whether a record may be replayed: `None` if so, else why not;
/// with the previous replay count when it is readable.
fn judge(record: &DlqRecord, max_replay_count: u32) -> (Option<u32>, Option<Outcome>) {
    let envelope = match &record.envelope {
        Ok(e) => e,
        Err(reason) => {
            return (
                None,
                Some(Outcome::Unreadable {
                    reason: format!("not a dead-letter envelope: {reason}"),
                }),
            );
        }
    };
    match envelope.replay_count() {
        Err(reason) => (None, Some(Outcome::Unreadable { reason })),
        Ok(count) if count >= max_replay_count => (
            Some(count),
            Some(Outcome::OverLimit {
                reason: format!(
                    "already replayed {count} time(s), at or over --max-replay-count {max_replay_count}"
                ),
            }),
        ),
        Ok(count) => (Some(count), None),
    }
}

/// The replayed record's headers: the original ones in order (without
/// earlier replay headers), the correlation id of the failed handling if the
/// original carried none (so the replay's outputs can be traced back to the
/// dead letter), then the replay headers.
fn replay_headers(
    record: &DlqRecord,
    envelope: &Envelope,
    previous: u32,
    now: SystemTime,
) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(envelope.headers.len() + 5);
    for (key, value) in &envelope.headers {
        if REPLAY_HEADERS.contains(&key.as_str()) {
            continue;
        }
        headers = headers.insert(KafkaHeader {
            key,
            value: Some(value),
        });
    }
    let has_correlation = envelope
        .headers
        .iter()
        .any(|(k, _)| k == CORRELATION_HEADER);
    if !has_correlation && !envelope.correlation_id.is_empty() {
        headers = headers.insert(KafkaHeader {
            key: CORRELATION_HEADER,
            value: Some(&envelope.correlation_id),
        });
    }
    let count = previous.saturating_add(1).to_string();
    let at = iso8601_millis(now);
    let offset = record.dlq_offset.to_string();
    let partition = record.dlq_partition.to_string();
    for (key, value) in [
        (REPLAY_COUNT_HEADER, &count),
        (REPLAYED_AT_HEADER, &at),
        (DLQ_OFFSET_HEADER, &offset),
        (DLQ_PARTITION_HEADER, &partition),
    ] {
        headers = headers.insert(KafkaHeader {
            key,
            value: Some(value),
        });
    }
    headers
}

/// An idempotent producer that needs every in-sync replica's acknowledgement,
/// whatever the configuration says: a replay must not lose nor duplicate.
fn producer(config: &Config, bootstrap: &str) -> Result<FutureProducer, ReplayError> {
    let mut c = crate::kafka::producer_config(config, bootstrap);
    c.set("acks", "all");
    c.set("enable.idempotence", "true");
    c.create().map_err(|source| ReplayError::Kafka {
        what: "creating the replay producer".into(),
        source,
    })
}

/// How many partitions `topic` has, or why it cannot be written.
fn partition_count(producer: &FutureProducer, config: &Config, topic: &str) -> Result<i32, String> {
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), config.kafka.timeout())
        .map_err(|e| format!("cannot read the metadata of {topic:?}: {e}"))?;
    let count = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .sum::<usize>();
    if count == 0 {
        return Err(format!("original topic {topic:?} does not exist"));
    }
    Ok(i32::try_from(count).unwrap_or(i32::MAX))
}

/// The outcome of an awaited delivery (the error: the producer went away).
fn delivered<E>(result: Result<OwnedDeliveryResult, E>) -> Outcome {
    match result {
        Ok(Ok(delivery)) => Outcome::Replayed {
            partition: delivery.partition,
            offset: delivery.offset,
        },
        Ok(Err((e, _))) => Outcome::Failed {
            reason: e.to_string(),
        },
        Err(_) => Outcome::Failed {
            reason: "the producer went away before acknowledging".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers as _;

    use super::*;

    fn record(headers: serde_json::Value) -> DlqRecord {
        let value = serde_json::json!({
            "original_topic": "orders",
            "original_message": {"key": "k", "value": "v", "offset": "3", "partition": 1,
                                 "timestamp": 5, "headers": headers},
            "failure_reason": "r",
            "failure_timestamp": "2026-01-01T00:00:00.000Z",
            "correlation_id": "corr-9",
            "retry_count": 0,
            "error_type": "HandlerError",
            "module": "m",
            "module_hash": "h",
        });
        DlqRecord::decode("dlq", 2, 40, Vec::new(), Some(value.to_string().as_bytes()))
    }

    fn names(headers: &OwnedHeaders) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn replay_headers_count_up_and_replace_earlier_ones() {
        let r = record(serde_json::json!([
            {"key": "trace", "value": "t"},
            {"key": "x-replay-count", "value": "2"},
            {"key": "x-replayed-at", "value": "then"},
        ]));
        let Ok(e) = &r.envelope else {
            panic!("a valid envelope")
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_736_937_000_123);
        let h = names(&replay_headers(&r, e, 2, now));
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            h,
            [
                ("trace", "t"),
                ("correlation_id", "corr-9"),
                ("x-replay-count", "3"),
                ("x-replayed-at", "2025-01-15T10:30:00.123Z"),
                ("x-original-dlq-offset", "40"),
                ("x-original-dlq-partition", "2"),
            ]
        );
    }

    #[test]
    fn the_replay_limit_and_unreadable_records_skip() {
        let twice = record(serde_json::json!([{"key": "x-replay-count", "value": "2"}]));
        assert_eq!(judge(&twice, 3), (Some(2), None));
        assert!(matches!(
            judge(&twice, 2),
            (Some(2), Some(Outcome::OverLimit { .. }))
        ));
        let garbled = record(serde_json::json!([{"key": "x-replay-count", "value": "many"}]));
        assert!(matches!(
            judge(&garbled, 5),
            (None, Some(Outcome::Unreadable { .. }))
        ));
        let junk = DlqRecord::decode("dlq", 0, 0, Vec::new(), Some(b"junk"));
        assert!(matches!(
            judge(&junk, 5),
            (None, Some(Outcome::Unreadable { .. }))
        ));
    }
}

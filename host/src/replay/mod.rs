//! The dead-letter tool's work: reading the dead-letter topics named by the
//! configuration, selecting records with a [`Filter`], counting them
//! ([`Stats`]) and replaying them to their original topics ([`replay()`]),
//! once: a replay's position is kept as the committed offsets of the tool's
//! own consumer group (see `position`).
//!
//! Owns reading and writing dead-letter records outside the daemon; it
//! never joins a consumer group, commits only the replay position, and it
//! does not print (see `cli::dlq`). The record format belongs to
//! [`crate::pipeline::dlq`], which writes it.

mod envelope;
mod original;
mod outcome;
mod position;
mod produce;
mod time;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::{Message as _, Offset, TopicPartitionList};

use crate::config::{Config, EMBEDDED_BROKER};
use crate::kafka::headers::{self, RawHeader};
use crate::policy::ErrorType;

pub use envelope::{
    Cut, DLQ_OFFSET_HEADER, DLQ_PARTITION_HEADER, Envelope, REPLAY_COUNT_HEADER, REPLAY_HEADERS,
    REPLAYED_AT_HEADER, Truncation,
};
pub use outcome::{LetterOutcome, ReplayOptions, ReplayResult, ReplaySummary};
pub use position::Positions;
pub use produce::{ReplayRun, replay};
pub use time::{parse_duration, parse_rfc3339, parse_time_bound};

/// Why the dead-letter tool cannot do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The configuration names the in-process development broker.
    #[error(
        "kafka.bootstrap_servers is {EMBEDDED_BROKER:?}: the embedded broker lives inside the \
         daemon's process and cannot be reached from here; point the config (or \
         KAFKA_BOOTSTRAP_SERVERS) at a real broker"
    )]
    EmbeddedBroker,
    /// Neither `kafka.dead_letter_topic` nor any route's `dead_letter_topic`
    /// is set.
    #[error(
        "the config names no dead-letter topic (kafka.dead_letter_topic or a route's \
         dead_letter_topic); pass one with --dlq-topic"
    )]
    NoDeadLetterTopic,
    /// A dead-letter topic is not on the broker.
    #[error("dead-letter topic {topic:?} does not exist on {bootstrap}")]
    TopicMissing {
        /// The topic.
        topic: String,
        /// The brokers asked.
        bootstrap: String,
    },
    /// An `--error-type` that no dead letter can have.
    #[error("unknown error type {name:?}: expected one of {allowed}")]
    UnknownErrorType {
        /// What was given.
        name: String,
        /// The allowed names, comma-separated.
        allowed: String,
    },
    /// A time bound that is neither RFC 3339 nor a duration.
    #[error(
        "{value:?} is not a time: expected RFC 3339 (2026-11-27T10:00:00Z) or a duration \
         ago (90s, 15m, 2h, 7d)"
    )]
    BadTime {
        /// What was given.
        value: String,
    },
    /// A Kafka client could not be created or a request failed.
    #[error("{what}")]
    Kafka {
        /// What was being done.
        what: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// A file the connection settings name (a certificate, a mounted
    /// secret) cannot be read.
    #[error(transparent)]
    Settings(#[from] crate::config::ConfigError),
}

/// One record read from a dead-letter topic.
#[derive(Debug, Clone)]
pub struct DlqRecord {
    /// The dead-letter topic.
    pub dlq_topic: String,
    /// Its partition.
    pub dlq_partition: i32,
    /// Its offset.
    pub dlq_offset: i64,
    /// The dead-letter record's own headers (`original_topic`,
    /// `error_type`, ...), used to describe records whose value is
    /// unreadable. Read as bytes: a record in the topic may come from any
    /// client, with keys that are not UTF-8.
    pub headers: Vec<RawHeader>,
    /// The decoded envelope, or why the value is not one.
    pub envelope: Result<Envelope, String>,
}

impl DlqRecord {
    /// Decodes a record read from a dead-letter topic.
    pub fn decode(
        dlq_topic: &str,
        dlq_partition: i32,
        dlq_offset: i64,
        headers: Vec<RawHeader>,
        value: Option<&[u8]>,
    ) -> DlqRecord {
        DlqRecord {
            dlq_topic: dlq_topic.to_owned(),
            dlq_partition,
            dlq_offset,
            headers,
            envelope: Envelope::decode(value),
        }
    }

    /// The last header of the dead-letter record itself named `name`, as text.
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|h| h.key == name.as_bytes())
            .and_then(|h| String::from_utf8(h.value.clone()?).ok())
    }

    /// The original topic: from the envelope, or the record's header when
    /// the envelope is unreadable.
    pub fn original_topic(&self) -> Option<String> {
        match &self.envelope {
            Ok(e) => Some(e.original_topic.clone()),
            Err(_) => self.header("original_topic"),
        }
    }

    /// The error type's name, from the envelope or the record's header.
    pub fn error_type(&self) -> Option<String> {
        match &self.envelope {
            Ok(e) => Some(e.error_type.clone()),
            Err(_) => self.header("error_type"),
        }
    }

    /// The correlation id, from the envelope or the record's header.
    pub fn correlation_id(&self) -> Option<String> {
        match &self.envelope {
            Ok(e) => Some(e.correlation_id.clone()),
            Err(_) => self.header("correlation_id"),
        }
    }

    /// When it failed (ms since the epoch), from the envelope or the
    /// record's header.
    pub fn failed_at_ms(&self) -> Option<i64> {
        match &self.envelope {
            Ok(e) => Some(e.failed_at_ms),
            Err(_) => self
                .header("failure_timestamp")
                .and_then(|t| parse_rfc3339(&t)),
        }
    }
}

/// Parses an `--error-type` name, refusing any but [`ErrorType::ALL`].
pub fn parse_error_type(name: &str) -> Result<ErrorType, ReplayError> {
    ErrorType::ALL
        .into_iter()
        .find(|t| t.as_str() == name)
        .ok_or_else(|| ReplayError::UnknownErrorType {
            name: name.to_owned(),
            allowed: ErrorType::ALL.map(ErrorType::as_str).join(", "),
        })
}

/// Parses a `--since` or `--until` value relative to now.
pub fn parse_time(value: &str) -> Result<i64, ReplayError> {
    parse_time_bound(value, std::time::SystemTime::now()).ok_or_else(|| ReplayError::BadTime {
        value: value.to_owned(),
    })
}

/// Which dead letters a command works on. Every condition set must hold; a
/// record with an unreadable envelope is judged on its own headers, and
/// fails a condition whose field it lacks.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The original topic.
    pub topic: Option<String>,
    /// The error type.
    pub error_type: Option<ErrorType>,
    /// The correlation id.
    pub correlation_id: Option<String>,
    /// Failed at or after, in ms since the epoch.
    pub since_ms: Option<i64>,
    /// Failed at or before, in ms since the epoch.
    pub until_ms: Option<i64>,
}

impl Filter {
    /// Whether `record` is selected.
    pub fn matches(&self, record: &DlqRecord) -> bool {
        let same = |want: &Option<String>, have: Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        let failed_at = if self.since_ms.is_some() || self.until_ms.is_some() {
            record.failed_at_ms()
        } else {
            None
        };
        same(&self.topic, record.original_topic())
            && same(
                &self.error_type.map(|t| t.as_str().to_owned()),
                record.error_type(),
            )
            && same(&self.correlation_id, record.correlation_id())
            && self
                .since_ms
                .is_none_or(|since| failed_at.is_some_and(|t| t >= since))
            && self
                .until_ms
                .is_none_or(|until| failed_at.is_some_and(|t| t <= until))
    }
}

/// The dead-letter topics to read: `pick` if given, otherwise
/// `kafka.dead_letter_topic` and every route's, each once.
pub fn dlq_topics(config: &Config, pick: Option<&str>) -> Result<Vec<String>, ReplayError> {
    if let Some(topic) = pick {
        return Ok(vec![topic.to_owned()]);
    }
    let topics: BTreeSet<&str> = config
        .kafka
        .dead_letter_topic
        .as_deref()
        .into_iter()
        .chain(
            config
                .routes
                .iter()
                .filter_map(|r| r.dead_letter_topic(&config.kafka)),
        )
        .collect();
    if topics.is_empty() {
        return Err(ReplayError::NoDeadLetterTopic);
    }
    Ok(topics.into_iter().map(str::to_owned).collect())
}

/// The broker addresses, refusing the embedded development broker.
pub fn bootstrap(config: &Config) -> Result<&str, ReplayError> {
    if config.is_embedded() {
        return Err(ReplayError::EmbeddedBroker);
    }
    Ok(&config.kafka.bootstrap_servers)
}

/// Reads every record of the dead-letter `topics`, from the beginning of
/// each partition to its end, sorted by topic, partition and offset.
///
/// The end of a partition is the Fetch response's high watermark
/// (librdkafka's partition EOF), which the fetches bring at no extra
/// request. If a partition never reports its end, reading stops
/// after `idle_timeout` without a new record. No consumer group is joined
/// and no offset is committed.
pub fn read_dead_letters(
    config: &Config,
    topics: &[String],
    idle_timeout: Duration,
) -> Result<Vec<DlqRecord>, ReplayError> {
    let bootstrap = bootstrap(config)?;
    let mut records = Vec::new();
    for topic in topics {
        read_topic(config, bootstrap, topic, idle_timeout, &mut records)?;
    }
    records.sort_by(|a, b| {
        (&a.dlq_topic, a.dlq_partition, a.dlq_offset).cmp(&(
            &b.dlq_topic,
            b.dlq_partition,
            b.dlq_offset,
        ))
    });
    Ok(records)
}

/// A consumer that reads by assignment only: a throwaway group id (which
/// librdkafka requires) that never commits. An offset out of range starts
/// from the earliest one. `what` names the reader in errors.
fn reader(config: &Config, bootstrap: &str, what: &str) -> Result<BaseConsumer, ReplayError> {
    let group = format!("sluice-dlq-tool-{}", uuid::Uuid::new_v4());
    let mut c = crate::kafka::group_client_config(config, bootstrap, &group)?;
    c.set("enable.auto.offset.store", "false");
    c.set("auto.offset.reset", "earliest");
    c.set("enable.partition.eof", "true");
    c.create()
        .map_err(crate::kafka::security::redact)
        .map_err(|source| ReplayError::Kafka {
            what: format!("creating the {what}"),
            source,
        })
}

/// Appends every record of one topic to `out`.
fn read_topic(
    config: &Config,
    bootstrap: &str,
    topic: &str,
    idle_timeout: Duration,
    out: &mut Vec<DlqRecord>,
) -> Result<(), ReplayError> {
    let consumer = reader(config, bootstrap, "dead-letter reader")?;
    let partitions = crate::kafka::partitions_of(consumer.client(), topic, config.kafka.timeout())
        .map_err(|source| ReplayError::Kafka {
            what: format!("reading the metadata of {topic:?} from {bootstrap}"),
            source,
        })?;
    if partitions.is_empty() {
        return Err(ReplayError::TopicMissing {
            topic: topic.to_owned(),
            bootstrap: bootstrap.to_owned(),
        });
    }
    let mut list = TopicPartitionList::new();
    for &p in &partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|source| ReplayError::Kafka {
                what: format!("assigning {topic}/{p}"),
                source,
            })?;
    }
    consumer
        .assign(&list)
        .map_err(|source| ReplayError::Kafka {
            what: format!("assigning {topic}"),
            source,
        })?;

    let mut at_end: BTreeMap<i32, bool> = partitions.iter().map(|&p| (p, false)).collect();
    let mut last_progress = Instant::now();
    while at_end.values().any(|done| !done) {
        if last_progress.elapsed() >= idle_timeout {
            tracing::debug!(
                topic,
                "no end of partition reported; stopped after the idle timeout"
            );
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                // A record past a reported end arrived after reading began.
                if at_end.get(&m.partition()) == Some(&true) {
                    continue;
                }
                let headers = m.headers().map(headers::read).unwrap_or_default();
                out.push(DlqRecord::decode(
                    topic,
                    m.partition(),
                    m.offset(),
                    headers,
                    m.payload(),
                ));
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                last_progress = Instant::now();
                at_end.insert(p, true);
            }
            Some(Err(e)) => tracing::warn!(topic, error = %e, "reading the dead-letter topic"),
            None => {}
        }
    }
    Ok(())
}

/// Counts of the selected dead letters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Every selected record, unreadable ones included.
    pub total: usize,
    /// Records whose value is not a valid envelope.
    pub unreadable: usize,
    /// Readable dead letters by original topic.
    pub by_topic: BTreeMap<String, usize>,
    /// Readable dead letters by error type.
    pub by_error_type: BTreeMap<String, usize>,
    /// The earliest failure timestamp, as written.
    pub oldest: Option<String>,
    /// The latest failure timestamp, as written.
    pub newest: Option<String>,
}

impl Stats {
    /// Counts `records`.
    pub fn of<'a>(records: impl IntoIterator<Item = &'a DlqRecord>) -> Stats {
        let mut stats = Stats::default();
        let mut oldest: Option<(i64, &str)> = None;
        let mut newest: Option<(i64, &str)> = None;
        for r in records {
            stats.total += 1;
            let e = match &r.envelope {
                Ok(e) => e,
                Err(_) => {
                    stats.unreadable += 1;
                    continue;
                }
            };
            *stats.by_topic.entry(e.original_topic.clone()).or_default() += 1;
            *stats.by_error_type.entry(e.error_type.clone()).or_default() += 1;
            let at = (e.failed_at_ms, e.failure_timestamp.as_str());
            if oldest.is_none_or(|o| at.0 < o.0) {
                oldest = Some(at);
            }
            if newest.is_none_or(|n| at.0 > n.0) {
                newest = Some(at);
            }
        }
        stats.oldest = oldest.map(|(_, t)| t.to_owned());
        stats.newest = newest.map(|(_, t)| t.to_owned());
        stats
    }
}

/// A decoded dead letter of the message at offset 3 of `topic`/1, whose
/// headers were `headers`, for the tests.
#[cfg(test)]
fn test_letter(topic: &str, headers: serde_json::Value) -> DlqRecord {
    let value = serde_json::json!({
        "original_topic": topic,
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

#[cfg(test)]
mod tests;

//! What the daemon knows of a partition: its name, what health reads of
//! its worker, its lag, and whether it is stalled or held up by a record
//! the client cannot decode.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

/// A topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

/// As the Kafka client's logs write it: `orders [3]`.
impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}]", self.topic, self.partition)
    }
}

/// A partition held up by a record the Kafka client cannot decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    /// The offset that cannot be read.
    pub offset: i64,
    /// The client's error, as it last came.
    pub error: String,
    /// When the position was first seen at `offset`.
    pub since: Instant,
    /// The client's errors counted since then.
    pub repeats: u64,
}

/// What health needs of a partition with a worker.
#[derive(Debug, Clone, Default)]
pub struct PartitionFlags {
    /// Messages received and not yet finished.
    pub in_flight: Arc<AtomicU64>,
    /// Whether it is paused because its queue is full.
    pub paused: Arc<AtomicBool>,
}

/// A partition's consumer lag, and since when it has stood still.
#[derive(Debug, Clone, Copy)]
pub struct Lag {
    /// Messages between the committed offset and the end of the partition.
    pub lag: i64,
    /// When it last changed (or was last zero).
    pub since: Instant,
}

/// A partition whose lag has not moved for `processing.stall_timeout_seconds`
/// while nothing explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    /// The partition.
    pub partition: TopicPartition,
    /// Its lag.
    pub lag: i64,
    /// How long it has not moved.
    pub for_: Duration,
}

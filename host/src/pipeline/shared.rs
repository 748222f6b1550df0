//! What the consumer loop and every partition worker share: the producer,
//! where offsets are stored, the call slots, the status and the tracer.

use std::sync::Arc;

use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaResult;
use tokio::sync::Semaphore;

use super::delivery::Producer;
use crate::breaker::Breaker;
use crate::status::Status;
use crate::trace::Tracer;

/// State shared by the consumer loop and every partition worker.
pub struct Shared {
    pub producer: Producer,
    /// The broker circuit breaker: opens when records cannot be produced.
    /// Health and metrics see it through [`Status::observe_broker`].
    pub broker: Arc<Breaker>,
    /// Where processed offsets are stored: the consumer.
    pub offsets: Arc<dyn StoreOffset>,
    /// Bounds how many handler calls run at once.
    pub slots: Arc<Semaphore>,
    /// `processing.batch_size`: the most messages a worker queues.
    pub batch_size: usize,
    /// `processing.output_correlation_id`: whether outputs carry the
    /// message's correlation id.
    pub output_correlation_id: bool,
    /// The largest record the producer takes (`message.max.bytes`): dead
    /// letters are cut to fit in it.
    pub max_record_bytes: usize,
    pub status: Arc<Status>,
    /// Exports each message's span; `None` without `telemetry.otlp_endpoint`.
    pub tracer: Option<Arc<Tracer>>,
}

/// Stores a partition's processed offset for the next commit: the
/// consumer, seen by the workers without its rebalance context's type.
pub trait StoreOffset: Send + Sync {
    /// Stores `offset` of `topic`/`partition` as processed.
    fn store_offset(&self, topic: &str, partition: i32, offset: i64) -> KafkaResult<()>;
}

impl<C: ConsumerContext + 'static> StoreOffset for StreamConsumer<C> {
    fn store_offset(&self, topic: &str, partition: i32, offset: i64) -> KafkaResult<()> {
        Consumer::store_offset(self, topic, partition, offset)
    }
}

//! The consumer's callbacks, on the thread that polls it: rebalances,
//! commits, errors and statistics. They decide nothing about partitions:
//! they pass the group's assignments and revocations to the consumer loop,
//! whose machine decides, and do only what cannot wait for it (stop a
//! revoked partition's worker from storing, and commit what was stored,
//! before the partition goes elsewhere).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::{Notify, mpsc};

use super::super::gate::Gate;
use crate::kafka;
use crate::status::{Status, TopicPartition};

/// Each assigned partition's next fetch offset and high watermark, from one
/// statistics report.
pub type Positions = Vec<(TopicPartition, i64, i64)>;

/// A change of the group's assignment, in the order the callbacks saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupEvent {
    Assigned(Vec<TopicPartition>),
    Revoked(Vec<TopicPartition>),
}

/// Receives the consumer's callbacks on the polling thread.
pub struct RebalanceContext {
    /// Gates of the partitions with a live worker.
    pub(super) gates: Mutex<HashMap<TopicPartition, Arc<Gate>>>,
    /// Assignment changes since the consumer loop last looked.
    group: Mutex<Vec<GroupEvent>>,
    /// Whether `group` may hold anything: the loop looks before every
    /// message, and takes the lock only when it is set.
    pending: AtomicBool,
    /// Wakes the loop when `group` has something.
    pub(super) wake: Notify,
    status: Arc<Status>,
    /// The client's settings, to say why the brokers refuse it.
    identity: kafka::connect::Identity,
    /// Each statistics report's fetch positions, for the consumer loop.
    positions: mpsc::UnboundedSender<Positions>,
}

impl RebalanceContext {
    /// The context of the daemon's consumer made with `config`, reporting
    /// into `status` and sending fetch positions to `positions`.
    pub fn new(
        status: Arc<Status>,
        config: &rdkafka::ClientConfig,
        positions: mpsc::UnboundedSender<Positions>,
    ) -> RebalanceContext {
        RebalanceContext {
            positions,
            gates: Mutex::new(HashMap::new()),
            group: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
            wake: Notify::new(),
            status,
            identity: kafka::connect::Identity::of(config),
        }
    }

    /// The assignment changes since the last call, in order.
    pub(super) fn take_group_events(&self) -> Vec<GroupEvent> {
        if !self.pending.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.group.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn push(&self, event: GroupEvent) {
        self.group
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
        self.pending.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

fn partitions(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

impl ClientContext for RebalanceContext {
    /// A connection failure that the settings cause (a refused login, an
    /// untrusted certificate) shows in health, logged once; librdkafka's
    /// other errors are logged as they come.
    fn error(&self, error: KafkaError, reason: &str) {
        let failure = self.identity.classify(error.rdkafka_error_code(), reason);
        match failure {
            Some(failure) => self.status.set_connect_failure(Some(failure)),
            None => tracing::error!("librdkafka: {error}: {reason}"),
        }
    }

    /// librdkafka's periodic statistics: consumer lag per partition, and
    /// whether any broker is up.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lag = BTreeMap::new();
        let mut positions = Vec::new();
        for (topic, t) in &statistics.topics {
            for (&partition, p) in &t.partitions {
                if partition >= 0 && p.consumer_lag >= 0 {
                    lag.insert(TopicPartition::new(topic, partition), p.consumer_lag);
                }
                if partition >= 0 && p.fetch_state == "active" {
                    positions.push((
                        TopicPartition::new(topic, partition),
                        p.next_offset,
                        p.hi_offset,
                    ));
                }
            }
        }
        // The loop is gone only at shutdown.
        let _ = self.positions.send(positions);
        self.status.set_lag(lag, Instant::now());
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        self.status.set_reachable(up);
    }
}

impl ConsumerContext for RebalanceContext {
    /// Revoked partitions store nothing more from here on; what they stored
    /// is committed before they go elsewhere.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let revoked = partitions(list);
                {
                    let mut gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
                    for tp in &revoked {
                        if let Some(gate) = gates.remove(tp) {
                            gate.revoke();
                        }
                    }
                }
                self.push(GroupEvent::Revoked(revoked));
                let _ = commit(consumer, CommitMode::Sync);
                tracing::info!(partitions = list.count(), "partitions revoked");
            }
            Rebalance::Assign(list) => {
                tracing::info!(partitions = list.count(), "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!("rebalance error: {e}"),
        }
    }

    /// The partitions assigned go to the loop, whose machine sets each to
    /// fetch or to stay paused.
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Ok(held) = consumer.assignment() {
            self.status.set_assigned(held.count(), Instant::now());
        }
        if let Rebalance::Assign(list) = rebalance {
            self.push(GroupEvent::Assigned(partitions(list)));
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(offsets = ?offsets.to_topic_map(), "offsets committed"),
            Err(e) => {
                tracing::warn!(offsets = ?offsets.to_topic_map(), "offset commit failed: {e}")
            }
        }
    }
}

/// What a commit of the stored offsets came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Committed {
    /// The broker took the offsets.
    Done,
    /// Nothing was stored since the last commit (or nothing is assigned).
    NothingNew,
    /// The broker or the client refused it (logged): the messages after
    /// the last commit are delivered again.
    Failed,
}

/// Commits stored offsets.
pub(super) fn commit<C: rdkafka::consumer::Consumer<X>, X: ConsumerContext>(
    consumer: &C,
    mode: CommitMode,
) -> Committed {
    match consumer.commit_consumer_state(mode) {
        Ok(()) => Committed::Done,
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Committed::NothingNew,
        Err(e) => {
            tracing::warn!("offset commit failed: {e}");
            Committed::Failed
        }
    }
}

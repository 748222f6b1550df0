//! A partition's gate: what the consumer loop, the rebalance callback and
//! the partition's worker share about it. Whether its offsets may still be
//! stored (decided under one lock, so that nothing is stored once the
//! partition is revoked), where it starts again should its worker end
//! early, and the few things kept aside for its dead letters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

use super::dlq::RawKeys;
use super::shared::Shared;
use crate::status::{PartitionFlags, TopicPartition};

/// Decides, under one lock, whether a partition's offsets may still be
/// stored: once it is revoked nothing more is stored for it.
pub struct Gate {
    revoked: Mutex<bool>,
    /// Cancelled on revocation and on shutdown: the worker stops taking
    /// messages.
    pub cancel: CancellationToken,
    /// Set by the main loop while the partition is paused for a full queue.
    pub paused: Arc<AtomicBool>,
    /// Messages handed to the worker and not yet finished.
    pub in_flight: Arc<AtomicU64>,
    /// The offset the partition resumes from should its worker stop
    /// early: the first message handed to it, then the one after the last
    /// offset stored.
    resume_at: AtomicI64,
    /// The header keys that were not UTF-8, by offset, for dead letters:
    /// rare, so kept aside rather than with every message.
    raw_keys: Mutex<BTreeMap<i64, RawKeys>>,
    /// Whether `raw_keys` may hold anything.
    has_raw_keys: AtomicBool,
    /// The offsets the Kafka client could not decode, with its error: the
    /// worker dead-letters them without a call.
    undecodable: Mutex<BTreeMap<i64, String>>,
    /// Whether `undecodable` may hold anything.
    has_undecodable: AtomicBool,
}

impl Gate {
    /// The gate of a partition whose first message is at `first_offset`.
    pub fn new(cancel: CancellationToken, first_offset: i64) -> Gate {
        Gate {
            revoked: Mutex::new(false),
            cancel,
            paused: Arc::new(AtomicBool::new(false)),
            in_flight: Arc::new(AtomicU64::new(0)),
            resume_at: AtomicI64::new(first_offset),
            raw_keys: Mutex::new(BTreeMap::new()),
            has_raw_keys: AtomicBool::new(false),
            undecodable: Mutex::new(BTreeMap::new()),
            has_undecodable: AtomicBool::new(false),
        }
    }

    /// What health reads of the partition.
    pub fn flags(&self) -> PartitionFlags {
        PartitionFlags {
            in_flight: self.in_flight.clone(),
            paused: self.paused.clone(),
        }
    }

    /// Where the partition resumes should its worker stop early: nothing
    /// before it is lost, since every offset before it is stored.
    pub fn resume_at(&self) -> i64 {
        self.resume_at.load(Ordering::Acquire)
    }

    /// Keeps the bytes of a message's header keys that were not UTF-8.
    pub fn keep_raw_keys(&self, offset: i64, keys: RawKeys) {
        self.raw_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(offset, keys);
        self.has_raw_keys.store(true, Ordering::Release);
    }

    /// The bytes of the message's header keys that were not UTF-8.
    pub fn raw_keys(&self, offset: i64) -> RawKeys {
        if !self.has_raw_keys.load(Ordering::Acquire) {
            return RawKeys::new();
        }
        self.raw_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&offset)
            .cloned()
            .unwrap_or_default()
    }

    /// Marks the message at `offset` as one the Kafka client could not
    /// decode, with its error.
    pub fn mark_undecodable(&self, offset: i64, error: String) {
        self.undecodable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(offset, error);
        self.has_undecodable.store(true, Ordering::Release);
    }

    /// The client's error if the message at `offset` could not be decoded.
    pub fn take_undecodable(&self, offset: i64) -> Option<String> {
        if !self.has_undecodable.load(Ordering::Acquire) {
            return None;
        }
        self.undecodable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&offset)
    }

    /// Whether the partition was revoked (rather than the daemon stopping).
    pub fn is_revoked(&self) -> bool {
        *self.revoked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the partition revoked: results finishing later are discarded.
    pub fn revoke(&self) {
        *self.revoked.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.cancel.cancel();
    }

    /// Stores `offset` as processed unless the partition was revoked.
    pub fn store(&self, shared: &Shared, tp: &TopicPartition, offset: i64) {
        let revoked = self.revoked.lock().unwrap_or_else(PoisonError::into_inner);
        if *revoked {
            return;
        }
        if let Err(e) = shared.offsets.store_offset(&tp.topic, tp.partition, offset) {
            // After a rebalance librdkafka refuses offsets of partitions no
            // longer assigned; the message will be handled by the new owner.
            tracing::debug!(topic = %tp.topic, partition = tp.partition, offset, "offset not stored: {e}");
        } else {
            tracing::trace!(topic = %tp.topic, partition = tp.partition, offset, "offset stored");
        }
        self.resume_at.store(offset + 1, Ordering::Release);
        if self.has_raw_keys.load(Ordering::Acquire) {
            let mut keys = self.raw_keys.lock().unwrap_or_else(PoisonError::into_inner);
            keys.retain(|&o, _| o > offset);
            self.has_raw_keys.store(!keys.is_empty(), Ordering::Release);
        }
    }
}

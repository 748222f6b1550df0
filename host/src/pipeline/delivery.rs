//! Producing a handled message's records, and learning when the broker has
//! acknowledged every one of them.
//!
//! All the records produced for one message carry the message's [`Receipt`]
//! as their delivery opaque. The producer's delivery thread counts the
//! broker's answers down on it and keeps the records it refused, so a
//! message costs one small allocation for all its records, and the
//! acknowledger wakes only when it waits for a message that is not yet
//! settled.

use std::ffi::c_void;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::config::FromClientConfigAndContext as _;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::calls::CORRELATION_HEADER;
use crate::policy::{ProduceRefusal, Refused};
use crate::trace::{MessageTrace, TRACEPARENT, TRACESTATE};
use crate::wasm::{Header, Output};

/// The producer of outputs and dead-letter records, with a thread that
/// serves its delivery reports.
///
/// The thread sleeps until librdkafka queues an event for the producer, then
/// serves every queued event and sleeps again. (A producer polled with a
/// timeout, as rdkafka's `ThreadedProducer` is, spins on the clock for the
/// last millisecond of every poll, since the remaining time is rounded down
/// to whole milliseconds: about 1% of a core, idle or not.)
pub struct Producer {
    producer: Arc<BaseProducer<Deliveries>>,
    stop: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
}

impl Producer {
    /// Creates the producer and starts its delivery thread.
    pub fn new(config: &ClientConfig) -> KafkaResult<Producer> {
        let producer = Arc::new(BaseProducer::from_config_and_context(config, Deliveries)?);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = std::thread::Builder::new()
            .name("sluice-deliveries".into())
            .spawn({
                let producer = producer.clone();
                let stop = stop.clone();
                move || serve_events(&producer, &stop)
            })
            .map_err(|e| {
                KafkaError::ClientCreation(format!("cannot start the delivery thread: {e}"))
            })?;
        Ok(Producer {
            producer,
            stop,
            poller: Some(poller),
        })
    }
}

impl Deref for Producer {
    type Target = BaseProducer<Deliveries>;

    fn deref(&self) -> &Self::Target {
        &self.producer
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(poller) = self.poller.take() {
            poller.thread().unpark();
            let _ = poller.join();
        }
    }
}

/// The longest the delivery thread sleeps without looking at the queue, in
/// case a wake-up was lost.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The delivery thread: serves the producer's events (delivery reports,
/// errors, statistics) as they are queued, until `stop`.
fn serve_events(producer: &BaseProducer<Deliveries>, stop: &AtomicBool) {
    /// Called by librdkafka, from its own threads, when an event is queued
    /// on the empty queue.
    unsafe extern "C" fn queued(_: *mut rdsys::rd_kafka_t, thread: *mut c_void) {
        // SAFETY: `thread` is the `Thread` below, which outlives the
        // callback's registration.
        unsafe { (*thread.cast::<Thread>()).unpark() };
    }
    let mut me = std::thread::current();
    // SAFETY: the producer's client outlives this function; the queue handle
    // made here is destroyed before it returns, after the callback is
    // removed, so `me` outlives every call of the callback.
    let queue = unsafe { rdsys::rd_kafka_queue_get_main(producer.client().native_ptr()) };
    // SAFETY: as above; `me` is not moved while the callback is registered.
    unsafe {
        rdsys::rd_kafka_queue_cb_event_enable(
            queue,
            Some(queued),
            std::ptr::from_mut(&mut me).cast::<c_void>(),
        );
    }
    loop {
        // Each poll serves one event; an event reports a batch of records.
        // SAFETY: `queue` is valid until it is destroyed below.
        while unsafe { rdsys::rd_kafka_queue_length(queue) } > 0 {
            producer.poll(Duration::ZERO);
        }
        if stop.load(Ordering::Acquire) {
            break;
        }
        // An event queued since the check unparks at once.
        std::thread::park_timeout(IDLE_POLL);
    }
    // SAFETY: the callback is removed before `me` goes out of scope, and the
    // handle is not used after it is destroyed.
    unsafe {
        rdsys::rd_kafka_queue_cb_event_enable(queue, None, std::ptr::null_mut());
        rdsys::rd_kafka_queue_destroy(queue);
    }
}

/// A record on its way to the producer.
type Record<'a> = BaseRecord<'a, [u8], [u8], Arc<Receipt>>;

/// The producer's context: hands each delivery report to the receipt of the
/// message the record was produced for.
pub struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Arc<Receipt>;

    fn delivery(&self, result: &DeliveryResult<'_>, receipt: Arc<Receipt>) {
        let refused = match result {
            Ok(_) => None,
            Err((error, message)) => Some((error.clone(), message.detach())),
        };
        receipt.answer(refused);
    }
}

/// The broker's answers for the records of one message.
#[derive(Default)]
pub struct Receipt {
    /// Records enqueued and not answered yet.
    outstanding: AtomicUsize,
    /// Records enqueued in all, retries included.
    enqueued: AtomicUsize,
    /// Records the broker refused (or librdkafka gave up on), with why.
    refused: Mutex<Vec<(KafkaError, OwnedMessage)>>,
    /// Notified when `outstanding` drops to zero.
    settled: Notify,
}

impl Receipt {
    /// Counts a record about to be enqueued. It is counted before it is
    /// sent, since its answer may come before `send` returns.
    fn expect(&self) {
        self.enqueued.fetch_add(1, Ordering::Relaxed);
        self.outstanding.fetch_add(1, Ordering::AcqRel);
    }

    /// Forgets a record counted by [`Receipt::expect`] that was never
    /// enqueued.
    fn unexpect(&self) {
        self.enqueued.fetch_sub(1, Ordering::Relaxed);
        self.answer(None);
    }

    /// The broker's answer for one record: `None` when it was acknowledged,
    /// the error and the record when it was refused.
    fn answer(&self, refused: Option<(KafkaError, OwnedMessage)>) {
        if let Some(refused) = refused {
            self.refused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(refused);
        }
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_one();
        }
    }

    /// How many records were enqueued on it.
    pub fn enqueued(&self) -> usize {
        self.enqueued.load(Ordering::Relaxed)
    }

    /// Waits until every record enqueued so far is answered; returns those
    /// refused since the last call.
    pub async fn answers(&self) -> Vec<(KafkaError, OwnedMessage)> {
        // `notify_one` keeps a permit when nobody waits yet, so an answer
        // arriving between the check and the wait is not missed.
        while self.outstanding.load(Ordering::Acquire) > 0 {
            self.settled.notified().await;
        }
        std::mem::take(&mut *self.refused.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Why a message's records were not all enqueued: it must not be
/// acknowledged.
pub enum NotProduced {
    /// The partition was revoked or the daemon is stopping.
    Cancelled,
    /// The producer refused a record for good (too large, a topic that does
    /// not exist, ...): the records before it are enqueued, those after it
    /// are not.
    Refused(Refused),
}

/// The headers the handler returned for an output; with `correlation`, that
/// id in place of any `correlation_id` header of the handler's own; with
/// `trace`, the message's child context in place of any `traceparent` and
/// `tracestate` of the handler's own (a handler passing its input's headers
/// on would otherwise pass on the parent).
fn kafka_headers(
    headers: &[Header],
    correlation: Option<&str>,
    trace: Option<&MessageTrace>,
) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(headers.len() + 3);
    let replaced = |key: &str| {
        (correlation.is_some() && key == CORRELATION_HEADER)
            || (trace.is_some() && (key == TRACEPARENT || key == TRACESTATE))
    };
    for h in headers.iter().filter(|h| !replaced(&h.key)) {
        out = out.insert(KafkaHeader {
            key: &h.key,
            value: Some(&h.value),
        });
    }
    if let Some(id) = correlation {
        out = out.insert(KafkaHeader {
            key: CORRELATION_HEADER,
            value: Some(id),
        });
    }
    if let Some(trace) = trace {
        out = out.insert(KafkaHeader {
            key: TRACEPARENT,
            value: Some(&trace.traceparent),
        });
        if let Some(state) = &trace.tracestate {
            out = out.insert(KafkaHeader {
                key: TRACESTATE,
                value: Some(state),
            });
        }
    }
    out
}

/// A message's records, handed to the producer.
pub struct Produced {
    /// The broker's answers to wait for; `None` when nothing was enqueued.
    pub receipt: Option<Arc<Receipt>>,
    /// A record the producer refused for good at once: the records after it
    /// were not enqueued.
    pub refused: Option<Refused>,
}

/// Enqueues a message's records with the producer, waiting while its queue
/// is full, and stopping at a record refused for good. Each record carries
/// `correlation` and `trace` when given. Fails only when cancelled.
pub async fn produce_all(
    producer: &Producer,
    records: &[Output],
    correlation: Option<&str>,
    trace: Option<&MessageTrace>,
    cancel: &CancellationToken,
) -> Result<Produced, NotProduced> {
    if records.is_empty() {
        return Ok(Produced {
            receipt: None,
            refused: None,
        });
    }
    let receipt = Arc::new(Receipt::default());
    for record in records {
        let mut base = Record::with_opaque_to(&record.topic, receipt.clone());
        if correlation.is_some() || trace.is_some() || !record.headers.is_empty() {
            base = base.headers(kafka_headers(&record.headers, correlation, trace));
        }
        if let Some(key) = &record.key {
            base = base.key(key);
        }
        if let Some(value) = &record.value {
            base = base.payload(value);
        }
        match enqueue(producer, base, cancel).await {
            Ok(()) => {}
            Err(NotProduced::Refused(refused)) => {
                let enqueued = receipt.enqueued.load(Ordering::Relaxed) > 0;
                return Ok(Produced {
                    receipt: enqueued.then_some(receipt),
                    refused: Some(refused),
                });
            }
            Err(cancelled) => return Err(cancelled),
        }
    }
    Ok(Produced {
        receipt: Some(receipt),
        refused: None,
    })
}

/// Enqueues one record, counting it on its receipt, and retries while the
/// producer refuses it for now (a full queue; any other transient error is
/// logged and retried more slowly). A record refused for good (too large, a
/// topic librdkafka knows does not exist, ...) is not counted and returned
/// as refused.
async fn enqueue(
    producer: &Producer,
    mut record: Record<'_>,
    cancel: &CancellationToken,
) -> Result<(), NotProduced> {
    record.delivery_opaque.expect();
    loop {
        let delay = match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                Duration::from_millis(1)
            }
            Err((error, back)) if ProduceRefusal::of(&error) == ProduceRefusal::Permanent => {
                back.delivery_opaque.unexpect();
                return Err(NotProduced::Refused(Refused {
                    topic: back.topic.to_owned(),
                    error,
                }));
            }
            Err((e, back)) => {
                tracing::warn!(topic = back.topic, "cannot enqueue record: {e}");
                record = back;
                Duration::from_millis(100)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancel.cancelled() => {
                record.delivery_opaque.unexpect();
                return Err(NotProduced::Cancelled);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::Timestamp;
    use rdkafka::message::Message as _;

    use super::*;

    type Answers = Vec<(KafkaError, OwnedMessage)>;

    fn refused(topic: &str) -> (KafkaError, OwnedMessage) {
        let message = OwnedMessage::new(
            Some(b"value".to_vec()),
            None,
            topic.to_owned(),
            Timestamp::NotAvailable,
            0,
            -1,
            None,
        );
        let error = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        (error, message)
    }

    /// Whether `answers` is still waiting after the runtime ran everything
    /// else it could.
    async fn still_waiting(answers: &mut tokio::task::JoinHandle<Answers>) -> bool {
        tokio::time::timeout(Duration::from_millis(1), answers)
            .await
            .is_err()
    }

    /// What `answers` returned, once the last answer woke it.
    async fn finished(answers: tokio::task::JoinHandle<Answers>) -> Answers {
        tokio::time::timeout(Duration::from_secs(1), answers)
            .await
            .expect("the last answer wakes the waiter")
            .expect("the waiter did not panic")
    }

    fn header_pairs(headers: &OwnedHeaders) -> Vec<(String, String)> {
        use rdkafka::message::Headers as _;
        headers
            .iter()
            .map(|h| {
                let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                (h.key.to_owned(), value.into_owned())
            })
            .collect()
    }

    #[test]
    fn records_carry_the_child_context_in_place_of_the_handlers_own() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let input = [
            Header {
                key: "traceparent".into(),
                value: parent.into(),
            },
            Header {
                key: "tracestate".into(),
                value: b"a=1".to_vec(),
            },
            Header {
                key: "kept".into(),
                value: b"yes".to_vec(),
            },
        ];
        let site = crate::trace::Site {
            topic: "orders",
            partition: 0,
            offset: 1,
            module: "m",
            correlation_id: "c",
        };
        let headers = input.iter().map(|h| (h.key.as_str(), &h.value[..]));
        let trace = MessageTrace::of(headers, None, &site).expect("a context");
        let pairs = header_pairs(&kafka_headers(&input, Some("c"), Some(&trace)));
        let names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["kept", "correlation_id", "traceparent", "tracestate"]
        );
        assert_eq!(pairs[2].1, trace.traceparent);
        assert_ne!(pairs[2].1, parent, "the child, not the parent");
        assert_eq!(pairs[3].1, "a=1");
        // Without a trace context the handler's headers stay as they are.
        let pairs = header_pairs(&kafka_headers(&input, None, None));
        assert_eq!(pairs[0], ("traceparent".to_owned(), parent.to_owned()));
        assert_eq!(pairs.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_wait_for_every_record_and_return_the_refused_ones() {
        let receipt = Arc::new(Receipt::default());
        for _ in 0..3 {
            receipt.expect();
        }
        let waiting = receipt.clone();
        let mut answers = tokio::spawn(async move { waiting.answers().await });
        receipt.answer(None);
        assert!(
            still_waiting(&mut answers).await,
            "two records are unanswered"
        );
        receipt.answer(Some(refused("out")));
        assert!(
            still_waiting(&mut answers).await,
            "one record is unanswered"
        );
        receipt.answer(None);
        let refused = finished(answers).await;
        let topics: Vec<&str> = refused.iter().map(|(_, m)| m.topic()).collect();
        assert_eq!(topics, ["out"], "the one refused record is returned");
        assert!(
            receipt.answers().await.is_empty(),
            "refused records are returned once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_produced_again_on_the_same_receipt_is_waited_for_too() {
        let receipt = Arc::new(Receipt::default());
        receipt.expect();
        receipt.answer(Some(refused("dlq")));
        assert_eq!(receipt.answers().await.len(), 1);
        // Produced again on the same receipt, and acknowledged this time.
        receipt.expect();
        let waiting = receipt.clone();
        let mut answers = tokio::spawn(async move { waiting.answers().await });
        assert!(still_waiting(&mut answers).await, "the retry is unanswered");
        receipt.answer(None);
        assert!(finished(answers).await.is_empty());
        assert_eq!(receipt.enqueued.load(Ordering::Relaxed), 2);
    }
}

//! Replaying dead letters: each original message produced back to its
//! original topic with its exact key, value and headers, plus the replay
//! headers, at a bounded rate, with every acknowledgement awaited; then the
//! replay position moved over what was dealt with.
//!
//! Owns the replay producer and the order of a run: decide
//! ([`super::outcome`]), fetch the originals of cut letters
//! ([`super::original`]), produce, record the position
//! ([`super::position`]).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use tokio::time::Instant;

use super::original::{self, Original, OriginalFetch};
use super::outcome::{
    LetterOutcome, ReplayOptions, ReplayResult, judge, judge_count, never_replayable,
};
use super::position::{self, Beyond, Positions};
use super::{
    DLQ_OFFSET_HEADER, DLQ_PARTITION_HEADER, DlqRecord, Envelope, Filter, REPLAY_COUNT_HEADER,
    REPLAY_HEADERS, REPLAYED_AT_HEADER, ReplayError,
};
use crate::config::Config;
use crate::kafka::headers;
use crate::pipeline::CORRELATION_HEADER;
use crate::pipeline::dlq::iso8601_millis;

/// What a replay run did.
#[derive(Debug, Clone)]
pub struct ReplayRun<'a> {
    /// One result per selected dead letter reached, in order.
    pub results: Vec<ReplayResult<'a>>,
    /// Selected dead letters left for a later run by `--limit`.
    pub beyond_limit: usize,
    /// The consumer group whose committed offsets are the replay position.
    pub position_group: String,
    /// The positions this run committed (none in a dry run).
    pub committed: Positions,
    /// The letters recorded past each committed position.
    pub recorded_beyond: Beyond,
    /// Why the position could not be recorded, when it could not: a later
    /// run would replay this run's letters again.
    pub position_error: Option<String>,
    /// What a later run may replay again though this run recorded the
    /// position: letters replayed past it that its record does not hold.
    pub position_warning: Option<String>,
}

/// Replays the dead letters of `letters` (every record read, sorted by
/// topic, partition and offset) that `filter` selects, in order. Produce
/// failures are results, not errors (the error is for a client that cannot
/// be created or a replay position that cannot be read).
pub async fn replay<'a>(
    config: &Config,
    letters: &'a [DlqRecord],
    filter: &Filter,
    options: &ReplayOptions,
) -> Result<ReplayRun<'a>, ReplayError> {
    let bootstrap = super::bootstrap(config)?;
    let group = position::group(config);
    let partitions: BTreeSet<(String, i32)> = letters
        .iter()
        .map(|r| (r.dlq_topic.clone(), r.dlq_partition))
        .collect();
    let (saved, saved_beyond) =
        tokio::task::block_in_place(|| position::read(config, bootstrap, &group, &partitions))?;
    let (start, start_beyond) = if options.from_beginning {
        (Positions::new(), Beyond::new())
    } else {
        (saved.clone(), saved_beyond.clone())
    };
    let mut run = ReplayRun {
        results: Vec::new(),
        beyond_limit: 0,
        position_group: group,
        committed: Positions::new(),
        recorded_beyond: Beyond::new(),
        position_error: None,
        position_warning: None,
    };
    let to_send = decide(
        config,
        letters,
        filter,
        options,
        (&start, &start_beyond),
        &mut run,
    );
    let originals = fetch_originals(config, bootstrap, options, &to_send, &mut run.results);
    if options.dry_run {
        return Ok(run);
    }
    produce_all(config, bootstrap, options, &originals, &mut run.results).await?;
    let (to_commit, beyond) =
        positions_to_commit(letters, (&start, &saved, &saved_beyond), &run.results);
    commit_position(config, bootstrap, to_commit, beyond, &mut run);
    Ok(run)
}

/// The positions to commit after a run whose letters ended as `results`,
/// and the letters to record past them. A letter is settled when this run
/// settled it, an earlier run recorded it past the saved position, or it
/// can never be replayed; each position moves from `start` over the
/// settled letters.
fn positions_to_commit(
    letters: &[DlqRecord],
    (start, saved, saved_beyond): (&Positions, &Positions, &Beyond),
    results: &[ReplayResult<'_>],
) -> (Positions, Beyond) {
    let outcomes: HashMap<(&str, i32, i64), &LetterOutcome> = results
        .iter()
        .map(|r| {
            let at = (
                r.record.dlq_topic.as_str(),
                r.record.dlq_partition,
                r.record.dlq_offset,
            );
            (at, &r.outcome)
        })
        .collect();
    let settled = |r: &DlqRecord| {
        never_replayable(r)
            || is_beyond(saved_beyond, r)
            || outcomes
                .get(&(r.dlq_topic.as_str(), r.dlq_partition, r.dlq_offset))
                .is_some_and(|o| o.settles())
    };
    let moved = position::advance(letters, start, saved, settled);
    positions_after(letters, saved, saved_beyond, moved, settled)
}

/// Commits `to_commit` with the letters recorded past it, and says in
/// `run` what was committed, or why it could not be, or what a later run
/// may replay again.
fn commit_position(
    config: &Config,
    bootstrap: &str,
    to_commit: Positions,
    beyond: Beyond,
    run: &mut ReplayRun<'_>,
) {
    match tokio::task::block_in_place(|| {
        position::commit(config, bootstrap, &run.position_group, &to_commit, &beyond)
    }) {
        Ok(unrecorded) => {
            if unrecorded > 0 {
                run.position_warning = Some(format!(
                    "{unrecorded} letters replayed past the replay position did not fit in its \
                     record ({} bytes of offset metadata) and will be replayed again by a later \
                     run; deal with the letters that hold the position back (refused ones: \
                     --allow-topic) so that it moves over them",
                    position::METADATA_BUDGET
                ));
            }
            run.recorded_beyond = beyond
                .into_iter()
                .filter(|(key, _)| to_commit.contains_key(key))
                .collect();
            run.committed = to_commit;
            if run.position_warning.is_none() {
                run.position_warning = kept_record(config, bootstrap, run).err();
            }
        }
        Err(e) => run.position_error = Some(chain(&e)),
    }
}

/// Reads back the record of letters replayed past the committed positions:
/// a broker that does not keep commit metadata (Kafka does) loses it, and a
/// later run would replay those letters again. Says so rather than letting
/// it happen unannounced.
fn kept_record(config: &Config, bootstrap: &str, run: &ReplayRun<'_>) -> Result<(), String> {
    let recorded: usize = run.recorded_beyond.values().map(BTreeSet::len).sum();
    if recorded == 0 {
        return Ok(());
    }
    let partitions: BTreeSet<(String, i32)> = run.recorded_beyond.keys().cloned().collect();
    let (_, kept) = tokio::task::block_in_place(|| {
        position::read(config, bootstrap, &run.position_group, &partitions)
    })
    .map_err(|e| chain(&e))?;
    let kept_count: usize = kept.values().map(BTreeSet::len).sum();
    if kept_count >= recorded {
        return Ok(());
    }
    Err(format!(
        "the broker did not keep the record of the {recorded} letters replayed past the replay \
         position (its answer to OffsetFetch holds {kept_count} of them: it drops commit \
         metadata, which Kafka keeps); a later run replays them again unless the letters that \
         hold the position back are dealt with first"
    ))
}

/// Whether `beyond` records the letter as dealt with already.
fn is_beyond(beyond: &Beyond, r: &DlqRecord) -> bool {
    beyond
        .get(&(r.dlq_topic.clone(), r.dlq_partition))
        .is_some_and(|o| o.contains(&r.dlq_offset))
}

/// The positions to commit after a run (those that `moved`, and those whose
/// letters recorded past them changed) and every partition's letters
/// recorded past its position. A partition with no position yet that has
/// letters past a refused one gets the offset of its first letter.
fn positions_after(
    letters: &[DlqRecord],
    saved: &Positions,
    saved_beyond: &Beyond,
    moved: Positions,
    settled: impl Fn(&DlqRecord) -> bool,
) -> (Positions, Beyond) {
    let mut after = saved.clone();
    after.extend(moved.iter().map(|(k, v)| (k.clone(), *v)));
    for r in letters {
        after
            .entry((r.dlq_topic.clone(), r.dlq_partition))
            .or_insert(r.dlq_offset);
    }
    let beyond = position::beyond_after(letters, &after, saved_beyond, settled);
    let mut to_commit = moved;
    for (key, next) in &after {
        let now = beyond.get(key);
        if now != saved_beyond.get(key) && !to_commit.contains_key(key) {
            to_commit.insert(key.clone(), *next);
        }
    }
    (to_commit, beyond)
}

/// Judges every selected letter into `run.results`; returns the indexes
/// of those to produce, at most `options.limit` of them.
fn decide<'a>(
    config: &Config,
    letters: &'a [DlqRecord],
    filter: &Filter,
    options: &ReplayOptions,
    (start, beyond): (&Positions, &Beyond),
    run: &mut ReplayRun<'a>,
) -> Vec<usize> {
    let routed: BTreeSet<&str> = config
        .routes
        .iter()
        .map(|r| r.topic.as_str())
        .chain(options.allowed_topics.iter().map(String::as_str))
        .collect();
    let mut to_send = Vec::new();
    for record in letters.iter().filter(|r| filter.matches(r)) {
        let position = start
            .get(&(record.dlq_topic.clone(), record.dlq_partition))
            .copied();
        let (previous_replays, mut outcome) =
            judge(record, position, options.max_replay_count, &routed);
        if is_beyond(beyond, record) {
            outcome = Some(LetterOutcome::AlreadyReplayed {
                position: position.unwrap_or(record.dlq_offset),
                beyond: true,
            });
        }
        if outcome.is_none() {
            if options.limit.is_some_and(|n| to_send.len() >= n) {
                run.beyond_limit += 1;
                continue;
            }
            to_send.push(run.results.len());
        }
        run.results.push(ReplayResult {
            record,
            previous_replays,
            outcome: outcome.unwrap_or(LetterOutcome::WouldReplay),
        });
    }
    to_send
}

/// The message each of `to_send` replays: the envelope's own bytes when
/// it holds the whole message, else the original record fetched from its
/// topic and judged again on its own replay count (the cut letter may have
/// lost that header). A letter whose original cannot be had, or is over
/// the limit, gets its outcome here and no message.
fn fetch_originals(
    config: &Config,
    bootstrap: &str,
    options: &ReplayOptions,
    to_send: &[usize],
    results: &mut [ReplayResult<'_>],
) -> Vec<(usize, Original)> {
    let mut originals = Vec::with_capacity(to_send.len());
    for &i in to_send {
        let Ok(envelope) = &results[i].record.envelope else {
            continue;
        };
        if envelope.truncation.message_complete() {
            originals.push((i, Original::from_envelope(envelope)));
            continue;
        }
        let fetched = tokio::task::block_in_place(|| {
            original::fetch(config, bootstrap, envelope, config.kafka.timeout())
        });
        match fetched {
            OriginalFetch::Found(original) => {
                let (previous, refusal) = judge_count(&original.headers, options.max_replay_count);
                results[i].previous_replays = previous;
                match refusal {
                    Some(outcome) => results[i].outcome = outcome,
                    None => originals.push((i, original)),
                }
            }
            OriginalFetch::Gone(reason) => {
                results[i].outcome = LetterOutcome::OriginalGone { reason }
            }
            OriginalFetch::Failed(reason) => results[i].outcome = LetterOutcome::Failed { reason },
        }
    }
    originals
}

/// Produces every message of `originals` at the rate limit and awaits
/// every acknowledgement, writing each outcome into `results`.
async fn produce_all(
    config: &Config,
    bootstrap: &str,
    options: &ReplayOptions,
    originals: &[(usize, Original)],
    results: &mut [ReplayResult<'_>],
) -> Result<(), ReplayError> {
    if originals.is_empty() {
        return Ok(());
    }
    let producer = producer(config, bootstrap)?;
    let mut partitions: HashMap<String, Result<i32, String>> = HashMap::new();
    let interval =
        (options.rate_limit > 0.0).then(|| Duration::from_secs_f64(1.0 / options.rate_limit));
    let start = Instant::now();
    let mut pending: VecDeque<(usize, DeliveryFuture)> = VecDeque::new();
    for (n, (i, message)) in originals.iter().enumerate() {
        let i = *i;
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
                results[i].outcome = LetterOutcome::Failed {
                    reason: reason.clone(),
                };
                continue;
            }
        };
        if let Some(interval) = interval {
            tokio::time::sleep_until(start + interval.mul_f64(n as f64)).await;
        }
        let previous = results[i].previous_replays.unwrap_or(0);
        let headers = replay_headers(record, envelope, message, previous, SystemTime::now());
        let mut out = FutureRecord::<[u8], [u8]>::to(&envelope.original_topic).headers(headers);
        if let Some(key) = &message.key {
            out = out.key(key);
        }
        if let Some(value) = &message.value {
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
                    results[i].outcome = LetterOutcome::Failed {
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
    Ok(())
}

/// The replayed record's headers: the original ones in order, keys and
/// values byte for byte (without earlier replay headers), the correlation
/// id of the failed handling if the original carried none (so the replay's
/// outputs can be traced back to the dead letter), then the replay headers.
fn replay_headers(
    record: &DlqRecord,
    envelope: &Envelope,
    message: &Original,
    previous: u32,
    now: SystemTime,
) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 5);
    for h in &message.headers {
        if REPLAY_HEADERS.iter().any(|r| h.key == r.as_bytes()) {
            continue;
        }
        headers::add(&mut headers, &h.key, h.value.as_deref());
    }
    let has_correlation = message
        .headers
        .iter()
        .any(|h| h.key == CORRELATION_HEADER.as_bytes());
    if !has_correlation && !envelope.correlation_id.is_empty() {
        headers::add(
            &mut headers,
            CORRELATION_HEADER.as_bytes(),
            Some(envelope.correlation_id.as_bytes()),
        );
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
        headers::add(&mut headers, key.as_bytes(), Some(value.as_bytes()));
    }
    headers
}

/// An idempotent producer that needs every in-sync replica's acknowledgement,
/// whatever the configuration says: a replay must not lose nor duplicate.
fn producer(config: &Config, bootstrap: &str) -> Result<FutureProducer, ReplayError> {
    let mut c = crate::kafka::producer_config(config, bootstrap)?;
    c.set("acks", "all");
    c.set("enable.idempotence", "true");
    c.create()
        .map_err(crate::kafka::security::redact)
        .map_err(|source| ReplayError::Kafka {
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

/// An error and its sources, `: `-separated.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    text
}

/// The outcome of an awaited delivery (the error: the producer went away).
fn delivered<E>(result: Result<OwnedDeliveryResult, E>) -> LetterOutcome {
    match result {
        Ok(Ok(delivery)) => LetterOutcome::Replayed {
            partition: delivery.partition,
            offset: delivery.offset,
        },
        Ok(Err((e, _))) => LetterOutcome::Failed {
            reason: e.to_string(),
        },
        Err(_) => LetterOutcome::Failed {
            reason: "the producer went away before acknowledging".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::headers::{self, RawHeader};

    fn record(headers: serde_json::Value) -> DlqRecord {
        super::super::test_letter("orders", headers)
    }

    fn names(headers: &OwnedHeaders) -> Vec<(Vec<u8>, String)> {
        headers::read(headers.as_borrowed())
            .into_iter()
            .map(|h| {
                let value = String::from_utf8_lossy(&h.value.unwrap_or_default()).into_owned();
                (h.key, value)
            })
            .collect()
    }

    #[test]
    fn replay_headers_count_up_and_replace_earlier_ones() {
        let r = record(serde_json::json!([
            {"key": "trace", "value": "t"},
            {"key": "//4=", "key_encoding": "base64", "value": "raw"},
            {"key": "x-replay-count", "value": "2"},
            {"key": "x-replayed-at", "value": "then"},
        ]));
        let Ok(e) = &r.envelope else {
            panic!("a valid envelope")
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_736_937_000_123);
        let message = Original::from_envelope(e);
        let h = names(&replay_headers(&r, e, &message, 2, now));
        let h: Vec<(&[u8], &str)> = h.iter().map(|(k, v)| (k.as_slice(), v.as_str())).collect();
        assert_eq!(
            h,
            [
                (&b"trace"[..], "t"),
                (&b"\xff\xfe"[..], "raw"),
                (b"correlation_id", "corr-9"),
                (b"x-replay-count", "3"),
                (b"x-replayed-at", "2025-01-15T10:30:00.123Z"),
                (b"x-original-dlq-offset", "40"),
                (b"x-original-dlq-partition", "2"),
            ]
        );
    }

    #[test]
    fn a_fetched_original_replays_its_own_headers() {
        let r = record(serde_json::json!([]));
        let Ok(e) = &r.envelope else {
            panic!("a valid envelope")
        };
        let fetched = Original {
            key: None,
            value: Some(b"whole".to_vec()),
            headers: vec![RawHeader {
                key: b"correlation_id".to_vec(),
                value: None,
            }],
        };
        let h = headers::read(replay_headers(&r, e, &fetched, 0, SystemTime::now()).as_borrowed());
        assert_eq!(
            h[0],
            RawHeader {
                key: b"correlation_id".to_vec(),
                value: None
            },
            "the original's own correlation id, null value and all, and no other"
        );
        assert_eq!(h.len(), 5);
    }
}

//! What a replay decides for each selected dead letter before anything is
//! produced ([`judge`]), and the outcome it reports.
//!
//! Owns the decisions only: no Kafka client here.

use std::collections::BTreeSet;

use super::DlqRecord;
use super::envelope::replay_count;
use crate::kafka::headers::RawHeader;
use crate::policy::ErrorType;

/// How a replay runs.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Report what would be replayed; produce nothing, commit no position.
    pub dry_run: bool,
    /// Most messages produced per second (0 or less: no limit).
    pub rate_limit: f64,
    /// A message already replayed this many times (or more) is not
    /// replayed again.
    pub max_replay_count: u32,
    /// Replay at most this many dead letters; the rest are left for a
    /// later run.
    pub limit: Option<usize>,
    /// Original topics that may be written although no route consumes
    /// them (`--allow-topic`).
    pub allowed_topics: BTreeSet<String>,
    /// Ignore the replay position: dead letters replayed by earlier runs
    /// are replayed again.
    pub from_beginning: bool,
}

/// What happened to one selected dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LetterOutcome {
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
    /// Not replayed: below the replay position, or recorded past it, so an
    /// earlier run replayed it (or found it can never be replayed).
    AlreadyReplayed {
        /// The partition's replay position.
        position: i64,
        /// Whether it was recorded past the position (replayed while a
        /// letter before it was not).
        beyond: bool,
    },
    /// Refused: no route consumes the original topic and `--allow-topic`
    /// does not name it.
    TopicNotRouted {
        /// The original topic.
        topic: String,
    },
    /// Refused: the dead letter holds only part of the message, and the
    /// original record is no longer in its topic.
    OriginalGone {
        /// Why, in words.
        reason: String,
    },
    /// The produce (or the fetch of a cut letter's original) failed.
    Failed {
        /// librdkafka's or the broker's error.
        reason: String,
    },
}

impl LetterOutcome {
    /// A stable name for output: `replayed`, `would_replay`,
    /// `skipped_over_limit`, `skipped_unreadable`,
    /// `skipped_already_replayed`, `refused_topic`, `refused_original_gone`
    /// or `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            LetterOutcome::Replayed { .. } => "replayed",
            LetterOutcome::WouldReplay => "would_replay",
            LetterOutcome::OverLimit { .. } => "skipped_over_limit",
            LetterOutcome::Unreadable { .. } => "skipped_unreadable",
            LetterOutcome::AlreadyReplayed { .. } => "skipped_already_replayed",
            LetterOutcome::TopicNotRouted { .. } => "refused_topic",
            LetterOutcome::OriginalGone { .. } => "refused_original_gone",
            LetterOutcome::Failed { .. } => "failed",
        }
    }

    /// What happened, in words.
    pub fn detail(&self) -> String {
        match self {
            LetterOutcome::Replayed { partition, offset } => {
                format!("written at {partition}@{offset}")
            }
            LetterOutcome::WouldReplay => "dry run: nothing produced".to_owned(),
            LetterOutcome::AlreadyReplayed {
                position,
                beyond: false,
            } => format!(
                "already replayed: below the replay position {position} (--from-beginning \
                 replays it again)"
            ),
            LetterOutcome::AlreadyReplayed {
                position,
                beyond: true,
            } => format!(
                "already replayed: recorded past the replay position {position}, which a letter \
                 not replayed holds back (--from-beginning replays it again)"
            ),
            LetterOutcome::TopicNotRouted { topic } => format!(
                "original topic {topic:?} is consumed by no route of this config; pass \
                 --allow-topic {topic} to replay there"
            ),
            LetterOutcome::OverLimit { reason }
            | LetterOutcome::Unreadable { reason }
            | LetterOutcome::OriginalGone { reason }
            | LetterOutcome::Failed { reason } => reason.clone(),
        }
    }

    /// Whether the replay position may move past the letter: it was
    /// replayed, or it can never be.
    pub fn settles(&self) -> bool {
        matches!(
            self,
            LetterOutcome::Replayed { .. }
                | LetterOutcome::Unreadable { .. }
                | LetterOutcome::OriginalGone { .. }
        )
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
    pub outcome: LetterOutcome,
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
    /// Skipped: replayed by an earlier run.
    pub skipped_already_replayed: usize,
    /// Refused: no route consumes the original topic.
    pub refused_topic: usize,
    /// Refused: cut, and the original record is gone.
    pub refused_original_gone: usize,
    /// Produce failed.
    pub failed: usize,
}

impl ReplaySummary {
    /// Counts `results`.
    pub fn of(results: &[ReplayResult<'_>]) -> ReplaySummary {
        let mut s = ReplaySummary::default();
        for r in results {
            *match r.outcome {
                LetterOutcome::Replayed { .. } => &mut s.replayed,
                LetterOutcome::WouldReplay => &mut s.would_replay,
                LetterOutcome::OverLimit { .. } => &mut s.skipped_over_limit,
                LetterOutcome::Unreadable { .. } => &mut s.skipped_unreadable,
                LetterOutcome::AlreadyReplayed { .. } => &mut s.skipped_already_replayed,
                LetterOutcome::TopicNotRouted { .. } => &mut s.refused_topic,
                LetterOutcome::OriginalGone { .. } => &mut s.refused_original_gone,
                LetterOutcome::Failed { .. } => &mut s.failed,
            } += 1;
        }
        s
    }
}

/// Why an `UndecodableRecord` letter is not replayed.
const NO_CONTENT: &str = "the Kafka client could not decode the original record when it was \
     consumed, so the letter holds no content to replay; read the original partition around its \
     offset with another client";

/// Whether a record can never be replayed, whatever a run selects: its
/// value is not an envelope, its replay count is unreadable, or it stands
/// for a record the client could not decode.
pub fn never_replayable(record: &DlqRecord) -> bool {
    record.envelope.as_ref().ok().is_none_or(|e| {
        e.replay_count().is_err() || e.error_type == ErrorType::UndecodableRecord.as_str()
    })
}

/// Decides whether a record may be replayed: `None` if so, else why not;
/// with the previous replay count when it is readable. `position` is the
/// record's partition's replay position, `routed` the topics a replay may
/// write.
pub fn judge(
    record: &DlqRecord,
    position: Option<i64>,
    max_replay_count: u32,
    routed: &BTreeSet<&str>,
) -> (Option<u32>, Option<LetterOutcome>) {
    let envelope = match &record.envelope {
        Ok(e) => e,
        Err(reason) => {
            return (
                None,
                Some(LetterOutcome::Unreadable {
                    reason: format!("not a dead-letter envelope: {reason}"),
                }),
            );
        }
    };
    if envelope.error_type == ErrorType::UndecodableRecord.as_str() {
        return (
            None,
            Some(LetterOutcome::Unreadable {
                reason: NO_CONTENT.to_owned(),
            }),
        );
    }
    let (count, over) = judge_count(&envelope.headers, max_replay_count);
    let Some(count) = count else {
        return (None, over);
    };
    let refusal = if let Some(position) = position.filter(|&p| record.dlq_offset < p) {
        Some(LetterOutcome::AlreadyReplayed {
            position,
            beyond: false,
        })
    } else if !routed.contains(envelope.original_topic.as_str()) {
        Some(LetterOutcome::TopicNotRouted {
            topic: envelope.original_topic.clone(),
        })
    } else {
        over
    };
    (Some(count), refusal)
}

/// Judges a message's own replay count (from `headers`) against the
/// limit: the count when readable, and why the message is not replayed, if
/// it is not. A cut dead letter may have lost the header, so its original
/// record is judged again once fetched.
pub fn judge_count(
    headers: &[RawHeader],
    max_replay_count: u32,
) -> (Option<u32>, Option<LetterOutcome>) {
    match replay_count(headers) {
        Err(reason) => (None, Some(LetterOutcome::Unreadable { reason })),
        Ok(count) if count >= max_replay_count => (
            Some(count),
            Some(LetterOutcome::OverLimit {
                reason: format!(
                    "already replayed {count} time(s), at or over --max-replay-count \
                     {max_replay_count}"
                ),
            }),
        ),
        Ok(count) => (Some(count), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, headers: serde_json::Value) -> DlqRecord {
        super::super::test_letter(topic, headers)
    }

    #[test]
    fn the_replay_limit_and_unreadable_records_skip() {
        let routed = BTreeSet::from(["orders"]);
        let twice = record(
            "orders",
            serde_json::json!([{"key": "x-replay-count", "value": "2"}]),
        );
        assert_eq!(judge(&twice, None, 3, &routed), (Some(2), None));
        assert!(matches!(
            judge(&twice, None, 2, &routed),
            (Some(2), Some(LetterOutcome::OverLimit { .. }))
        ));
        let garbled = record(
            "orders",
            serde_json::json!([{"key": "x-replay-count", "value": "many"}]),
        );
        assert!(matches!(
            judge(&garbled, None, 5, &routed),
            (None, Some(LetterOutcome::Unreadable { .. }))
        ));
        assert!(never_replayable(&garbled) && !never_replayable(&twice));
        let junk = DlqRecord::decode("dlq", 0, 0, Vec::new(), Some(b"junk"));
        assert!(matches!(
            judge(&junk, None, 5, &routed),
            (None, Some(LetterOutcome::Unreadable { .. }))
        ));
        assert!(never_replayable(&junk));
    }

    #[test]
    fn a_fetched_original_is_judged_on_its_own_replay_count() {
        let header = |value: &str| RawHeader {
            key: b"x-replay-count".to_vec(),
            value: Some(value.as_bytes().to_vec()),
        };
        assert_eq!(judge_count(&[], 1), (Some(0), None));
        assert_eq!(judge_count(&[header("1"), header("2")], 3), (Some(2), None));
        let (count, over) = judge_count(&[header("3")], 3);
        assert_eq!(count, Some(3));
        assert_eq!(over.map(|o| o.name()), Some("skipped_over_limit"));
        let (count, bad) = judge_count(&[header("x")], 3);
        assert_eq!(
            (count, bad.map(|o| o.name())),
            (None, Some("skipped_unreadable"))
        );
    }

    #[test]
    fn the_position_and_the_routed_topics_refuse() {
        let routed = BTreeSet::from(["orders"]);
        let letter = record("orders", serde_json::json!([]));
        assert_eq!(judge(&letter, Some(40), 5, &routed), (Some(0), None));
        assert_eq!(
            judge(&letter, Some(41), 5, &routed).1,
            Some(LetterOutcome::AlreadyReplayed {
                position: 41,
                beyond: false
            })
        );
        let elsewhere = record("payments", serde_json::json!([]));
        let refused = judge(&elsewhere, None, 5, &routed).1.expect("refused");
        assert_eq!(refused.name(), "refused_topic");
        assert!(
            refused.detail().contains("--allow-topic payments"),
            "{}",
            refused.detail()
        );
        assert!(!refused.settles(), "another run may allow the topic");
    }
}

//! Which partition a record the client cannot decode holds up, and where.
//!
//! librdkafka reports such a record (a corrupt batch, a codec it lacks, a
//! record over the fetch limit) as a consumer error that carries only an
//! error code, and fetches the same offset again after a backoff, for ever.
//! This tracker names the partition from what librdkafka's statistics say
//! of every partition: a partition is stuck when its fetch position stays
//! put below the high watermark across two statistics reports, while it is
//! not paused by the daemon and such errors keep coming. It is plain code,
//! driven by the consumer loop and by tests.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::status::{Stuck, TopicPartition};

/// What one statistics report says of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The next offset librdkafka will fetch.
    pub next: i64,
    /// The partition's high watermark (the offset after the newest record).
    pub high: i64,
    /// Whether the daemon paused it (a full queue, an open breaker): a
    /// paused partition does not move for reasons of its own.
    pub paused: bool,
}

/// The per-partition record of where the fetch position stood.
#[derive(Debug, Clone)]
struct Track {
    offset: i64,
    since: Instant,
    /// Reports that found it at `offset`.
    reports: u32,
    /// The error count at the report before the one that first found the
    /// position at `offset`.
    errors_at: u64,
}

/// Tracks consumer errors about records and the partitions' positions.
#[derive(Debug, Default)]
pub struct Undecodable {
    tracks: BTreeMap<TopicPartition, Track>,
    stuck: BTreeMap<TopicPartition, Stuck>,
    /// Record errors counted since the daemon started.
    errors: u64,
    /// The record errors counted when the previous report came.
    errors_at_report: u64,
    last_error: String,
}

impl Undecodable {
    /// Reports two consumer errors at least apart before a partition
    /// that stands still counts as stuck (librdkafka backs off half a second
    /// between fetches that fail).
    const MIN_ERRORS: u64 = 2;

    /// Counts a consumer error about a record (see [`crate::policy::is_record_error`]).
    pub fn error(&mut self, text: &str) {
        self.errors += 1;
        if self.last_error != text {
            text.clone_into(&mut self.last_error);
        }
        for stuck in self.stuck.values_mut() {
            stuck.repeats += 1;
        }
    }

    /// Takes one statistics report: every partition assigned, with its
    /// position. Returns the partitions stuck now (each one at every report
    /// while it stays stuck, so that a changed `on_undecodable` is acted on
    /// at the next report).
    pub fn report(
        &mut self,
        positions: impl IntoIterator<Item = (TopicPartition, Position)>,
        now: Instant,
    ) -> Vec<(TopicPartition, Stuck)> {
        let previous = self.errors_at_report;
        let errors_between = self.errors - previous;
        self.errors_at_report = self.errors;
        let mut seen = BTreeMap::new();
        for (tp, position) in positions {
            let standing = !position.paused && position.next >= 0 && position.high > position.next;
            if !standing {
                continue;
            }
            let track = match self.tracks.remove(&tp) {
                Some(mut t) if t.offset == position.next => {
                    t.reports += 1;
                    t
                }
                _ => Track {
                    offset: position.next,
                    since: now,
                    reports: 1,
                    errors_at: previous,
                },
            };
            seen.insert(tp, track);
        }
        self.tracks = seen;
        // A partition that moved, was paused or was revoked is no longer
        // stuck; one that stands still while record errors keep coming is.
        let mut stuck = BTreeMap::new();
        for (tp, track) in &self.tracks {
            let errors = self.errors - track.errors_at;
            let still_failing = errors_between > 0 && errors >= Self::MIN_ERRORS;
            if track.reports < 2 || !still_failing {
                continue;
            }
            let entry = match self.stuck.remove(tp) {
                Some(mut s) if s.offset == track.offset => {
                    s.error.clone_from(&self.last_error);
                    s
                }
                _ => Stuck {
                    offset: track.offset,
                    error: self.last_error.clone(),
                    since: track.since,
                    repeats: errors,
                },
            };
            stuck.insert(tp.clone(), entry);
        }
        self.stuck = stuck;
        self.stuck
            .iter()
            .map(|(tp, s)| (tp.clone(), s.clone()))
            .collect()
    }

    /// The partitions stuck as of the last report.
    pub fn stuck(&self) -> &BTreeMap<TopicPartition, Stuck> {
        &self.stuck
    }

    /// Record errors counted since the daemon started.
    pub fn errors(&self) -> u64 {
        self.errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("orders", p)
    }

    fn at(next: i64, high: i64) -> Position {
        Position {
            next,
            high,
            paused: false,
        }
    }

    /// Two reports apart, with the errors between them.
    fn run(
        u: &mut Undecodable,
        reports: &[Vec<(TopicPartition, Position)>],
        errors_between: usize,
    ) -> Vec<(TopicPartition, Stuck)> {
        let start = Instant::now();
        let mut last = Vec::new();
        for (i, report) in reports.iter().enumerate() {
            for _ in 0..errors_between {
                u.error("Local: Bad compression");
            }
            let now = start + Duration::from_secs(5 * i as u64);
            last = u.report(report.clone(), now);
        }
        last
    }

    #[test]
    fn a_partition_standing_below_its_watermark_while_errors_come_is_named_with_its_offset() {
        let mut u = Undecodable::default();
        let report = vec![(tp(0), at(10, 23)), (tp(1), at(40, 40))];
        let stuck = run(&mut u, &[report.clone(), report], 3);
        assert_eq!(stuck.len(), 1, "{stuck:?}");
        let (which, s) = &stuck[0];
        assert_eq!(which, &tp(0));
        assert_eq!(s.offset, 10);
        assert_eq!(s.error, "Local: Bad compression");
        assert_eq!(s.repeats, 6);
        u.error("Local: Bad compression");
        assert_eq!(u.stuck()[&tp(0)].repeats, 7, "repeats are counted");
    }

    #[test]
    fn one_report_is_not_enough() {
        let mut u = Undecodable::default();
        let stuck = run(&mut u, &[vec![(tp(0), at(10, 23))]], 5);
        assert!(stuck.is_empty());
    }

    #[test]
    fn without_record_errors_a_partition_standing_still_is_not_stuck() {
        // A slow handler keeps the fetch position still too.
        let mut u = Undecodable::default();
        let report = vec![(tp(0), at(10, 23))];
        assert!(run(&mut u, &[report.clone(), report.clone(), report], 0).is_empty());
    }

    #[test]
    fn errors_that_stopped_clear_it() {
        let mut u = Undecodable::default();
        let report = vec![(tp(0), at(10, 23))];
        assert_eq!(run(&mut u, &[report.clone(), report.clone()], 2).len(), 1);
        // The errors stop (the record was read after all): the next report
        // without errors clears it.
        let stuck = u.report(report, Instant::now() + Duration::from_secs(15));
        assert!(stuck.is_empty());
        assert!(u.stuck().is_empty());
    }

    #[test]
    fn a_partition_that_moves_paused_or_caught_up_is_not_stuck() {
        let mut u = Undecodable::default();
        let paused = Position {
            paused: true,
            ..at(5, 9)
        };
        let reports = [
            vec![(tp(0), at(10, 23)), (tp(1), paused), (tp(2), at(7, 7))],
            vec![(tp(0), at(11, 23)), (tp(1), paused), (tp(2), at(7, 7))],
        ];
        assert!(run(&mut u, &reports, 4).is_empty());
    }

    #[test]
    fn moving_past_the_offset_clears_it_and_a_new_offset_starts_again() {
        let mut u = Undecodable::default();
        let stuck = run(
            &mut u,
            &[vec![(tp(0), at(10, 23))], vec![(tp(0), at(10, 23))]],
            2,
        );
        assert_eq!(stuck[0].1.offset, 10);
        // Dead-lettered and sought past: the position is 11, and 11 fails
        // in turn. It is named only after two reports at 11.
        let stuck = run(&mut u, &[vec![(tp(0), at(11, 23))]], 2);
        assert!(stuck.is_empty(), "{stuck:?}");
        let stuck = run(&mut u, &[vec![(tp(0), at(11, 23))]], 2);
        assert_eq!(stuck[0].1.offset, 11);
    }

    #[test]
    fn a_revoked_partition_is_forgotten() {
        let mut u = Undecodable::default();
        let report = vec![(tp(0), at(10, 23))];
        run(&mut u, &[report.clone(), report], 2);
        assert_eq!(u.stuck().len(), 1);
        assert!(run(&mut u, &[vec![]], 2).is_empty());
    }
}

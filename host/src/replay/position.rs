//! The replay position: how far each dead-letter partition has been dealt
//! with, kept as the committed offsets of the tool's own consumer group
//! (`{environment}.{group}.sluice-dlq-replay`), so that running the same
//! replay twice does not produce the same dead letter twice.
//!
//! The rule that keeps filters safe ([`advance`]): a partition's position
//! moves only over a contiguous run of dead letters, from where it stands,
//! each of which was replayed or can never be replayed (it is not an
//! envelope, or it is cut and its original is gone). The first letter that
//! a run did not select, refused or failed stops it, so a later run, with
//! any filter, still finds every letter that was never replayed.
//!
//! Letters replayed past a position that is held back (by a refused
//! letter, say) are recorded in the commit's metadata as ranges of offsets
//! ([`Beyond`]), so that no later run replays them again; the position
//! moves over them once the letter holding it back is dealt with, and the
//! record shrinks as it does.
//!
//! Owns reading and committing that group's offsets; it never joins the
//! group and never reads a record.

use std::collections::{BTreeMap, BTreeSet};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

use super::{DlqRecord, ReplayError};
use crate::config::Config;

/// The next offset not yet dealt with, by dead-letter topic and partition.
pub type Positions = BTreeMap<(String, i32), i64>;

/// The letters at or past each partition's position that were dealt with
/// already, by dead-letter topic and partition.
pub type Beyond = BTreeMap<(String, i32), BTreeSet<i64>>;

/// What the commit metadata starts with when it records [`Beyond`].
const METADATA_PREFIX: &str = "sluice-replay-beyond:";

/// The most bytes of metadata a commit carries: Kafka brokers refuse more
/// than `offset.metadata.max.bytes`, 4096 by default.
pub const METADATA_BUDGET: usize = 4000;

/// The metadata recording `offsets`, as ranges (`12-40,45`), cut to
/// `budget` bytes; with how many of the offsets it records (the lowest
/// ones first).
pub fn encode(offsets: &BTreeSet<i64>, budget: usize) -> (String, usize) {
    let mut text = METADATA_PREFIX.to_owned();
    let mut recorded = 0;
    let mut iter = offsets.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last += 1;
            iter.next();
        }
        let range = if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        };
        let separator = usize::from(text.len() > METADATA_PREFIX.len());
        if text.len() + separator + range.len() > budget {
            break;
        }
        if separator == 1 {
            text.push(',');
        }
        text.push_str(&range);
        recorded += usize::try_from(last - first + 1).unwrap_or(usize::MAX);
    }
    (text, recorded)
}

/// The offsets that metadata written by [`encode`] records; anything else
/// (another tool's metadata, none) records none.
pub fn decode(metadata: &str) -> BTreeSet<i64> {
    let Some(ranges) = metadata.strip_prefix(METADATA_PREFIX) else {
        return BTreeSet::new();
    };
    let mut offsets = BTreeSet::new();
    for range in ranges.split(',').filter(|r| !r.is_empty()) {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        let (Ok(first), Ok(last)) = (first.parse::<i64>(), last.parse::<i64>()) else {
            return BTreeSet::new();
        };
        // A range past any real record count is not one this tool wrote.
        if last < first || last - first > 10_000_000 {
            return BTreeSet::new();
        }
        offsets.extend(first..=last);
    }
    offsets
}

/// The consumer group whose committed offsets are the replay position.
pub fn group(config: &Config) -> String {
    format!("{}.sluice-dlq-replay", config.group_id())
}

/// A client of the position group that never joins it.
fn client(config: &Config, bootstrap: &str, group: &str) -> Result<BaseConsumer, ReplayError> {
    crate::kafka::group_client_config(config, bootstrap, group)?
        .create()
        .map_err(crate::kafka::security::redact)
        .map_err(|source| ReplayError::Kafka {
            what: format!("creating a client of consumer group {group:?}"),
            source,
        })
}

/// The committed positions of `partitions`, and the letters recorded past
/// them; a partition without a position is left out (nothing replayed
/// there yet).
pub fn read(
    config: &Config,
    bootstrap: &str,
    group: &str,
    partitions: &BTreeSet<(String, i32)>,
) -> Result<(Positions, Beyond), ReplayError> {
    if partitions.is_empty() {
        return Ok((Positions::new(), Beyond::new()));
    }
    let consumer = client(config, bootstrap, group)?;
    let mut list = TopicPartitionList::new();
    for (topic, partition) in partitions {
        list.add_partition(topic, *partition);
    }
    let committed = consumer
        .committed_offsets(list, config.kafka.timeout())
        .map_err(|source| ReplayError::Kafka {
            what: format!("reading the replay position (consumer group {group:?})"),
            source,
        })?;
    let mut positions = Positions::new();
    let mut beyond = Beyond::new();
    for e in committed.elements() {
        if let Offset::Offset(o) = e.offset() {
            let key = (e.topic().to_owned(), e.partition());
            let past: BTreeSet<i64> = decode(e.metadata()).split_off(&o);
            if !past.is_empty() {
                beyond.insert(key.clone(), past);
            }
            positions.insert(key, o);
        }
    }
    Ok((positions, beyond))
}

/// The letters recorded past the positions `after` once a run is over:
/// those recorded before and those `settled` this run, at or past their
/// partition's position.
pub fn beyond_after(
    letters: &[DlqRecord],
    after: &Positions,
    before: &Beyond,
    settled: impl Fn(&DlqRecord) -> bool,
) -> Beyond {
    let mut beyond = before.clone();
    for r in letters.iter().filter(|r| settled(r)) {
        beyond
            .entry((r.dlq_topic.clone(), r.dlq_partition))
            .or_default()
            .insert(r.dlq_offset);
    }
    for (key, offsets) in &mut beyond {
        if let Some(&next) = after.get(key) {
            *offsets = offsets.split_off(&next);
        }
    }
    beyond.retain(|_, offsets| !offsets.is_empty());
    beyond
}

/// The positions after a run: from `start` (the saved positions, or none
/// to start over), each partition moves over its contiguous run of
/// `letters` (sorted by topic, partition and offset) that `settled`
/// accepts; a position never moves back from `saved`. Returns only the
/// partitions whose position moved.
pub fn advance(
    letters: &[DlqRecord],
    start: &Positions,
    saved: &Positions,
    settled: impl Fn(&DlqRecord) -> bool,
) -> Positions {
    let mut walked = start.clone();
    let mut stopped: BTreeSet<(&str, i32)> = BTreeSet::new();
    for r in letters {
        let at = (r.dlq_topic.as_str(), r.dlq_partition);
        if stopped.contains(&at) {
            continue;
        }
        let key = (r.dlq_topic.clone(), r.dlq_partition);
        if walked.get(&key).is_some_and(|&p| r.dlq_offset < p) {
            continue;
        }
        if settled(r) {
            walked.insert(key, r.dlq_offset + 1);
        } else {
            stopped.insert(at);
        }
    }
    walked
        .into_iter()
        .filter(|(key, p)| saved.get(key).is_none_or(|s| p > s))
        .collect()
}

/// Commits `positions` as the group's offsets, each with the letters of
/// `beyond` recorded past it in its metadata. Returns how many of those
/// did not fit in [`METADATA_BUDGET`] (a later run replays them again).
pub fn commit(
    config: &Config,
    bootstrap: &str,
    group: &str,
    positions: &Positions,
    beyond: &Beyond,
) -> Result<usize, ReplayError> {
    if positions.is_empty() {
        return Ok(0);
    }
    let consumer = client(config, bootstrap, group)?;
    let mut list = TopicPartitionList::new();
    let mut unrecorded = 0;
    for ((topic, partition), offset) in positions {
        let key = (topic.clone(), *partition);
        let past = beyond.get(&key).cloned().unwrap_or_default();
        let (metadata, recorded) = encode(&past, METADATA_BUDGET);
        unrecorded += past.len() - recorded;
        let record_error = |source| ReplayError::Kafka {
            what: format!("recording the replay position of {topic}/{partition}"),
            source,
        };
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(record_error)?;
        if let Some(mut e) = list.find_partition(topic, *partition) {
            e.set_metadata(metadata);
        }
    }
    consumer
        .commit(&list, CommitMode::Sync)
        .map_err(|source| ReplayError::Kafka {
            what: format!("committing the replay position (consumer group {group:?})"),
            source,
        })?;
    Ok(unrecorded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(partition: i32, offset: i64) -> DlqRecord {
        DlqRecord::decode("dlq", partition, offset, Vec::new(), None)
    }

    fn at(entries: &[(i32, i64)]) -> Positions {
        entries
            .iter()
            .map(|&(p, o)| (("dlq".to_owned(), p), o))
            .collect()
    }

    #[test]
    fn a_position_stops_at_the_first_letter_not_settled() {
        let letters = [letter(0, 0), letter(0, 1), letter(0, 5), letter(0, 6)];
        // Offsets 0 and 1 replayed, 5 not selected, 6 replayed: 6 is left
        // for a later run rather than skipping 5.
        let settled = |r: &DlqRecord| r.dlq_offset != 5;
        let moved = advance(&letters, &Positions::new(), &Positions::new(), settled);
        assert_eq!(moved, at(&[(0, 2)]));
        // A later run that settles 5 moves over 5 and 6, past the gap of
        // missing offsets between 1 and 5.
        let moved = advance(&letters, &at(&[(0, 2)]), &at(&[(0, 2)]), |_| true);
        assert_eq!(moved, at(&[(0, 7)]));
    }

    #[test]
    fn offsets_recorded_past_the_position_round_trip_as_ranges() {
        let offsets: BTreeSet<i64> = [3, 4, 5, 6, 9, 11, 12].into_iter().collect();
        let (text, recorded) = encode(&offsets, METADATA_BUDGET);
        assert_eq!(text, format!("{METADATA_PREFIX}3-6,9,11-12"));
        assert_eq!(recorded, 7);
        assert_eq!(decode(&text), offsets);
        // Nothing recorded, another tool's metadata, or garbage: none.
        assert_eq!(decode(&encode(&BTreeSet::new(), 100).0), BTreeSet::new());
        for other in [
            "",
            "some-other-tool",
            "sluice-replay-beyond:x-1",
            "sluice-replay-beyond:9-3",
        ] {
            assert_eq!(decode(other), BTreeSet::new(), "{other:?}");
        }
    }

    #[test]
    fn a_record_over_the_budget_keeps_the_lowest_ranges_and_says_how_many() {
        let offsets: BTreeSet<i64> = (0..2_000).map(|i| i * 2).collect();
        let (text, recorded) = encode(&offsets, METADATA_BUDGET);
        assert!(text.len() <= METADATA_BUDGET, "{}", text.len());
        assert!(recorded > 0 && recorded < offsets.len(), "{recorded}");
        let kept = decode(&text);
        assert_eq!(kept.len(), recorded);
        assert!(kept.iter().copied().eq((0..recorded as i64).map(|i| i * 2)));
    }

    #[test]
    fn letters_settled_past_a_held_position_are_recorded_until_it_moves_over_them() {
        let letters = [letter(0, 0), letter(0, 1), letter(0, 2), letter(0, 3)];
        // 0 replayed, 1 refused, 2 and 3 replayed: the position stops at
        // 1, and 2 and 3 are recorded past it.
        let settled = |r: &DlqRecord| r.dlq_offset != 1;
        let after = advance(&letters, &Positions::new(), &Positions::new(), settled);
        assert_eq!(after, at(&[(0, 1)]));
        let beyond = beyond_after(&letters, &after, &Beyond::new(), settled);
        let key = ("dlq".to_owned(), 0);
        assert_eq!(beyond[&key], [2, 3].into_iter().collect());
        // A later run settles 1 (and counts 2 and 3 as settled, being
        // recorded): the position moves to 4 and the record empties.
        let all = |_: &DlqRecord| true;
        let after = advance(&letters, &after, &after, all);
        assert_eq!(after, at(&[(0, 4)]));
        assert!(beyond_after(&letters, &after, &beyond, all).is_empty());
    }

    #[test]
    fn partitions_move_on_their_own_and_never_back() {
        let letters = [letter(0, 0), letter(0, 1), letter(1, 0), letter(1, 1)];
        let settled = |r: &DlqRecord| !(r.dlq_partition == 1 && r.dlq_offset == 0);
        let saved = at(&[(0, 1)]);
        assert_eq!(advance(&letters, &saved, &saved, settled), at(&[(0, 2)]));
        // Starting over: a run that settles less than was saved moves
        // nothing back.
        let saved = at(&[(0, 2), (1, 2)]);
        let none = |_: &DlqRecord| false;
        assert_eq!(
            advance(&letters, &Positions::new(), &saved, none),
            Positions::new()
        );
    }
}

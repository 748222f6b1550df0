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
//! Owns reading and committing that group's offsets; it never joins the
//! group and never reads a record.

use std::collections::{BTreeMap, BTreeSet};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

use super::{DlqRecord, ReplayError};
use crate::config::Config;

/// The next offset not yet dealt with, by dead-letter topic and partition.
pub type Positions = BTreeMap<(String, i32), i64>;

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

/// The committed positions of `partitions`; a partition without one is
/// left out (nothing replayed there yet).
pub fn read(
    config: &Config,
    bootstrap: &str,
    group: &str,
    partitions: &BTreeSet<(String, i32)>,
) -> Result<Positions, ReplayError> {
    if partitions.is_empty() {
        return Ok(Positions::new());
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
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
            _ => None,
        })
        .collect())
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

/// Commits `positions` as the group's offsets.
pub fn commit(
    config: &Config,
    bootstrap: &str,
    group: &str,
    positions: &Positions,
) -> Result<(), ReplayError> {
    if positions.is_empty() {
        return Ok(());
    }
    let consumer = client(config, bootstrap, group)?;
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in positions {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(|source| ReplayError::Kafka {
                what: format!("recording the replay position of {topic}/{partition}"),
                source,
            })?;
    }
    consumer
        .commit(&list, CommitMode::Sync)
        .map_err(|source| ReplayError::Kafka {
            what: format!("committing the replay position (consumer group {group:?})"),
            source,
        })
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

//! The offsets tool's conversations with the broker: the partitions of the
//! routed topics with their committed offsets and watermarks, who is in the
//! group, the offsets of a point in time, and the commit of a plan.
//!
//! Every client here uses the daemon's group id and connection settings but
//! never subscribes, so it never joins the group.

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

use super::{Move, PartitionState, RewindError};
use crate::config::Config;

/// A client of the daemon's group that never joins it.
fn client(config: &Config) -> Result<BaseConsumer, RewindError> {
    if config.is_embedded() {
        return Err(RewindError::EmbeddedBroker);
    }
    let bootstrap = &config.kafka.bootstrap_servers;
    crate::kafka::group_client_config(config, bootstrap, &config.group_id())?
        .create()
        .map_err(crate::kafka::security::redact)
        .map_err(|source| RewindError::Kafka {
            what: format!(
                "creating a client of consumer group {:?}",
                config.group_id()
            ),
            source,
        })
}

/// The partitions of `topic`, from the broker's metadata.
fn partitions_of(
    consumer: &BaseConsumer,
    config: &Config,
    topic: &str,
) -> Result<Vec<i32>, RewindError> {
    let bootstrap = &config.kafka.bootstrap_servers;
    let partitions = crate::kafka::partitions_of(consumer.client(), topic, config.kafka.timeout())
        .map_err(|source| RewindError::Kafka {
            what: format!("reading the metadata of {topic:?} from {bootstrap}"),
            source,
        })?;
    if partitions.is_empty() {
        return Err(RewindError::TopicMissing {
            topic: topic.to_owned(),
            bootstrap: bootstrap.clone(),
        });
    }
    Ok(partitions)
}

/// Every partition of `topics` with the group's committed offset and the
/// partition's watermarks, in topic and partition order.
pub fn partition_states(
    config: &Config,
    topics: &[String],
) -> Result<Vec<PartitionState>, RewindError> {
    let consumer = client(config)?;
    let timeout = config.kafka.timeout();
    let mut list = TopicPartitionList::new();
    for topic in topics {
        for p in partitions_of(&consumer, config, topic)? {
            list.add_partition(topic, p);
        }
    }
    let group = config.group_id();
    let committed = consumer
        .committed_offsets(list.clone(), timeout)
        .map_err(|source| RewindError::Kafka {
            what: format!("reading the committed offsets of consumer group {group:?}"),
            source,
        })?;
    list.elements()
        .iter()
        .map(|e| {
            let (topic, partition) = (e.topic(), e.partition());
            let (earliest, latest) = consumer
                .fetch_watermarks(topic, partition, timeout)
                .map_err(|source| RewindError::Kafka {
                    what: format!("reading the first and last offsets of {topic}/{partition}"),
                    source,
                })?;
            let committed = match committed
                .find_partition(topic, partition)
                .map(|c| c.offset())
            {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
            Ok(PartitionState {
                topic: topic.to_owned(),
                partition,
                committed,
                earliest,
                latest,
            })
        })
        .collect()
}

/// For each of `states`, the first offset whose record is at or after
/// `time_ms`, or `None` where no record is that recent, in the same order.
pub fn times_to_offsets(
    config: &Config,
    states: &[PartitionState],
    time_ms: i64,
) -> Result<Vec<Option<i64>>, RewindError> {
    let consumer = client(config)?;
    let mut list = TopicPartitionList::new();
    for s in states {
        list.add_partition_offset(&s.topic, s.partition, Offset::Offset(time_ms))
            .map_err(|source| RewindError::Kafka {
                what: format!(
                    "asking for the offset of a time on {}/{}",
                    s.topic, s.partition
                ),
                source,
            })?;
    }
    let found = consumer
        .offsets_for_times(list, config.kafka.timeout())
        .map_err(|source| RewindError::Kafka {
            what: "asking the broker for the offsets of a time".to_owned(),
            source,
        })?;
    states
        .iter()
        .map(|s| {
            let Some(e) = found.find_partition(&s.topic, s.partition) else {
                return Err(RewindError::TimeUnanswered {
                    topic: s.topic.clone(),
                    partition: s.partition,
                });
            };
            // A partition the broker could not answer for is an error, not
            // "no record since": that would skip the whole partition.
            e.error().map_err(|source| RewindError::Kafka {
                what: format!(
                    "asking for the offset of a time on {}/{}",
                    s.topic, s.partition
                ),
                source,
            })?;
            Ok(match e.offset() {
                Offset::Offset(o) if o >= 0 => Some(o),
                _ => None,
            })
        })
        .collect()
}

/// Who is in the daemon's consumer group right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMembers {
    /// The consumer group.
    pub group: String,
    /// The group's state as the broker names it (`Stable`, `Empty`, ...);
    /// empty when the broker does not know the group.
    pub state: String,
    /// Each member as `client id@host`.
    pub members: Vec<String>,
}

impl GroupMembers {
    /// Refuses to go on while anyone is in the group.
    pub fn ensure_empty(&self) -> Result<(), RewindError> {
        if self.members.is_empty() {
            return Ok(());
        }
        Err(RewindError::GroupActive {
            group: self.group.clone(),
            count: self.members.len(),
            members: self.members.join(", "),
        })
    }
}

/// Asks the group's coordinator who is in the group (DescribeGroups).
pub fn describe_group(config: &Config) -> Result<GroupMembers, RewindError> {
    let group = config.group_id();
    let consumer = client(config)?;
    let list = consumer
        .fetch_group_list(Some(&group), config.kafka.timeout())
        .map_err(|e| RewindError::GroupUnknown {
            group: group.clone(),
            reason: e.to_string(),
        })?;
    let Some(info) = list.groups().iter().find(|g| g.name() == group) else {
        // A group the broker has never heard of has nobody in it.
        return Ok(GroupMembers {
            group,
            state: String::new(),
            members: Vec::new(),
        });
    };
    Ok(GroupMembers {
        group,
        state: info.state().to_owned(),
        members: info
            .members()
            .iter()
            .map(|m| format!("{}@{}", m.client_id(), m.client_host()))
            .collect(),
    })
}

/// Commits each move's offset as the group's, then reads them back: the
/// offsets the broker now holds, in the same order.
pub fn commit(config: &Config, moves: &[Move]) -> Result<Vec<Option<i64>>, RewindError> {
    let consumer = client(config)?;
    let group = config.group_id();
    let mut list = TopicPartitionList::new();
    for m in moves {
        let (topic, partition) = (&m.state.topic, m.state.partition);
        list.add_partition_offset(topic, partition, Offset::Offset(m.to))
            .map_err(|source| RewindError::Kafka {
                what: format!("preparing the offset of {topic}/{partition}"),
                source,
            })?;
    }
    // A broker refuses this commit if a member joined since the group was
    // described: the commit comes from outside the group's generation.
    consumer
        .commit(&list, CommitMode::Sync)
        .map_err(|source| RewindError::Kafka {
            what: format!("committing the new offsets of consumer group {group:?}"),
            source,
        })?;
    let now = consumer
        .committed_offsets(list, config.kafka.timeout())
        .map_err(|source| RewindError::Kafka {
            what: format!("reading back the offsets of consumer group {group:?}"),
            source,
        })?;
    Ok(moves
        .iter()
        .map(|m| {
            match now
                .find_partition(&m.state.topic, m.state.partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            }
        })
        .collect())
}

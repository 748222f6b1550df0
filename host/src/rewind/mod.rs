//! Rewinding the consumer group (`sluice offsets`): reading where the
//! daemon's group stands on each partition it consumes, and moving those
//! committed offsets so that a team can reprocess after fixing a handler
//! (or skip ahead past a backlog).
//!
//! The decision is kept apart from the broker: [`plan`] turns what the
//! broker said about a partition ([`PartitionState`]) and a [`Target`] into
//! the offset to commit, with no I/O; `broker` reads the states, checks
//! that the group has no live member and commits the plan.
//!
//! Owns the daemon group's committed offsets outside the daemon: it never
//! joins the group, never reads a record and does not print (see
//! `cli::offsets`). While the group has live members it moves nothing, as
//! `kafka-consumer-groups --reset-offsets` does: a running daemon would
//! overwrite the new offsets with its own at its next commit.

mod broker;

use rdkafka::error::KafkaError;

pub use broker::{GroupMembers, commit, describe_group, partition_states, times_to_offsets};

/// Why the offsets tool cannot do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum RewindError {
    /// The configuration names the in-process development broker.
    #[error(
        "kafka.bootstrap_servers is {broker:?}: the embedded broker lives inside the daemon's \
         process and cannot be reached from here; point the config (or \
         KAFKA_BOOTSTRAP_SERVERS) at a real broker",
        broker = crate::config::EMBEDDED_BROKER
    )]
    EmbeddedBroker,
    /// `--topic` names a topic no route consumes.
    #[error(
        "--topic {topic:?} is not consumed by any route of the config, so the group {group:?} \
         has no offsets there; routed topics: {routed}"
    )]
    NotRouted {
        /// What was given.
        topic: String,
        /// The consumer group.
        group: String,
        /// The topics the routes consume, comma-separated.
        routed: String,
    },
    /// A routed topic is not on the broker.
    #[error("topic {topic:?} does not exist on {bootstrap}")]
    TopicMissing {
        /// The topic.
        topic: String,
        /// The brokers asked.
        bootstrap: String,
    },
    /// The group has live members: moving its offsets now would be undone
    /// by their next commit.
    #[error(
        "consumer group {group:?} has {count} live member(s) ({members}): stop every daemon of \
         the group (and any other consumer in it), wait for its session to end, then run the \
         reset again"
    )]
    GroupActive {
        /// The consumer group.
        group: String,
        /// How many members it has.
        count: usize,
        /// Who they are: `client id@host`, comma-separated.
        members: String,
    },
    /// The broker would not say who is in the group; nothing is moved
    /// without knowing.
    #[error(
        "cannot tell whether consumer group {group:?} has live members, so its offsets were \
         not moved: the broker did not describe the group ({reason})"
    )]
    GroupUnknown {
        /// The consumer group.
        group: String,
        /// What went wrong.
        reason: String,
    },
    /// The broker's answer to a time lookup left a partition out.
    #[error(
        "the broker did not say which offset of {topic}/{partition} a time falls on; nothing \
         was moved"
    )]
    TimeUnanswered {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
    /// A Kafka client could not be created or a request failed.
    #[error("{what}")]
    Kafka {
        /// What was being done.
        what: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// A file the connection settings name (a certificate, a mounted
    /// secret) cannot be read.
    #[error(transparent)]
    Settings(#[from] crate::config::ConfigError),
}

/// Where to move a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The first offset still on the broker (the low watermark).
    Earliest,
    /// The end of the partition (the high watermark): skip everything there.
    Latest,
    /// This offset, on every partition selected.
    Offset(i64),
    /// The first record at or after this time (ms since the epoch).
    Time(i64),
    /// The current position moved by this many records (negative: back).
    ShiftBy(i64),
}

/// What the broker says about one partition of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The group's committed offset, if it has one.
    pub committed: Option<i64>,
    /// The first offset still on the broker.
    pub earliest: i64,
    /// The offset the next record will get.
    pub latest: i64,
}

impl PartitionState {
    /// Records between the committed offset and the end; `None` without a
    /// committed offset.
    pub fn lag(&self) -> Option<i64> {
        self.committed.map(|c| (self.latest - c).max(0))
    }
}

/// Why a planned offset differs from what was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjustment {
    /// The offset asked for is below the first one still on the broker.
    RaisedToEarliest,
    /// The offset asked for is past the end of the partition.
    LoweredToLatest,
    /// No record is at or after the time asked for: the end.
    NoRecordSince,
}

impl Adjustment {
    /// A short explanation for people.
    pub fn describe(self) -> &'static str {
        match self {
            Adjustment::RaisedToEarliest => "below the earliest offset: moved up to it",
            Adjustment::LoweredToLatest => "past the end: moved down to it",
            Adjustment::NoRecordSince => "no record at or after that time: the end",
        }
    }

    /// A stable name for scripts.
    pub fn name(self) -> &'static str {
        match self {
            Adjustment::RaisedToEarliest => "raised_to_earliest",
            Adjustment::LoweredToLatest => "lowered_to_latest",
            Adjustment::NoRecordSince => "no_record_since",
        }
    }
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The partition as it stands.
    pub state: PartitionState,
    /// The offset to commit.
    pub to: i64,
    /// Why `to` is not exactly what was asked, if it is not.
    pub adjusted: Option<Adjustment>,
}

/// Where the daemon would start a partition that has no committed offset:
/// at its start or its end, as `kafka.auto_offset_reset` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartWithout {
    /// `auto_offset_reset = "earliest"`.
    Earliest,
    /// `auto_offset_reset = "latest"`.
    Latest,
}

/// The offset to commit for one partition. `by_time` is the broker's answer
/// for a [`Target::Time`] (the first offset at or after it, `None` when no
/// record is that recent); `start_without` is where a shift starts from on
/// a partition with no committed offset. The result always lies between
/// the earliest and the latest offset.
pub fn plan(
    state: &PartitionState,
    target: Target,
    by_time: Option<i64>,
    start_without: StartWithout,
) -> Move {
    let wanted = match target {
        Target::Earliest => state.earliest,
        Target::Latest => state.latest,
        Target::Offset(o) => o,
        Target::Time(_) => match by_time {
            Some(o) => o,
            None => {
                return Move {
                    state: state.clone(),
                    to: state.latest,
                    adjusted: Some(Adjustment::NoRecordSince),
                };
            }
        },
        Target::ShiftBy(n) => {
            let from = state.committed.unwrap_or(match start_without {
                StartWithout::Earliest => state.earliest,
                StartWithout::Latest => state.latest,
            });
            from.saturating_add(n)
        }
    };
    let (to, adjusted) = if wanted < state.earliest {
        (state.earliest, Some(Adjustment::RaisedToEarliest))
    } else if wanted > state.latest {
        (state.latest, Some(Adjustment::LoweredToLatest))
    } else {
        (wanted, None)
    };
    Move {
        state: state.clone(),
        to,
        adjusted,
    }
}

/// The topics whose offsets a command reads: `pick` if given (it must be a
/// routed topic), otherwise every topic a route consumes, each once, sorted.
pub fn topics(
    config: &crate::config::Config,
    pick: Option<&str>,
) -> Result<Vec<String>, RewindError> {
    let routed: std::collections::BTreeSet<&str> =
        config.routes.iter().map(|r| r.topic.as_str()).collect();
    match pick {
        Some(topic) if routed.contains(topic) => Ok(vec![topic.to_owned()]),
        Some(topic) => Err(RewindError::NotRouted {
            topic: topic.to_owned(),
            group: config.group_id(),
            routed: routed.into_iter().collect::<Vec<_>>().join(", "),
        }),
        None => Ok(routed.into_iter().map(str::to_owned).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(committed: Option<i64>, earliest: i64, latest: i64) -> PartitionState {
        PartitionState {
            topic: "orders".into(),
            partition: 0,
            committed,
            earliest,
            latest,
        }
    }

    fn to(s: &PartitionState, target: Target) -> (i64, Option<Adjustment>) {
        let m = plan(s, target, None, StartWithout::Earliest);
        (m.to, m.adjusted)
    }

    #[test]
    fn each_target_lands_where_it_says() {
        let s = state(Some(40), 10, 50);
        assert_eq!(to(&s, Target::Earliest), (10, None));
        assert_eq!(to(&s, Target::Latest), (50, None));
        assert_eq!(to(&s, Target::Offset(25)), (25, None));
        assert_eq!(to(&s, Target::ShiftBy(-15)), (25, None));
        assert_eq!(to(&s, Target::ShiftBy(5)), (45, None));
        let by_time = plan(&s, Target::Time(1_000), Some(33), StartWithout::Earliest);
        assert_eq!((by_time.to, by_time.adjusted), (33, None));
    }

    #[test]
    fn offsets_outside_the_partition_are_brought_inside_and_say_so() {
        let s = state(Some(40), 10, 50);
        let raised = Some(Adjustment::RaisedToEarliest);
        let lowered = Some(Adjustment::LoweredToLatest);
        assert_eq!(to(&s, Target::Offset(3)), (10, raised));
        assert_eq!(to(&s, Target::Offset(900)), (50, lowered));
        assert_eq!(to(&s, Target::ShiftBy(-100)), (10, raised));
        assert_eq!(to(&s, Target::ShiftBy(i64::MAX)), (50, lowered));
        let late = plan(&s, Target::Time(1_000), None, StartWithout::Earliest);
        assert_eq!(
            (late.to, late.adjusted),
            (50, Some(Adjustment::NoRecordSince))
        );
    }

    #[test]
    fn a_shift_without_a_committed_offset_starts_where_the_daemon_would() {
        let s = state(None, 10, 50);
        let from_start = plan(&s, Target::ShiftBy(5), None, StartWithout::Earliest);
        assert_eq!(from_start.to, 15);
        let from_end = plan(&s, Target::ShiftBy(-5), None, StartWithout::Latest);
        assert_eq!(from_end.to, 45);
    }

    #[test]
    fn lag_is_what_remains_after_the_committed_offset() {
        assert_eq!(state(Some(40), 10, 50).lag(), Some(10));
        assert_eq!(state(None, 10, 50).lag(), None);
        // A committed offset past a truncated end is no negative lag.
        assert_eq!(state(Some(60), 10, 50).lag(), Some(0));
    }

    #[test]
    fn only_routed_topics_can_be_picked() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("plugins")).expect("plugins dir");
        std::fs::write(dir.path().join("plugins/m.wasm"), b"").expect("module file");
        let config = crate::config::Config::parse(
            "[kafka]\nbootstrap_servers = \"b:9092\"\ngroup = \"g\"\n\
             [[routes]]\ntopic = \"b\"\nmodule = \"m\"\n\
             [[routes]]\ntopic = \"a\"\nmodule = \"m\"\n",
            dir.path(),
            &|_| None,
        )
        .expect("a valid config");
        assert_eq!(topics(&config, None).expect("routed"), ["a", "b"]);
        assert_eq!(topics(&config, Some("b")).expect("routed"), ["b"]);
        let error = topics(&config, Some("c"))
            .expect_err("not routed")
            .to_string();
        assert!(
            error.contains("\"c\"") && error.contains("routed topics: a, b"),
            "{error}"
        );
    }
}

//! What happens to a message whose handler call failed, or whose record the
//! producer refused: the one place that names the kinds of failure,
//! decides whether a failure is retried and after how long, says which
//! dead-letter error type it becomes, says which produce errors are worth
//! trying again, and which consumer errors are about one record.
//!
//! Every error the producer reports for a record is one of two kinds:
//! *for now* (the broker is down, a request timed out, a leader moved: the
//! same record will be taken later, so it is produced again and counts
//! against the broker breaker) or *for good* (it is too large, invalid,
//! against a policy, for a topic that does not exist or that Sluice may not
//! write: producing it again can never succeed, so the message it belongs to
//! fails instead, and the broker breaker does not count it).
//!
//! Every mapping from an error of wasmtime's (through [`crate::wasm::Failure`])
//! or of the Kafka client to Sluice's kinds of failure is here.
//! Configuration (`retry_on`), metrics (the `error_type` label), the
//! dead-letter writer, the partition worker and the delivery core all read
//! it, and it reads nothing of theirs.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::wasm::Failure;

/// The kind of a failed handler call, as `retry_on` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The handler returned a retryable error, or no instance could be made
    /// for it (a full pool: the host's problem, and a retry may succeed).
    Retryable,
    /// The call ran past its deadline.
    Timeout,
    /// The guest trapped (a panic, a stack overflow, a bad memory access).
    Trap,
    /// The guest grew past its memory limit.
    MemoryLimit,
    /// What the handler returned breaks the route's output rules: a topic
    /// outside `output_topics`, an output bound, or a record the broker
    /// refused for good.
    InvalidOutput,
    /// The handler returned a permanent error.
    Permanent,
    /// The Kafka client could not decode the record (a corrupt batch, a
    /// record over the fetch limit), and the route's `on_undecodable` is
    /// `"dead-letter"`: no call was made, and none is retried. Not a
    /// `retry_on` choice.
    Undecodable,
}

impl FailureKind {
    /// The kind of a failed call: what `retry_on` names and the retry
    /// policy decides on. An instance that could not be created is the
    /// host's problem (a full pool), so it counts as retryable.
    pub fn of_call(failure: &Failure) -> FailureKind {
        match failure {
            Failure::Handler {
                retryable: true, ..
            }
            | Failure::Instantiate(_) => FailureKind::Retryable,
            Failure::Handler {
                retryable: false, ..
            } => FailureKind::Permanent,
            Failure::Timeout(_) => FailureKind::Timeout,
            Failure::Trap { .. } => FailureKind::Trap,
            Failure::MemoryLimitExceeded { .. } => FailureKind::MemoryLimit,
            Failure::InvalidOutput(_) => FailureKind::InvalidOutput,
        }
    }

    /// Every kind `retry_on` may name, in documentation order.
    pub const ALL: [FailureKind; 6] = [
        FailureKind::Retryable,
        FailureKind::Timeout,
        FailureKind::Trap,
        FailureKind::MemoryLimit,
        FailureKind::InvalidOutput,
        FailureKind::Permanent,
    ];

    /// The name used in `retry_on`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Retryable => "retryable",
            FailureKind::Timeout => "timeout",
            FailureKind::Trap => "trap",
            FailureKind::MemoryLimit => "memory_limit",
            FailureKind::InvalidOutput => "invalid_output",
            FailureKind::Permanent => "permanent",
            FailureKind::Undecodable => "undecodable",
        }
    }

    /// The kind named `name` in `retry_on`.
    pub fn parse(name: &str) -> Option<FailureKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether the failure, once it is not retried (again), counts against
    /// the route's handler breaker. Retryable errors and timeouts suggest
    /// something the handler depends on is down, so the messages behind
    /// them would fail too; the other kinds are about the message.
    pub fn trips_breaker(self) -> bool {
        matches!(self, FailureKind::Retryable | FailureKind::Timeout)
    }

    /// The dead-letter error type of a failure that is not retried (again).
    pub fn error_type(self) -> ErrorType {
        match self {
            FailureKind::Retryable => ErrorType::RetriesExhausted,
            FailureKind::Timeout => ErrorType::HandlerTimeout,
            FailureKind::Trap => ErrorType::HandlerTrap,
            FailureKind::MemoryLimit => ErrorType::MemoryLimitExceeded,
            FailureKind::InvalidOutput => ErrorType::InvalidOutput,
            FailureKind::Permanent => ErrorType::HandlerError,
            FailureKind::Undecodable => ErrorType::UndecodableRecord,
        }
    }
}

/// Why a message was dead-lettered: a small fixed set, used as the
/// `error_type` field and header of the dead-letter record and as a metrics
/// label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// The handler returned a permanent error.
    HandlerError,
    /// The handler kept returning retryable errors (or could not be
    /// instantiated) until the retries ran out.
    RetriesExhausted,
    /// The handler kept timing out until the retries ran out.
    HandlerTimeout,
    /// The handler trapped: a panic, a stack overflow, a bad memory access.
    HandlerTrap,
    /// The handler grew its memory past the route's limit.
    MemoryLimitExceeded,
    /// The handler emitted to a topic that is not in the route's
    /// `output_topics`, over one of the route's output bounds, or a record
    /// the broker refused for good.
    InvalidOutput,
    /// The Kafka client could not decode the record; no handler saw it.
    UndecodableRecord,
}

impl ErrorType {
    /// Every error type, for documentation and metrics.
    pub const ALL: [ErrorType; 7] = [
        ErrorType::HandlerError,
        ErrorType::RetriesExhausted,
        ErrorType::HandlerTimeout,
        ErrorType::HandlerTrap,
        ErrorType::MemoryLimitExceeded,
        ErrorType::InvalidOutput,
        ErrorType::UndecodableRecord,
    ];

    /// The name written into dead-letter records.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::HandlerError => "HandlerError",
            ErrorType::RetriesExhausted => "RetriesExhausted",
            ErrorType::HandlerTimeout => "HandlerTimeout",
            ErrorType::HandlerTrap => "HandlerTrap",
            ErrorType::MemoryLimitExceeded => "MemoryLimitExceeded",
            ErrorType::InvalidOutput => "InvalidOutput",
            ErrorType::UndecodableRecord => "UndecodableRecord",
        }
    }
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The exponential retry backoff: retry `n` (0 for the first) waits
/// `base * 2^n * jitter`, jitter uniform in [0.5, 1.5], at most `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first retry's delay before jitter.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry `n` (0 for the first) with a random jitter.
    pub fn delay(&self, n: u32) -> Duration {
        self.delay_with_jitter(n, 0.5 + fastrand::f64())
    }

    /// The delay before retry `n` with the given jitter factor.
    pub fn delay_with_jitter(&self, n: u32, jitter: f64) -> Duration {
        let exp = 2f64.powi(i32::try_from(n.min(62)).unwrap_or(62));
        let secs = self.base.as_secs_f64() * exp * jitter;
        Duration::try_from_secs_f64(secs).map_or(self.max, |d| d.min(self.max))
    }
}

/// A route's retry rules.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The kinds of failure that are retried.
    pub retry_on: Vec<FailureKind>,
    /// Retries before the message is given up on.
    pub max_retry_attempts: u32,
    /// The delay before each retry.
    pub backoff: Backoff,
}

/// What happens to a message after a failed call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Call the handler again with it after the delay.
    Retry(Duration),
    /// Give up: the message is dead-lettered, or its partition stops on it
    /// when the route has no dead-letter topic.
    GiveUp(ErrorType),
}

impl RetryPolicy {
    /// What happens to a message whose call number `attempt` (1 for the
    /// first) failed with `kind`; `jitter` in [0.5, 1.5] scales the delay.
    pub fn decide(&self, kind: FailureKind, attempt: u32, jitter: f64) -> Decision {
        if self.retry_on.contains(&kind) && attempt <= self.max_retry_attempts {
            Decision::Retry(
                self.backoff
                    .delay_with_jitter(attempt.saturating_sub(1), jitter),
            )
        } else {
            Decision::GiveUp(kind.error_type())
        }
    }
}

/// What a produce error means for the record it refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceRefusal {
    /// Producing the same record again may succeed.
    Transient,
    /// The record can never be produced as it is.
    Permanent,
}

impl ProduceRefusal {
    /// The kind of `error`, as reported for a record by `send` or in its
    /// delivery report.
    pub fn of(error: &KafkaError) -> ProduceRefusal {
        match error {
            KafkaError::MessageProduction(code) => Self::of_code(*code),
            _ => ProduceRefusal::Transient,
        }
    }

    /// The kind of a librdkafka or broker error code.
    pub fn of_code(code: RDKafkaErrorCode) -> ProduceRefusal {
        use RDKafkaErrorCode as C;
        match code {
            // The record itself: too large, malformed, refused by a policy.
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::MessageBatchTooLarge
            | C::InvalidMessage
            | C::InvalidRecord
            | C::InvalidTimestamp
            | C::BadMessage
            | C::InvalidArgument
            | C::PolicyViolation
            | C::UnsupportedForMessageFormat
            | C::UnsupportedCompressionType
            // The topic: missing after librdkafka refreshed its metadata,
            // or not a valid name.
            | C::UnknownTopic
            | C::UnknownPartition
            | C::UnknownTopicOrPartition
            | C::UnknownTopicId
            | C::InvalidTopic
            // Sluice may not write there.
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::InvalidRequiredAcks => ProduceRefusal::Permanent,
            _ => ProduceRefusal::Transient,
        }
    }
}

/// A record the producer refused for good.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The topic it was for.
    pub topic: String,
    /// Why, as librdkafka or the broker said.
    pub error: KafkaError,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the record for topic {:?} was refused for good: {}",
            self.topic, self.error
        )
    }
}

/// Whether a consumer error is about a record librdkafka fetched but could
/// not hand over: a corrupt or undecompressible batch, a codec the build
/// lacks, a record over the fetch limit. Errors about the connection or the
/// group are not: they say nothing about one offset.
pub fn is_record_error(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::BadMessage
            | C::BadCompression
            | C::NotImplemented
            | C::MessageSizeTooLarge
            | C::InvalidMessage
            | C::InvalidMessageSize
            | C::InvalidRecord
            | C::UnsupportedCompressionType
            | C::UnsupportedForMessageFormat
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retry_on: &[FailureKind], max: u32) -> RetryPolicy {
        RetryPolicy {
            retry_on: retry_on.to_vec(),
            max_retry_attempts: max,
            backoff: Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_secs(1),
            },
        }
    }

    #[test]
    fn a_listed_kind_is_retried_until_the_attempts_run_out() {
        let p = policy(&[FailureKind::Retryable], 2);
        let decide = |attempt| p.decide(FailureKind::Retryable, attempt, 1.0);
        assert_eq!(decide(1), Decision::Retry(Duration::from_millis(100)));
        assert_eq!(decide(2), Decision::Retry(Duration::from_millis(200)));
        assert_eq!(decide(3), Decision::GiveUp(ErrorType::RetriesExhausted));
    }

    #[test]
    fn an_unlisted_kind_is_given_up_at_once_with_its_error_type() {
        let p = policy(&[FailureKind::Retryable], 5);
        for kind in FailureKind::ALL {
            if kind == FailureKind::Retryable {
                continue;
            }
            assert_eq!(p.decide(kind, 1, 1.0), Decision::GiveUp(kind.error_type()));
        }
    }

    #[test]
    fn every_kind_has_its_own_name_and_error_type() {
        for kind in FailureKind::ALL {
            assert_eq!(FailureKind::parse(kind.as_str()), Some(kind));
        }
        let mut types: Vec<&str> = FailureKind::ALL
            .iter()
            .chain([&FailureKind::Undecodable])
            .map(|k| k.error_type().as_str())
            .collect();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), ErrorType::ALL.len());
    }

    #[test]
    fn a_record_the_client_could_not_decode_is_never_retried() {
        assert_eq!(
            FailureKind::parse("undecodable"),
            None,
            "not a retry_on choice"
        );
        let p = policy(&FailureKind::ALL, 10);
        assert_eq!(
            p.decide(FailureKind::Undecodable, 1, 1.0),
            Decision::GiveUp(ErrorType::UndecodableRecord)
        );
    }

    #[test]
    fn backoff_doubles_within_the_jitter_bounds_and_is_capped() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        assert_eq!(
            backoff.delay_with_jitter(0, 1.0),
            Duration::from_millis(100)
        );
        assert_eq!(
            backoff.delay_with_jitter(3, 1.0),
            Duration::from_millis(800)
        );
        assert_eq!(
            backoff.delay_with_jitter(3, 0.5),
            Duration::from_millis(400)
        );
        assert_eq!(
            backoff.delay_with_jitter(3, 1.5),
            Duration::from_millis(1200)
        );
        assert_eq!(backoff.delay_with_jitter(6, 1.0), Duration::from_secs(5));
        assert_eq!(backoff.delay_with_jitter(u32::MAX, 1.5), backoff.max);
        for n in 0..6 {
            let nominal = backoff.delay_with_jitter(n, 1.0);
            for _ in 0..1000 {
                let d = backoff.delay(n);
                assert!(d >= nominal / 2 && d <= nominal * 3 / 2, "{d:?} for {n}");
            }
        }
    }

    #[test]
    fn a_record_that_can_never_be_taken_is_permanent() {
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::PolicyViolation,
            RDKafkaErrorCode::InvalidRecord,
        ] {
            let error = KafkaError::MessageProduction(code);
            assert_eq!(
                ProduceRefusal::of(&error),
                ProduceRefusal::Permanent,
                "{code:?}"
            );
        }
    }

    #[test]
    fn an_outage_is_transient() {
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::BrokerTransportFailure,
        ] {
            let error = KafkaError::MessageProduction(code);
            assert_eq!(
                ProduceRefusal::of(&error),
                ProduceRefusal::Transient,
                "{code:?}"
            );
        }
        let other = KafkaError::Canceled;
        assert_eq!(ProduceRefusal::of(&other), ProduceRefusal::Transient);
    }

    #[test]
    fn record_errors_are_told_from_connection_errors() {
        use RDKafkaErrorCode as C;
        assert!(is_record_error(C::BadCompression));
        assert!(is_record_error(C::NotImplemented));
        assert!(is_record_error(C::MessageSizeTooLarge));
        assert!(!is_record_error(C::AllBrokersDown));
        assert!(!is_record_error(C::BrokerTransportFailure));
        assert!(!is_record_error(C::TopicAuthorizationFailed));
    }

    #[test]
    fn each_failure_has_the_kind_retry_on_names() {
        let trap = Failure::Trap {
            kind: crate::wasm::TrapKind::Panic,
            detail: String::new(),
        };
        let handler = |retryable| Failure::Handler {
            retryable,
            message: String::new(),
        };
        assert_eq!(FailureKind::of_call(&trap), FailureKind::Trap);
        assert_eq!(
            FailureKind::of_call(&Failure::Timeout(Duration::from_secs(1))),
            FailureKind::Timeout
        );
        assert_eq!(FailureKind::of_call(&handler(true)), FailureKind::Retryable);
        assert_eq!(
            FailureKind::of_call(&handler(false)),
            FailureKind::Permanent
        );
        assert_eq!(
            FailureKind::of_call(&Failure::Instantiate(String::new())),
            FailureKind::Retryable
        );
    }
}

//! Which produce errors are worth trying again.
//!
//! Every error the producer reports for a record is one of two kinds:
//! *transient* (the broker is down, a request timed out, a leader moved:
//! the same record will be taken later, so it is produced again and counts
//! against the broker breaker) or *permanent for this record* (it is too
//! large, invalid, against a policy, for a topic that does not exist or that
//! Sluice may not write: producing it again can never succeed, so the
//! message it belongs to fails instead, and the broker breaker does not
//! count it).
//!
//! Owns the classification only; what a refusal does to a message belongs
//! to the partition worker and its acknowledger.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// What a produce error means for the record it refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Producing the same record again may succeed.
    Transient,
    /// The record can never be produced as it is.
    Permanent,
}

impl Refusal {
    /// The kind of `error`, as reported for a record by `send` or in its
    /// delivery report.
    pub fn of(error: &KafkaError) -> Refusal {
        match error {
            KafkaError::MessageProduction(code) => Self::of_code(*code),
            _ => Refusal::Transient,
        }
    }

    /// The kind of a librdkafka or broker error code.
    pub fn of_code(code: RDKafkaErrorCode) -> Refusal {
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
            | C::InvalidRequiredAcks => Refusal::Permanent,
            _ => Refusal::Transient,
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

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(Refusal::of(&error), Refusal::Permanent, "{code:?}");
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
            assert_eq!(Refusal::of(&error), Refusal::Transient, "{code:?}");
        }
        let other = KafkaError::Canceled;
        assert_eq!(Refusal::of(&other), Refusal::Transient);
    }
}

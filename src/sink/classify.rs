//! Which Kafka errors are transient, which are the row's fault, which are
//! fatal. The one list of codes: the relay's stall-or-dead-letter decision
//! comes from here and nowhere else.

use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};

use crate::error::ErrorClass;

/// A producer or broker error as the relay sees it: its class and its text.
/// No librdkafka type crosses the sink port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkError {
    /// What to do about it (stall, dead-letter, stop).
    pub class: ErrorClass,
    /// librdkafka's message, for logs and the DLQ headers.
    pub message: String,
    /// The message (or its value) was too large: the DLQ copy leaves the
    /// value out.
    pub too_large: bool,
}

impl SinkError {
    /// Classify a librdkafka error.
    pub fn from_kafka(e: &KafkaError) -> Self {
        Self {
            class: kafka_class(e),
            message: e.to_string(),
            too_large: matches!(
                e.rdkafka_error_code(),
                Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::InvalidMessage)
            ),
        }
    }

    /// `topic` does not exist and the relay will not create it.
    pub fn missing_topic(topic: &str) -> Self {
        Self {
            class: ErrorClass::Permanent,
            message: format!(
                "topic {topic} does not exist (and kafka.create-topics is off or the broker refuses to create it)"
            ),
            too_large: false,
        }
    }

    /// The relay's principal may not see `topic` (the broker answers
    /// metadata for it with TOPIC_AUTHORIZATION_FAILED, as for a topic
    /// without a Describe ACL).
    pub fn forbidden_topic(topic: &str) -> Self {
        Self {
            class: ErrorClass::Permanent,
            message: format!(
                "Broker: Topic authorization failed (TopicAuthorizationFailed): the relay's principal may not describe or write topic {topic}"
            ),
            too_large: false,
        }
    }

    /// An error of `class` with `message` (tests, fakes).
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            too_large: false,
        }
    }
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SinkError {}

/// Codes where the broker refused *this message* and will refuse it again:
/// retrying only stalls the stream. A missing topic is the row's fault too
/// (its `topic` column or the template named it): counted and dead-lettered
/// like any refusal, never replayed forever.
pub const PERMANENT_ROW_CODES: &[C] = &[
    C::UnknownTopicOrPartition,
    C::UnknownTopic,
    C::MessageSizeTooLarge,
    C::InvalidMessageSize,
    C::InvalidTopic,
    C::TopicAuthorizationFailed,
    C::InvalidRecord,
    C::InvalidMessage,
    C::PolicyViolation,
    C::InvalidTimestamp,
    C::UnsupportedForMessageFormat,
];

/// Codes where the producer as a whole cannot work: credentials, cluster
/// authorization, or a configuration the broker rejects.
pub const FATAL_CODES: &[C] = &[
    C::ClusterAuthorizationFailed,
    C::SaslAuthenticationFailed,
    C::UnsupportedSASLMechanism,
    C::Authentication,
    C::InvalidRequiredAcks,
    C::TransactionalIdAuthorizationFailed,
];

/// The class of a librdkafka error; everything not listed is transient
/// (broker down, timeouts, leader elections, queue full, …).
pub fn kafka_class(e: &KafkaError) -> ErrorClass {
    match e {
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => ErrorClass::Fatal,
        _ => match e.rdkafka_error_code() {
            Some(code) if PERMANENT_ROW_CODES.contains(&code) => ErrorClass::Permanent,
            Some(code) if FATAL_CODES.contains(&code) => ErrorClass::Fatal,
            _ => ErrorClass::Transient,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let p = |c| KafkaError::MessageProduction(c);
        assert_eq!(
            kafka_class(&p(C::MessageSizeTooLarge)),
            ErrorClass::Permanent
        );
        assert_eq!(kafka_class(&p(C::InvalidTopic)), ErrorClass::Permanent);
        assert_eq!(
            kafka_class(&p(C::UnknownTopicOrPartition)),
            ErrorClass::Permanent,
            "a missing topic is the row's fault, not a reason to replay forever"
        );
        assert!(SinkError::from_kafka(&p(C::MessageSizeTooLarge)).too_large);
        assert_eq!(kafka_class(&p(C::MessageTimedOut)), ErrorClass::Transient);
        assert_eq!(kafka_class(&p(C::NotEnoughReplicas)), ErrorClass::Transient);
        assert_eq!(
            kafka_class(&p(C::LeaderNotAvailable)),
            ErrorClass::Transient
        );
        assert_eq!(kafka_class(&p(C::QueueFull)), ErrorClass::Transient);
        assert_eq!(
            kafka_class(&p(C::SaslAuthenticationFailed)),
            ErrorClass::Fatal
        );
    }
}

//! Which Kafka errors are transient, which are the row's fault, which are
//! fatal. The one list of codes: the relay's stall-or-dead-letter decision
//! comes from here and nowhere else.

use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};

use crate::error::ErrorClass;

/// Codes where the broker refused *this message* and will refuse it again:
/// retrying only stalls the stream.
pub const PERMANENT_ROW_CODES: &[C] = &[
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

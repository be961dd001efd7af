//! The Kafka side: routing a record to a topic, building the message with its
//! headers, the producer with its delivery reports, and the error classes.
//!
//! Invariant 3 (commit order) is kept here: the producer is configured with
//! `enable.idempotence=true`, `acks=all` and at most 5 requests in flight per
//! connection, gap-less, and [`kafka_config::check_properties`] refuses
//! pass-through properties that would weaken any of them. With idempotence, librdkafka
//! keeps per-partition order across its own retries; the relay hands it
//! messages in WAL commit order.

pub mod classify;
pub mod cloudevents;
pub mod kafka_config;
pub mod message;
pub mod producer;
pub mod progress_topic;
pub mod route;
pub mod transactional;

pub use message::TxnMeta;
pub use producer::{Delivery, FailedMessage, MsgTag, Publisher, SendError};

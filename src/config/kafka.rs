//! The `[kafka]` section: broker connection, routing, the in-flight
//! bounds, the message format and the delivery mode, with their defaults.
//! librdkafka properties pass through here and are checked by
//! [`crate::sink::kafka_config`]; a section this large is easier to review
//! on its own than among the others.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sink::cloudevents::{CloudEventsConfig, MessageFormat};

/// Broker connection and routing.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: Option<String>,
    /// Topic when the row's `topic` column is empty. Placeholders:
    /// `{aggregate_type}`, `{event_type}`, `{table}`.
    pub topic_template: String,
    /// Messages handed to librdkafka but not yet acknowledged; reading the
    /// stream pauses at this bound (invariant 6).
    pub max_in_flight: usize,
    /// Bytes (key, value, headers) handed to librdkafka but not yet
    /// acknowledged: the memory bound, since `max-in-flight` messages of up
    /// to 1 MB each would be 10 GB.
    pub max_in_flight_bytes: usize,
    /// Create a missing topic before the first message to it (for brokers
    /// without auto-creation). Off by default: topics are usually managed.
    pub create_topics: bool,
    /// Partitions of topics created by `create-topics`.
    pub topic_partitions: i32,
    /// Replication factor of topics created by `create-topics`; `0` means
    /// min(3, brokers in the cluster). Their `min.insync.replicas` is
    /// min(2, replication factor): never a silent 1 on a multi-broker
    /// cluster, which would quietly undo `acks=all`.
    pub topic_replication_factor: i32,
    /// Dead-letter topic for rows that cannot be published.
    pub dlq_topic: String,
    /// How often the topics the relay writes are checked for drift (a
    /// missing DLQ topic, a changed partition count; see
    /// [`crate::topic_drift`]); also once at startup. `0s` disables.
    #[serde(with = "humantime_serde")]
    pub topic_check_interval: Duration,
    /// Add a `relay_instance` header (`host:pid:start-ms`) to every message,
    /// so consumers and tests can tell which relay produced it (after a
    /// takeover, for example). Off by default: it costs bytes per message.
    pub instance_header: bool,
    /// Any librdkafka producer property, passed through.
    pub properties: BTreeMap<String, String>,
    /// `raw`, `cloudevents-binary` or `cloudevents-structured`
    /// ([`crate::sink::cloudevents`]).
    pub format: MessageFormat,
    /// How CloudEvents attributes are derived (used by the CloudEvents
    /// formats only).
    pub cloudevents: CloudEventsConfig,
    /// `at-least-once` (idempotent producer, checkpoint after acks) or
    /// `exactly-once` (Kafka transactions carrying the resume position; see
    /// [`crate::relay`]'s `txn` part and README "Exactly-once mode").
    pub delivery: Delivery,
    /// The transactional producer's `transactional.id` (exactly-once only).
    /// Empty: `outbox-relay.<database>.<slot>`, stable across restarts. A
    /// relay starting with the same id fences the one before it.
    pub transactional_id: String,
    /// Single-partition compacted topic holding the resume position, written
    /// in the same Kafka transaction as the messages it covers (exactly-once
    /// only). One topic serves many relays: records are keyed by the
    /// transactional id.
    pub progress_topic: String,
    /// How long a Kafka transaction collects messages before it commits
    /// (exactly-once only): the floor of commit → visible-to-`read_committed`.
    #[serde(with = "humantime_serde")]
    pub transaction_interval: Duration,
    /// Messages per Kafka transaction; a PostgreSQL transaction with more is
    /// split, and the progress record's index resumes it exactly.
    pub transaction_max_messages: usize,
}

/// `kafka.delivery`: the promise made to consumers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Every row at least once; a crash re-sends what was in flight.
    #[default]
    AtLeastOnce,
    /// Every row exactly once to a `read_committed` consumer.
    ExactlyOnce,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: None,
            topic_template: "outbox.{aggregate_type}".into(),
            max_in_flight: 10_000,
            max_in_flight_bytes: 64 * 1024 * 1024,
            create_topics: false,
            topic_partitions: 3,
            topic_replication_factor: 0,
            dlq_topic: "outbox.dlq".into(),
            topic_check_interval: Duration::from_secs(60),
            instance_header: false,
            properties: BTreeMap::new(),
            format: MessageFormat::Raw,
            cloudevents: CloudEventsConfig::default(),
            delivery: Delivery::AtLeastOnce,
            transactional_id: String::new(),
            progress_topic: "outbox-relay.progress".into(),
            transaction_interval: Duration::from_millis(100),
            transaction_max_messages: 10_000,
        }
    }
}

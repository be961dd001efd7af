//! The one place librdkafka client configurations are built: the settings the
//! relay pins, the defaults a user may change, the pass-through properties and
//! the checks on them. Every client (the producer, the producer for rows sent
//! alone, the admin client) comes from [`KafkaConfig::to_rdkafka`], so they
//! cannot drift apart (the admin client once dropped `client.id` and more).

use std::collections::BTreeMap;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

use crate::config::KafkaConfig;
use crate::error::{ConfigError, RelayError};

/// Which client a configuration is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientRole {
    /// The session's producer: pipelined, idempotent, gap-less.
    Producer,
    /// The producer for a row re-sent alone after the broker refused it
    /// (nothing else is in flight then). Without the gap-less guarantee, so a
    /// repeated refusal fails that one message instead of stopping the
    /// producer for good.
    Isolated,
    /// Admin requests (topic creation): connection and security settings only.
    Admin,
    /// The exactly-once producer ([`crate::sink::transactional`]): the
    /// producer's settings without the gap-less guarantee (a transaction that
    /// fails aborts whole, so nothing can overtake) and without the 5-minute
    /// `message.timeout.ms` (librdkafka requires it ≤ `transaction.timeout.ms`
    /// and derives it from there). The caller adds `transactional.id`.
    Transactional,
}

/// Properties the relay sets and a user may not weaken: they are what keeps
/// per-partition order across retries (invariant 3).
///
/// `enable.gapless.guarantee`: when the broker refuses a batch for good (a
/// record over `max.message.bytes`, a topic the principal may not write),
/// librdkafka would otherwise bump the producer epoch and renumber the batches
/// already in flight behind it, which then land *before* the refused row's
/// re-send: a reordering nothing downstream can undo. With the guarantee the
/// producer stops instead; the session ends and replays from the durable
/// checkpoint, sending the refused rows alone (see `relay::policy`).
const PINNED: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("max.in.flight.requests.per.connection", "5"),
    ("enable.gapless.guarantee", "true"),
];

/// Defaults a user may override: low linger for latency, generous queue so
/// `kafka.max-in-flight` is the bound that bites, not librdkafka's.
const DEFAULTS: &[(&str, &str)] = &[
    ("linger.ms", "1"),
    // A new session's producer must get its producer id at once: connect to
    // every broker up front instead of on demand, and keep reconnect
    // backoff short so recovery after an outage takes well under a second.
    ("enable.sparse.connections", "false"),
    ("reconnect.backoff.max.ms", "1000"),
    ("queue.buffering.max.messages", "1000000"),
    ("message.timeout.ms", "300000"),
    ("socket.keepalive.enable", "true"),
    // The Java client's partitioner (murmur2 of the key), not librdkafka's CRC32 default:
    // a key lands on the partition Java producers and Debezium put it on, so one
    // aggregate's events never split across partitions when a team moves to the relay.
    ("partitioner", "murmur2_random"),
];

/// Pass-through properties an admin client takes: how to reach and
/// authenticate to the cluster, never producer behaviour.
const ADMIN_PREFIXES: &[&str] = &[
    "security.",
    "sasl.",
    "ssl.",
    "ssl_",
    "client.",
    "socket.",
    "reconnect.",
    "broker.",
    "api.version",
    "connections.",
    "metadata.",
    "topic.metadata.",
    "debug",
    "log_level",
];

impl KafkaConfig {
    /// The librdkafka configuration of a client in `role`.
    pub fn to_rdkafka(&self, role: ClientRole) -> ClientConfig {
        let mut c = ClientConfig::new();
        match role {
            ClientRole::Producer | ClientRole::Isolated | ClientRole::Transactional => {
                for (k, v) in DEFAULTS {
                    c.set(*k, *v);
                }
                for (k, v) in &self.properties {
                    c.set(k, v);
                }
                for (k, v) in PINNED {
                    if !self.properties.contains_key(*k) {
                        c.set(*k, *v);
                    }
                }
                if role == ClientRole::Isolated {
                    c.set("enable.gapless.guarantee", "false");
                }
                if role == ClientRole::Transactional {
                    c.remove("enable.gapless.guarantee");
                    if !self.properties.contains_key("message.timeout.ms") {
                        c.remove("message.timeout.ms");
                    }
                }
            }
            ClientRole::Admin => {
                for (k, v) in &self.properties {
                    if ADMIN_PREFIXES.iter().any(|p| k.starts_with(p)) {
                        c.set(k, v);
                    }
                }
            }
        }
        c.set(
            "bootstrap.servers",
            self.brokers.as_deref().unwrap_or_default(),
        );
        c
    }
}

/// Let librdkafka check every property name and value, and what it checks
/// only when a client is created (the SASL mechanism, the CA file), without
/// connecting anywhere: the client is built with no bootstrap servers and a
/// context that keeps librdkafka's notes to itself. What `check-config` runs.
pub fn validate(kafka: &KafkaConfig) -> Result<(), RelayError> {
    for role in [
        ClientRole::Producer,
        ClientRole::Admin,
        ClientRole::Transactional,
    ] {
        if role == ClientRole::Transactional
            && kafka.delivery != crate::config::Delivery::ExactlyOnce
        {
            continue;
        }
        let mut c = kafka.to_rdkafka(role);
        c.remove("bootstrap.servers");
        if role == ClientRole::Transactional {
            c.set("transactional.id", "check-config");
        }
        let _client: rdkafka::producer::BaseProducer<Silent> = c
            .create_with_context(Silent)
            .map_err(|e| creation_error(e, "checking the Kafka client configuration"))?;
    }
    Ok(())
}

/// A client context that logs nothing: the offline check has no broker to
/// talk about.
struct Silent;

impl rdkafka::ClientContext for Silent {
    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, _: &str, _: &str) {}
    fn error(&self, _: KafkaError, _: &str) {}
}

impl rdkafka::producer::ProducerContext for Silent {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// A client librdkafka would not create: a configuration error naming the
/// property, never echoing a secret value (librdkafka quotes what it rejects).
pub fn creation_error(e: KafkaError, doing: &str) -> RelayError {
    match e {
        KafkaError::ClientConfig(_, msg, key, value) => {
            let msg = if crate::config::is_secret_property(&key) && !value.is_empty() {
                msg.replace(&value, "***")
            } else {
                msg
            };
            RelayError::Config(ConfigError::new(format!("kafka.properties.{key}"), msg))
        }
        KafkaError::ClientCreation(msg) => {
            RelayError::Config(ConfigError::new("kafka.properties", msg))
        }
        other => RelayError::kafka(doing, other),
    }
}

/// Reject pass-through properties that would break ordering or that have a
/// dedicated key; the error names the key.
pub fn check_properties(props: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (k, v) in props {
        let key = format!("kafka.properties.{k}");
        match k.as_str() {
            "bootstrap.servers" | "metadata.broker.list" => {
                return Err(ConfigError::new(key, "use kafka.brokers instead"));
            }
            "enable.idempotence" if v != "true" => {
                return Err(ConfigError::new(
                    key,
                    "must stay true: it keeps per-partition order across retries",
                ));
            }
            "enable.gapless.guarantee" if v != "true" => {
                return Err(ConfigError::new(
                    key,
                    "must stay true: without it a refused batch lets later ones overtake it",
                ));
            }
            "acks" | "request.required.acks" if !(v == "all" || v == "-1") => {
                return Err(ConfigError::new(
                    key,
                    "must stay all: a checkpoint may only follow a durable ack",
                ));
            }
            "max.in.flight.requests.per.connection" | "max.in.flight" => {
                let n: u32 = v
                    .parse()
                    .map_err(|_| ConfigError::new(&key, "must be an integer 1-5"))?;
                if !(1..=5).contains(&n) {
                    return Err(ConfigError::new(key, "must be 1-5 with idempotence"));
                }
            }
            "transactional.id" => {
                return Err(ConfigError::new(
                    key,
                    "set by the relay: use kafka.transactional-id (with kafka.delivery = \"exactly-once\")",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(props: &[(&str, &str)]) -> KafkaConfig {
        KafkaConfig {
            brokers: Some("b:9092".into()),
            properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..KafkaConfig::default()
        }
    }

    #[test]
    fn producer_pins_order_settings_and_takes_user_defaults() {
        let c = kafka(&[("linger.ms", "20"), ("client.id", "me")]).to_rdkafka(ClientRole::Producer);
        assert_eq!(c.get("linger.ms"), Some("20"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("enable.gapless.guarantee"), Some("true"));
        assert_eq!(c.get("partitioner"), Some("murmur2_random"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(c.get("client.id"), Some("me"));
    }

    #[test]
    fn isolated_producer_drops_only_the_gapless_guarantee() {
        let c = kafka(&[]).to_rdkafka(ClientRole::Isolated);
        assert_eq!(c.get("enable.gapless.guarantee"), Some("false"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
    }

    #[test]
    fn admin_keeps_connection_settings_only() {
        let c = kafka(&[
            ("client.id", "me"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.username", "u"),
            ("linger.ms", "20"),
        ])
        .to_rdkafka(ClientRole::Admin);
        assert_eq!(c.get("client.id"), Some("me"));
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("sasl.username"), Some("u"));
        assert_eq!(c.get("linger.ms"), None);
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
    }

    #[test]
    fn weakening_a_pinned_setting_names_the_key() {
        for (k, v) in [
            ("enable.idempotence", "false"),
            ("enable.gapless.guarantee", "false"),
            ("acks", "1"),
            ("max.in.flight.requests.per.connection", "6"),
        ] {
            let props = [(k.to_string(), v.to_string())].into_iter().collect();
            let e = check_properties(&props).unwrap_err();
            assert_eq!(e.key, format!("kafka.properties.{k}"));
        }
    }
}

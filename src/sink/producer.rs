//! The producer: one librdkafka idempotent producer per relay session, its
//! delivery reports funnelled into one channel, tagged with the transaction
//! they belong to.
//!
//! Pipelining: [`Publisher::send`] only enqueues; acknowledgements come back
//! on the [`Delivery`] channel. Nothing awaits a single message.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};
use rdkafka::ClientContext;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::decode::OutboxRecord;
use crate::error::ConfigError;
use crate::error::{RelayError, Result};
use crate::sink::classify::SinkError;
use crate::sink::message::{headers, TxnMeta};

/// Properties the relay sets and a user may not weaken: they are what keeps
/// per-partition order across retries (invariant 3).
const PINNED: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("max.in.flight.requests.per.connection", "5"),
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
                    "not supported: the relay uses idempotence and checkpoints, not transactions",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The librdkafka configuration for the relay's producer.
pub fn client_config(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in DEFAULTS {
        c.set(*k, *v);
    }
    for (k, v) in &cfg.kafka.properties {
        c.set(k, v);
    }
    for (k, v) in PINNED {
        if !cfg.kafka.properties.contains_key(*k) {
            c.set(*k, *v);
        }
    }
    c.set("bootstrap.servers", cfg.kafka_brokers());
    c
}

/// What travels with a message through librdkafka and comes back in its
/// delivery report (boxed as the delivery opaque).
#[derive(Debug, Clone)]
pub struct MsgTag {
    /// Transaction sequence number (see `crate::tracker`).
    pub txn: u64,
    /// Outbox row id, for error messages, the DLQ and FAILED marking.
    pub row_id: i64,
    /// When the message was handed to the producer.
    pub sent_at: std::time::Instant,
    /// Commit time of its transaction, Unix ms (end-to-end latency).
    pub commit_unix_millis: i64,
    /// Delivery attempts so far (1 on the first send).
    pub attempt: u32,
    /// When the first attempt failed, if one did.
    pub first_failure: Option<std::time::SystemTime>,
    /// This is the dead-letter copy, not the original.
    pub is_dlq: bool,
    /// Sent alone (nothing else in flight): a refusal is this row's own and
    /// counts as an attempt; in a batch it may be a neighbour's.
    pub isolated: bool,
    /// Bytes the message holds in the producer (key, value, headers), for
    /// `kafka.max-in-flight-bytes`.
    pub bytes: usize,
}

impl MsgTag {
    /// The tag of a message's first delivery attempt.
    pub fn first(txn: u64, row_id: i64, commit_unix_millis: i64) -> Box<Self> {
        Box::new(Self {
            txn,
            row_id,
            sent_at: std::time::Instant::now(),
            commit_unix_millis,
            attempt: 1,
            first_failure: None,
            is_dlq: false,
            isolated: false,
            bytes: 0,
        })
    }
}

/// A message the broker refused, copied out of librdkafka so it can be
/// retried or dead-lettered. Only failures are copied.
#[derive(Debug, Clone)]
pub struct FailedMessage {
    /// The error, classified.
    pub error: SinkError,
    /// Topic it was sent to.
    pub topic: String,
    /// Key as sent.
    pub key: Option<Vec<u8>>,
    /// Value as sent.
    pub payload: Option<Vec<u8>>,
    /// Headers as sent.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// One delivery report.
#[derive(Debug)]
pub struct Delivery {
    /// The tag the message was sent with.
    pub tag: Box<MsgTag>,
    /// `Ok` once the broker acknowledged with acks=all; the topic is kept for
    /// per-topic counters.
    pub result: std::result::Result<String, Box<FailedMessage>>,
}

/// Forwards delivery reports from librdkafka's polling thread to the relay.
pub struct ReportingContext {
    tx: mpsc::UnboundedSender<Delivery>,
    /// The latest error librdkafka reported for a broker connection (e.g. the
    /// broker refusing the SASL credentials, a failed TLS handshake): the
    /// cause behind a failed startup check, which only sees "transport failure".
    last_error: std::sync::Mutex<Option<(RDKafkaErrorCode, String)>>,
}

impl ClientContext for ReportingContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            // A failed broker connection (FAIL) or a fatal producer error (FATAL)
            // is the relay's to report: it retries with backoff, or stops with
            // one line naming the cause (see `Publisher::check_reachable` and
            // `Publisher::fatal_error`). The error callback below repeats it.
            _ if fac == "FAIL" || fac == "FATAL" => {
                tracing::warn!(target: "librdkafka", facility = fac, "{log_message}")
            }
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", facility = fac, "{log_message}")
            }
            L::Warning => tracing::warn!(target: "librdkafka", facility = fac, "{log_message}"),
            _ => tracing::debug!(target: "librdkafka", facility = fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, "{reason}");
        // "All brokers down" is the summary, not the cause.
        if let Some(code) = error.rdkafka_error_code() {
            if code != RDKafkaErrorCode::AllBrokersDown {
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((code, reason.to_string()));
            }
        }
    }
}

impl ProducerContext for ReportingContext {
    type DeliveryOpaque = Box<MsgTag>;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: Box<MsgTag>) {
        use rdkafka::message::{Headers, Message};
        let result = match result {
            Ok(m) => Ok(m.topic().to_string()),
            Err((e, m)) => Err(Box::new(FailedMessage {
                error: SinkError::from_kafka(e),
                topic: m.topic().to_string(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
            })),
        };
        // The receiver is gone only when the session is being torn down;
        // its messages will be replayed from the durable checkpoint.
        let _ = self.tx.send(Delivery { tag, result });
    }
}

/// Why a message could not be enqueued.
#[derive(Debug)]
pub enum SendError {
    /// librdkafka's local queue is full: wait for a delivery report, retry.
    QueueFull,
    /// Anything else, classified by [`crate::sink::classify`].
    Refused(SinkError),
}

fn classify_send<K, P>(
    (e, rec): (KafkaError, BaseRecord<'_, K, P, Box<MsgTag>>),
) -> (SendError, Box<MsgTag>)
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    let err = match e {
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => SendError::QueueFull,
        other => SendError::Refused(SinkError::from_kafka(&other)),
    };
    (err, rec.delivery_opaque)
}

/// The relay's producer.
pub struct Publisher {
    producer: ThreadedProducer<ReportingContext>,
    admin: Option<AdminClient<DefaultClientContext>>,
    known_topics: HashSet<String>,
    topic_partitions: i32,
    /// `kafka.topic-replication-factor`, resolved from the cluster size on first use when 0.
    topic_replication: i32,
}

impl Publisher {
    /// Create the producer and its delivery channel. Fails with a config
    /// error naming `kafka.properties` when librdkafka rejects a property.
    pub fn new(cfg: &Config) -> Result<(Self, mpsc::UnboundedReceiver<Delivery>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let cc = client_config(cfg);
        let producer: ThreadedProducer<ReportingContext> = cc
            .create_with_context(ReportingContext {
                tx,
                last_error: std::sync::Mutex::new(None),
            })
            .map_err(|e| match e {
                KafkaError::ClientConfig(_, msg, key, value) => {
                    // librdkafka quotes the rejected value; never echo a secret.
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
                other => RelayError::kafka("creating producer", other),
            })?;
        let admin = if cfg.kafka.create_topics {
            let mut ac = ClientConfig::new();
            for (k, v) in &cfg.kafka.properties {
                if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
                    ac.set(k, v);
                }
            }
            ac.set("bootstrap.servers", cfg.kafka_brokers());
            Some(
                ac.create()
                    .map_err(|e| RelayError::kafka("creating admin client", e))?,
            )
        } else {
            None
        };
        Ok((
            Self {
                producer,
                admin,
                known_topics: HashSet::new(),
                topic_partitions: cfg.kafka.topic_partitions,
                topic_replication: cfg.kafka.topic_replication_factor,
            },
            rx,
        ))
    }

    /// Fail fast when no broker answers (startup check): a metadata request
    /// with a deadline. The error carries the cause librdkafka reported for
    /// the broker connection when there is one (refused credentials, a failed
    /// TLS handshake), whose code decides the class.
    pub fn check_reachable(&self, timeout: Duration) -> Result<()> {
        self.producer
            .client()
            .fetch_metadata(None, timeout)
            .map(|_| ())
            .map_err(|e| {
                let cause = self
                    .producer
                    .context()
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                match cause {
                    Some((code, reason)) => RelayError::kafka(
                        format!("no broker answered a metadata request: {reason}"),
                        KafkaError::Global(code),
                    ),
                    None => RelayError::kafka("no broker answered a metadata request", e),
                }
            })
    }

    /// Number of brokers in the cluster (a blocking metadata request, once per session).
    fn cluster_size(&self, admin: &AdminClient<DefaultClientContext>) -> Result<i32> {
        let fetch = || {
            admin
                .inner()
                .fetch_metadata(None, Duration::from_secs(10))
                .map(|m| m.brokers().len() as i32)
                .map_err(|e| RelayError::kafka("asking the cluster for its brokers", e))
        };
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(fetch),
            _ => fetch(),
        }
    }

    /// Create `topic` if `kafka.create-topics` is on and we have not seen it.
    pub async fn ensure_topic(&mut self, topic: &str) -> Result<()> {
        let Some(admin) = &self.admin else {
            return Ok(());
        };
        if self.known_topics.contains(topic) {
            return Ok(());
        }
        if self.topic_replication <= 0 {
            self.topic_replication = self.cluster_size(admin)?.clamp(1, 3);
        }
        let min_isr = self.topic_replication.min(2).to_string();
        let nt = NewTopic::new(
            topic,
            self.topic_partitions,
            TopicReplication::Fixed(self.topic_replication),
        )
        .set("min.insync.replicas", &min_isr);
        let res = admin
            .create_topics(
                &[nt],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .map_err(|e| RelayError::kafka(format!("creating topic {topic}"), e))?;
        for r in res {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(RelayError::kafka(
                        format!("creating topic {t}"),
                        KafkaError::AdminOp(code),
                    ))
                }
            }
        }
        self.known_topics.insert(topic.to_string());
        Ok(())
    }

    /// Whether `topic` can take messages: created when `kafka.create-topics`
    /// is on, otherwise asked of the broker once (a metadata request) so a
    /// missing topic is known at once instead of after librdkafka's
    /// `topic.metadata.propagation.max.ms`. Only existing topics are cached.
    pub async fn topic_exists(&mut self, topic: &str) -> Result<bool> {
        if self.admin.is_some() {
            self.ensure_topic(topic).await?;
            return Ok(true);
        }
        if self.known_topics.contains(topic) {
            return Ok(true);
        }
        let client = self.producer.client();
        let ask = || client.fetch_metadata(Some(topic), Duration::from_secs(10));
        let md = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(ask),
            _ => ask(),
        }
        .map_err(|e| RelayError::kafka(format!("metadata for topic {topic}"), e))?;
        let exists = md
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        if exists {
            self.known_topics.insert(topic.to_string());
        }
        Ok(exists)
    }

    /// Enqueue one record.
    pub fn send(
        &self,
        rec: &OutboxRecord,
        meta: &TxnMeta,
        topic: &str,
        tag: Box<MsgTag>,
    ) -> std::result::Result<(), (SendError, Box<MsgTag>)> {
        let record = BaseRecord::with_opaque_to(topic, tag)
            .key(rec.aggregate_id.as_bytes())
            .payload(rec.payload.as_ref())
            .headers(headers(rec, meta))
            .timestamp(meta.commit_unix_millis);
        self.producer.send(record).map_err(classify_send)
    }

    /// Enqueue an already built message: a retry of a refused one, or its
    /// dead-letter copy.
    pub fn send_raw(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        hdrs: &[(String, Vec<u8>)],
        timestamp_ms: i64,
        tag: Box<MsgTag>,
    ) -> std::result::Result<(), (SendError, Box<MsgTag>)> {
        let mut h = OwnedHeaders::new_with_capacity(hdrs.len());
        for (k, v) in hdrs {
            h = h.insert(Header {
                key: k.as_str(),
                value: Some(v.as_slice()),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8], Box<MsgTag>> =
            BaseRecord::with_opaque_to(topic, tag)
                .headers(h)
                .timestamp(timestamp_ms);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        self.producer.send(record).map_err(classify_send)
    }

    /// The fatal error that stopped this producer, if any. librdkafka stops an
    /// idempotent producer for good when the broker refuses it a producer id
    /// (its principal may write no topic and lacks IdempotentWrite on the
    /// cluster) or when the idempotence guarantee is lost. The class follows the
    /// underlying code: a refused authorization stops the relay with this
    /// error; anything else is transient (the next session gets a new producer).
    pub fn fatal_error(&self) -> Option<RelayError> {
        let (code, reason) = self.producer.client().fatal_error()?;
        let hint = if code == RDKafkaErrorCode::ClusterAuthorizationFailed {
            " (the relay's principal needs Write on its topics or IdempotentWrite on the cluster)"
        } else {
            ""
        };
        Some(RelayError::kafka(
            format!("the producer stopped: {reason}{hint}"),
            KafkaError::Global(code),
        ))
    }

    /// Messages enqueued or in flight inside librdkafka.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Drop everything not yet acknowledged: used when a session ends with
    /// an error, since the next session replays from the durable checkpoint.
    pub fn purge(&self) {
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
    }
}

//! The producer: one librdkafka idempotent producer per relay session, its
//! delivery reports funnelled into one channel, tagged with the transaction
//! they belong to.
//!
//! Pipelining: [`Publisher::send`] only enqueues; acknowledgements come back
//! on the [`Delivery`] channel. Nothing awaits a single message.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
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
use crate::error::{RelayError, Result};
use crate::sink::classify::SinkError;
use crate::sink::kafka_config::{self, ClientRole};
use crate::sink::message::{headers, value, TxnMeta};

/// Header naming the relay process that produced a message
/// (`kafka.instance-header`): `host:pid:start-ms`. Set on first sends (not
/// on lone retries of refused rows).
pub const INSTANCE_HEADER: &str = "relay_instance";

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
    /// per-topic counters (shared, see [`ReportingContext`]).
    pub result: std::result::Result<Arc<str>, Box<FailedMessage>>,
}

/// Forwards delivery reports from librdkafka's polling thread to the relay.
pub struct ReportingContext {
    tx: mpsc::UnboundedSender<Delivery>,
    /// The latest error librdkafka reported for a broker connection (e.g. the
    /// broker refusing the SASL credentials, a failed TLS handshake): the
    /// cause behind a failed startup check, which only sees "transport failure".
    last_error: std::sync::Mutex<Option<(RDKafkaErrorCode, String)>>,
    /// The topics acknowledged so far, each once: an acknowledgement hands
    /// out a shared name instead of allocating a `String` per message on
    /// librdkafka's thread (to be freed on the session's — a cross-thread
    /// free per message, which glibc's allocator pays for dearly). Only the
    /// polling thread takes the lock, so it is never contended.
    topics: Mutex<Vec<Arc<str>>>,
}

impl ReportingContext {
    fn new(tx: mpsc::UnboundedSender<Delivery>) -> Self {
        Self {
            tx,
            last_error: std::sync::Mutex::new(None),
            topics: Mutex::new(Vec::new()),
        }
    }
}

impl ReportingContext {
    fn topic(&self, name: &str) -> Arc<str> {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = topics.iter().find(|t| ***t == *name) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(name);
        topics.push(t.clone());
        t
    }
}

impl ClientContext for ReportingContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            // A failed broker connection (FAIL) or a fatal producer error (FATAL)
            // is the relay's to report: it retries with backoff, or stops with
            // one line naming the cause (see `Publisher::check_reachable` and
            // `Publisher::fatal_error`). The error callback below repeats it.
            // The one experimental property the relay sets on purpose (see
            // `kafka_config`): not worth a warning per producer.
            _ if fac == "CONFWARN" && log_message.contains("enable.gapless.guarantee") => {
                tracing::debug!(target: "librdkafka", facility = fac, "{log_message}")
            }
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
            Ok(m) => Ok(self.topic(m.topic())),
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

/// Run a blocking librdkafka call (a metadata request) from async code: on a
/// multi-threaded runtime the worker hands its other tasks on first.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The relay's producer.
pub struct Publisher {
    /// Shared so that exactly-once mode can run `commit_transaction` (a
    /// blocking call) on a blocking thread while the session keeps reading.
    producer: std::sync::Arc<ThreadedProducer<ReportingContext>>,
    /// The producer for rows sent alone ([`MsgTag::isolated`]), created on
    /// first use: see [`ClientRole::Isolated`]. Its reports share the channel.
    isolated: std::sync::OnceLock<ThreadedProducer<ReportingContext>>,
    isolated_config: ClientConfig,
    reports: mpsc::UnboundedSender<Delivery>,
    admin: Option<AdminClient<DefaultClientContext>>,
    known_topics: HashSet<String>,
    topic_partitions: i32,
    /// `kafka.topic-replication-factor`, resolved from the cluster size on first use when 0.
    topic_replication: i32,
    /// `kafka.instance-header`: the `relay_instance` header's value.
    instance: Option<&'static str>,
}

impl Publisher {
    /// Create the producer and its delivery channel. Fails with a config
    /// error naming `kafka.properties` when librdkafka rejects a property.
    pub fn new(cfg: &Config) -> Result<(Self, mpsc::UnboundedReceiver<Delivery>)> {
        Self::with_config(cfg, cfg.kafka.to_rdkafka(ClientRole::Producer))
    }

    /// [`Publisher::new`] with the main producer built from `cc` (the
    /// exactly-once producer: [`ClientRole::Transactional`] plus its id).
    pub fn with_config(
        cfg: &Config,
        cc: ClientConfig,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Delivery>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let producer: ThreadedProducer<ReportingContext> = cc
            .create_with_context(ReportingContext::new(tx.clone()))
            .map_err(|e| kafka_config::creation_error(e, "creating producer"))?;
        let admin = if cfg.kafka.create_topics {
            Some(
                cfg.kafka
                    .to_rdkafka(ClientRole::Admin)
                    .create()
                    .map_err(|e| RelayError::kafka("creating admin client", e))?,
            )
        } else {
            None
        };
        Ok((
            Self {
                producer: std::sync::Arc::new(producer),
                isolated: std::sync::OnceLock::new(),
                isolated_config: cfg.kafka.to_rdkafka(ClientRole::Isolated),
                reports: tx,
                admin,
                known_topics: HashSet::new(),
                topic_partitions: cfg.kafka.topic_partitions,
                topic_replication: cfg.kafka.topic_replication_factor,
                instance: cfg.kafka.instance_header.then(crate::leader::instance_id),
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
        blocking(fetch)
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
        crate::topic_drift::note_topic(topic);
        Ok(())
    }

    /// Why `topic` cannot take messages, if it cannot: created when
    /// `kafka.create-topics` is on, otherwise asked of the broker once (a
    /// metadata request) so a missing or forbidden topic is known at once
    /// instead of after librdkafka's `topic.metadata.propagation.max.ms`.
    /// Only usable topics are cached.
    pub async fn topic_refusal(&mut self, topic: &str) -> Result<Option<SinkError>> {
        if self.admin.is_some() {
            self.ensure_topic(topic).await?;
            return Ok(None);
        }
        if self.known_topics.contains(topic) {
            return Ok(None);
        }
        let client = self.producer.client();
        let ask = || client.fetch_metadata(Some(topic), Duration::from_secs(10));
        let md = blocking(ask)
            .map_err(|e| RelayError::kafka(format!("metadata for topic {topic}"), e))?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            return Ok(Some(SinkError::missing_topic(topic)));
        };
        let refusal = match t.error() {
            Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::TopicAuthorizationFailed => {
                Some(SinkError::forbidden_topic(topic))
            }
            Some(_) => Some(SinkError::missing_topic(topic)),
            None if t.partitions().is_empty() => Some(SinkError::missing_topic(topic)),
            None => None,
        };
        if refusal.is_none() {
            self.known_topics.insert(topic.to_string());
            crate::topic_drift::note_topic(topic);
        }
        Ok(refusal)
    }

    /// The producer a message goes through: a row sent alone after a refusal
    /// uses the isolated producer (created here on first use), everything
    /// else the session's producer.
    fn producer_for(
        &self,
        tag: &MsgTag,
    ) -> std::result::Result<&ThreadedProducer<ReportingContext>, SinkError> {
        if !tag.isolated || tag.is_dlq {
            return Ok(&self.producer);
        }
        if let Some(p) = self.isolated.get() {
            return Ok(p);
        }
        let p = self
            .isolated_config
            .create_with_context(ReportingContext::new(self.reports.clone()))
            .map_err(|e| SinkError::from_kafka(&e))?;
        Ok(self.isolated.get_or_init(|| p))
    }

    /// Enqueue one record.
    pub fn send(
        &self,
        rec: &OutboxRecord,
        meta: &TxnMeta,
        topic: &str,
        tag: Box<MsgTag>,
    ) -> std::result::Result<(), (SendError, Box<MsgTag>)> {
        let payload = value(rec, meta);
        let record = BaseRecord::with_opaque_to(topic, tag)
            .key(rec.aggregate_id.as_bytes())
            .payload(payload.as_ref())
            .headers(match self.instance {
                Some(i) => headers(rec, meta).insert(Header {
                    key: INSTANCE_HEADER,
                    value: Some(i.as_bytes()),
                }),
                None => headers(rec, meta),
            })
            .timestamp(meta.commit_unix_millis);
        match self.producer_for(&record.delivery_opaque) {
            Ok(p) => p.send(record).map_err(classify_send),
            Err(e) => Err((SendError::Refused(e), record.delivery_opaque)),
        }
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
        match self.producer_for(&record.delivery_opaque) {
            Ok(p) => p.send(record).map_err(classify_send),
            Err(e) => Err((SendError::Refused(e), record.delivery_opaque)),
        }
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

    /// The main producer, for the transaction calls of
    /// [`crate::sink::transactional`].
    pub fn producer(&self) -> &ThreadedProducer<ReportingContext> {
        &self.producer
    }

    /// The main producer, shared: for a call that runs on another thread.
    pub fn shared_producer(&self) -> std::sync::Arc<ThreadedProducer<ReportingContext>> {
        self.producer.clone()
    }

    /// Messages enqueued or in flight inside librdkafka.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count() + self.isolated.get().map_or(0, |p| p.in_flight_count())
    }

    /// Drop everything not yet acknowledged: used when a session ends with
    /// an error, since the next session replays from the durable checkpoint.
    pub fn purge(&self) {
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
        if let Some(p) = self.isolated.get() {
            p.purge(PurgeConfig::default().queue().inflight());
        }
    }
}

/// Dropping purges first: librdkafka would purge too, but only after the
/// polling thread stopped (up to its poll interval). A fenced leader's
/// session is dropped, and must stop sending at once (invariant 10).
impl Drop for Publisher {
    fn drop(&mut self) {
        self.purge();
    }
}

//! The exactly-once producer: librdkafka's transactional producer with a
//! stable `transactional.id`, and how its errors map to the relay's classes.
//!
//! * `init_transactions` fences every older producer with the same id (the
//!   broker bumps the epoch and aborts its open transaction). So it is called
//!   only by the relay that holds the slot — with `ha.enabled`, only after it
//!   won the leadership; a standby never builds this producer.
//! * A *fenced* producer (`ProducerFenced`, `InvalidProducerEpoch`,
//!   librdkafka's `_FENCED`) lost to a newer instance: the error is
//!   [`RelayError::ProducerFenced`], fatal, exit code 3 — retrying would only
//!   fence the newer one back.
//! * An *abortable* error (a message refused, a timeout inside the
//!   transaction) aborts the transaction; the session ends and the next one
//!   resumes from the last committed progress record.
//! * A *retriable* error of `commit_transaction` is retried (librdkafka
//!   allows it) within the commit deadline.
//!
//! Messages are built and enqueued by the same [`Publisher`] as in
//! at-least-once mode (same headers, partitioner, delivery reports).

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use tokio::sync::mpsc;

use crate::config::{Config, Delivery as DeliveryMode, OnPermanentError};
use crate::error::{ConfigError, RelayError, Result};
use crate::sink::kafka_config::ClientRole;
use crate::sink::producer::blocking;
use crate::sink::progress_topic::ProgressRecord;
use crate::sink::{Delivery, MsgTag, Publisher};

/// The transactional id: `kafka.transactional-id`, or
/// `outbox-relay.<database>.<slot>` — stable across restarts, and the same
/// for every relay that could open this slot (so they fence each other, as
/// they must).
pub fn transactional_id(cfg: &Config) -> String {
    if !cfg.kafka.transactional_id.is_empty() {
        return cfg.kafka.transactional_id.clone();
    }
    let db = crate::source::tls::PgTarget::parse(cfg.postgres_url())
        .ok()
        .and_then(|t| {
            let c = t.config;
            c.get_dbname().or(c.get_user()).map(str::to_string)
        })
        .unwrap_or_else(|| "postgres".into());
    format!("outbox-relay.{db}.{}", cfg.postgres.slot)
}

/// The exactly-once keys, checked with the rest of the configuration.
pub fn validate(cfg: &Config) -> std::result::Result<(), ConfigError> {
    let k = &cfg.kafka;
    if k.transaction_interval.is_zero() {
        return Err(ConfigError::new(
            "kafka.transaction-interval",
            "must be > 0",
        ));
    }
    if k.transaction_interval > Duration::from_secs(30) {
        return Err(ConfigError::new(
            "kafka.transaction-interval",
            "must be at most 30s (a transaction stays open that long, well inside transaction.timeout.ms)",
        ));
    }
    if k.transaction_max_messages == 0 {
        return Err(ConfigError::new(
            "kafka.transaction-max-messages",
            "must be > 0",
        ));
    }
    crate::sink::route::validate_topic(&k.progress_topic)
        .map_err(|m| ConfigError::new("kafka.progress-topic", m))?;
    if k.progress_topic == k.dlq_topic {
        return Err(ConfigError::new(
            "kafka.progress-topic",
            "must differ from kafka.dlq-topic",
        ));
    }
    let id = &k.transactional_id;
    if id.len() > 249 || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::new(
            "kafka.transactional-id",
            "must be at most 249 characters without spaces or control characters",
        ));
    }
    if k.delivery == DeliveryMode::ExactlyOnce
        && cfg.relay.on_permanent_error == OnPermanentError::Block
    {
        return Err(ConfigError::new(
            "relay.on-permanent-error",
            "\"block\" is not supported with kafka.delivery = \"exactly-once\" (use \"dlq\")",
        ));
    }
    Ok(())
}

/// The transactional producer and its delivery reports.
pub struct TxnSink {
    /// Builds and enqueues messages; its main producer is transactional.
    pub publisher: Publisher,
    id: String,
    progress_topic: String,
    /// Deadline of init/commit/abort.
    timeout: Duration,
}

impl TxnSink {
    /// Build the producer (nothing is sent and nobody is fenced yet), and
    /// its delivery reports: in this mode only failures matter (the commit
    /// is the acknowledgement), but every report must be drained.
    pub fn new(cfg: &Config) -> Result<(Self, mpsc::UnboundedReceiver<Delivery>)> {
        let id = transactional_id(cfg);
        let mut cc = cfg.kafka.to_rdkafka(ClientRole::Transactional);
        cc.set("transactional.id", &id);
        let (publisher, deliveries) = Publisher::with_config(cfg, cc)?;
        Ok((
            Self {
                publisher,
                id,
                progress_topic: cfg.kafka.progress_topic.clone(),
                timeout: Duration::from_secs(60),
            },
            deliveries,
        ))
    }

    /// The transactional id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `init_transactions`: fence older producers with this id and abort
    /// their open transaction.
    pub fn init(&self) -> Result<()> {
        let p = self.publisher.producer();
        blocking(|| p.init_transactions(self.timeout))
            .map_err(|e| self.classify("initialising transactions", e))
    }

    /// Open a transaction.
    pub fn begin(&self) -> Result<()> {
        self.publisher
            .producer()
            .begin_transaction()
            .map_err(|e| self.classify("beginning a transaction", e))
    }

    /// Enqueue the progress record, the transaction's last message.
    pub fn send_progress(&self, rec: &ProgressRecord, tag: Box<MsgTag>) -> Result<()> {
        let json = rec.to_json();
        let record: BaseRecord<'_, [u8], [u8], Box<MsgTag>> =
            BaseRecord::with_opaque_to(&self.progress_topic, tag)
                .key(self.id.as_bytes())
                .payload(json.as_slice())
                .partition(0)
                .headers(OwnedHeaders::new());
        self.publisher
            .producer()
            .send(record)
            .map_err(|(e, _)| self.classify("enqueueing the progress record", e))
    }

    /// `commit_transaction` — it flushes the transaction's messages, then
    /// waits for the coordinator's EndTxn — on a blocking thread, so the
    /// session's runtime (and the replication worker on it) keeps reading
    /// the stream meanwhile. Retriable errors are retried within the
    /// deadline; on an abortable error the caller aborts. No other
    /// transactional call may be made until this returned (librdkafka
    /// allows one at a time; the session sends nothing meanwhile).
    pub async fn commit(&self) -> Result<()> {
        let p = self.publisher.shared_producer();
        let timeout = self.timeout;
        let started = std::time::Instant::now();
        let r = tokio::task::spawn_blocking(move || commit_retrying(&p, timeout))
            .await
            .map_err(|e| RelayError::Environment(format!("the commit thread panicked: {e}")))?;
        metrics::histogram!(crate::metrics::KAFKA_COMMIT_SECONDS)
            .record(started.elapsed().as_secs_f64());
        r.map_err(|e| self.classify("committing the transaction", e))
    }

    /// Abort the open transaction (best effort: a failed abort leaves it to
    /// the next `init_transactions` or the transaction timeout).
    pub fn abort(&self) {
        let p = self.publisher.producer();
        if let Err(e) = blocking(|| p.abort_transaction(Duration::from_secs(10))) {
            tracing::warn!(error = %e, "aborting the Kafka transaction failed; the next session's init_transactions aborts it");
        }
    }

    /// Whether `e` means a newer producer with our id took over.
    pub fn is_fenced(e: &KafkaError) -> bool {
        matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
            )
        )
    }

    /// [`RelayError::ProducerFenced`] when librdkafka stopped this producer
    /// because a newer one with our id took over (it learns so on its next
    /// request: a produce, or the commit).
    pub fn fenced(&self) -> Option<RelayError> {
        let (code, _) = self.publisher.producer().client().fatal_error()?;
        matches!(
            code,
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
        .then(|| RelayError::ProducerFenced(self.id.clone()))
    }

    fn classify(&self, doing: &str, e: KafkaError) -> RelayError {
        if Self::is_fenced(&e) {
            return RelayError::ProducerFenced(self.id.clone());
        }
        if let Some(fenced) = self.fenced() {
            return fenced;
        }
        if let Some(fatal) = self.publisher.fatal_error() {
            // A fatal producer error that is not a fence: e.g. the principal
            // lacks Write on the transactional id. Its code decides the class.
            return fatal;
        }
        RelayError::kafka(format!("{doing} (transactional id {})", self.id), e)
    }
}

/// `commit_transaction` until it succeeds, fails for good or the deadline
/// passes.
///
/// Messages still in flight are waited for here first: rdkafka's
/// `commit_transaction` flushes by polling the producer's queue in steps of
/// up to 100 ms, and with a [`ThreadedProducer`] — whose own thread takes the
/// delivery reports — every commit with a message in flight slept a whole
/// step (seen in librdkafka's `eos` log: the progress record acknowledged
/// within 6 ms, `commit_transaction` entered 100 ms later; catch-up ran at
/// half speed). One non-blocking flush makes librdkafka send what lingers;
/// then short sleeps until it holds nothing, and the commit's own flush
/// returns at once.
fn commit_retrying(
    p: &ThreadedProducer<crate::sink::producer::ReportingContext>,
    timeout: Duration,
) -> rdkafka::error::KafkaResult<()> {
    let deadline = std::time::Instant::now() + timeout;
    let _ = p.flush(Duration::ZERO);
    while p.in_flight_count() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match p.commit_transaction(left) {
            Err(KafkaError::Transaction(e))
                if e.is_retriable()
                    && !e.is_fatal()
                    && !e.txn_requires_abort()
                    && std::time::Instant::now() < deadline =>
            {
                tracing::debug!(error = %e.string(), "commit_transaction: retriable; retrying");
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let mut c = Config::default();
        c.postgres.url = Some("postgres://u@h/app".into());
        c.kafka.brokers = Some("b:9092".into());
        c
    }

    #[test]
    fn the_default_id_names_database_and_slot() {
        assert_eq!(transactional_id(&cfg()), "outbox-relay.app.outbox_relay");
        let mut c = cfg();
        c.kafka.transactional_id = "mine".into();
        assert_eq!(transactional_id(&c), "mine");
    }

    #[test]
    fn block_mode_with_exactly_once_names_the_key() {
        let mut c = cfg();
        c.kafka.delivery = DeliveryMode::ExactlyOnce;
        c.relay.on_permanent_error = OnPermanentError::Block;
        assert_eq!(validate(&c).unwrap_err().key, "relay.on-permanent-error");
        c.relay.on_permanent_error = OnPermanentError::Dlq;
        validate(&c).unwrap();
    }

    #[test]
    fn the_transactional_producer_drops_gapless_and_the_long_message_timeout() {
        let c = cfg().kafka.to_rdkafka(ClientRole::Transactional);
        assert_eq!(c.get("enable.gapless.guarantee"), None);
        assert_eq!(c.get("message.timeout.ms"), None);
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
    }
}

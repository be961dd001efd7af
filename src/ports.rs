//! The relay loop's three collaborators as traits, so the loop in
//! [`crate::relay`] runs against the real stream, producer and database, or
//! against the in-memory fakes in its tests (no servers needed to check the
//! ack bookkeeping, the DLQ path, blocking or the window).
//!
//! Each port carries its whole contract, speaks the relay's own types (no
//! `ReplicationEvent`, no `KafkaError`), and is configured once when it is
//! built, never per call.
//!
//! * [`EventStream`]: events in WAL order; `confirm` reports a position as
//!   durable to the slot and is only called after the checkpoint covering it
//!   was persisted (invariant 2).
//! * [`MessageSink`]: `send_*` only enqueue; every enqueued message yields
//!   exactly one [`Delivery`] from [`MessageSink::next_delivery`], `Ok` only
//!   once the broker acknowledged it with `acks=all`. Messages to one
//!   partition are delivered in the order they were enqueued (idempotent
//!   producer). A message that was not taken comes back with its tag.
//! * [`Bookkeeping`]: durable (see [`CheckpointStore`]); `mark_failed` is
//!   called after the DLQ acks and before the checkpoint that covers the rows.

use std::future::Future;

use bytes::Bytes;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationEvent};
use tokio::sync::mpsc;

use crate::checkpoint::{CheckpointStore, PgCheckpointStore};
use crate::config::Config;
use crate::decode::OutboxRecord;
use crate::error::Result;
use crate::sink::message::TxnMeta;
use crate::sink::{Delivery, MsgTag, Publisher, SendError};

/// Result of enqueueing: the tag comes back when the message was not taken.
pub type Enqueued = std::result::Result<(), (SendError, Box<MsgTag>)>;

/// What the replication stream delivers, in WAL order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// A transaction starts; `commit_lsn` is where its commit record starts.
    Begin {
        /// LSN of the commit record.
        commit_lsn: u64,
        /// Commit time, µs since 2000-01-01 (PostgreSQL epoch).
        commit_time_micros: i64,
    },
    /// The transaction ended; a restart resumes at `end_lsn`.
    Commit {
        /// End of the commit record.
        end_lsn: u64,
    },
    /// A pgoutput message body (Relation, Insert, …).
    Data {
        /// The raw pgoutput message.
        data: Bytes,
        /// Server WAL end at send time (0 inside a transaction).
        wal_end: u64,
    },
    /// Server keepalive: nothing before `wal_end` is still to come.
    KeepAlive {
        /// Server WAL end.
        wal_end: u64,
    },
    /// The relay's own heartbeat logical message, written at `lsn`.
    Heartbeat {
        /// Its LSN.
        lsn: u64,
    },
    /// Anything the relay does not act on.
    Other,
}

/// The replication stream.
pub trait EventStream: Send {
    /// Next event; `Ok(None)` when the stream ended.
    fn recv(&mut self) -> impl Future<Output = Result<Option<SourceEvent>>> + Send;
    /// The next event if one is ready now, without waiting: `None` when
    /// nothing is. The loop drains ready events in a batch instead of going
    /// through its `select!` (and possibly parking) once per event.
    fn try_recv(&mut self) -> Option<Result<Option<SourceEvent>>> {
        // `recv` is cancel-safe (an mpsc receive), so polling it once and
        // dropping it loses nothing.
        futures::FutureExt::now_or_never(self.recv())
    }
    /// Report `lsn` as durable to the slot.
    fn confirm(&self, lsn: u64);
    /// End the stream: gracefully (stop, flush feedback) or at once.
    fn close(&mut self, graceful: bool) -> impl Future<Output = ()> + Send;
}

/// Whether a topic can take messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicState {
    /// It exists (or was just created).
    Ready,
    /// It does not exist and will not be created, or the relay's principal
    /// may not even see it: a refusal of the row, for this reason.
    Refused(crate::sink::classify::SinkError),
}

/// The producer, with its delivery reports.
pub trait MessageSink: Send {
    /// Enqueue a decoded record.
    fn send_record(
        &self,
        rec: &OutboxRecord,
        meta: &TxnMeta,
        topic: &str,
        tag: Box<MsgTag>,
    ) -> Enqueued;
    /// Enqueue a prepared message (a retry or a DLQ copy).
    fn send_raw(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[(String, Vec<u8>)],
        timestamp_ms: i64,
        tag: Box<MsgTag>,
    ) -> Enqueued;
    /// The next delivery report; `None` once the producer is gone.
    fn next_delivery(&mut self) -> impl Future<Output = Option<Delivery>> + Send;
    /// A delivery report that is ready now, without waiting.
    fn try_next_delivery(&mut self) -> Option<Delivery> {
        // Cancel-safe like `recv` above.
        futures::FutureExt::now_or_never(self.next_delivery()).flatten()
    }
    /// Make sure `topic` can take messages (creating it when configured).
    fn check_topic(&mut self, topic: &str) -> impl Future<Output = Result<TopicState>> + Send;
    /// Drop everything not yet acknowledged (its reports may still come).
    fn purge(&self);
    /// The error that stopped the producer for good, if one did: then no
    /// message will ever be acknowledged again, whatever the delivery reports
    /// say (librdkafka purges them as "purged in queue").
    fn fatal_error(&self) -> Option<crate::error::RelayError> {
        None
    }
}

/// The checkpoint plus the row bookkeeping of failed and blocked rows.
pub trait Bookkeeping: CheckpointStore {
    /// Mark dead-lettered rows FAILED with their attempt counts.
    fn mark_failed(&self, rows: &[(i64, i32)]) -> impl Future<Output = Result<()>> + Send;
    /// Record (or clear) the row blocking the stream.
    fn record_blocked(
        &self,
        blocked: Option<(i64, &str)>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Whether the row still exists.
    fn row_exists(&self, id: i64) -> impl Future<Output = Result<bool>> + Send;
}

impl EventStream for ReplicationClient {
    async fn recv(&mut self) -> Result<Option<SourceEvent>> {
        let Some(ev) = ReplicationClient::recv(self).await? else {
            return Ok(None);
        };
        Ok(Some(match ev {
            ReplicationEvent::Begin {
                final_lsn,
                commit_time_micros,
                ..
            } => SourceEvent::Begin {
                commit_lsn: final_lsn.as_u64(),
                commit_time_micros,
            },
            ReplicationEvent::Commit { end_lsn, .. } => SourceEvent::Commit {
                end_lsn: end_lsn.as_u64(),
            },
            ReplicationEvent::XLogData { data, wal_end, .. } => SourceEvent::Data {
                data,
                wal_end: wal_end.as_u64(),
            },
            ReplicationEvent::KeepAlive { wal_end, .. } => SourceEvent::KeepAlive {
                wal_end: wal_end.as_u64(),
            },
            ReplicationEvent::Message {
                transactional: false,
                lsn,
                prefix,
                ..
            } if prefix == crate::heartbeat::PREFIX => SourceEvent::Heartbeat { lsn: lsn.as_u64() },
            ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {
                SourceEvent::Other
            }
        }))
    }

    fn confirm(&self, lsn: u64) {
        self.update_applied_lsn(Lsn::from_u64(lsn));
    }

    async fn close(&mut self, graceful: bool) {
        if graceful {
            self.stop();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.shutdown()).await;
        } else {
            self.abort();
        }
    }
}

/// The Kafka producer and its delivery channel, as one port.
pub struct KafkaSink {
    publisher: Publisher,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
}

impl KafkaSink {
    /// Create the producer from `cfg`.
    pub fn new(cfg: &Config) -> Result<Self> {
        let (publisher, deliveries) = Publisher::new(cfg)?;
        Ok(Self {
            publisher,
            deliveries,
        })
    }
}

impl MessageSink for KafkaSink {
    fn send_record(
        &self,
        rec: &OutboxRecord,
        meta: &TxnMeta,
        topic: &str,
        tag: Box<MsgTag>,
    ) -> Enqueued {
        self.publisher.send(rec, meta, topic, tag)
    }

    fn send_raw(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[(String, Vec<u8>)],
        timestamp_ms: i64,
        tag: Box<MsgTag>,
    ) -> Enqueued {
        self.publisher
            .send_raw(topic, key, payload, headers, timestamp_ms, tag)
    }

    async fn next_delivery(&mut self) -> Option<Delivery> {
        self.deliveries.recv().await
    }

    fn try_next_delivery(&mut self) -> Option<Delivery> {
        self.deliveries.try_recv().ok()
    }

    async fn check_topic(&mut self, topic: &str) -> Result<TopicState> {
        Ok(match self.publisher.topic_refusal(topic).await? {
            None => TopicState::Ready,
            Some(e) => TopicState::Refused(e),
        })
    }

    fn purge(&self) {
        self.publisher.purge()
    }

    fn fatal_error(&self) -> Option<crate::error::RelayError> {
        self.publisher.fatal_error()
    }
}

/// The checkpoint table plus the outbox table's FAILED/blocked bookkeeping.
pub struct PgBookkeeping {
    store: PgCheckpointStore,
    cfg: Config,
}

impl PgBookkeeping {
    /// Bookkeeping for the outbox table named in `cfg`.
    pub fn new(store: PgCheckpointStore, cfg: &Config) -> Self {
        Self {
            store,
            cfg: cfg.clone(),
        }
    }
}

impl CheckpointStore for PgBookkeeping {
    async fn load(&self) -> Result<Option<u64>> {
        self.store.load().await
    }

    async fn save(&self, lsn: u64) -> Result<()> {
        self.store.save(lsn).await
    }
}

impl Bookkeeping for PgBookkeeping {
    async fn mark_failed(&self, rows: &[(i64, i32)]) -> Result<()> {
        crate::dead_letter::mark_failed(self.store.client(), &self.cfg, rows).await
    }

    async fn record_blocked(&self, blocked: Option<(i64, &str)>) -> Result<()> {
        crate::dead_letter::record_blocked(self.store.client(), &self.cfg, blocked).await
    }

    async fn row_exists(&self, id: i64) -> Result<bool> {
        crate::dead_letter::row_exists(self.store.client(), &self.cfg, id).await
    }
}

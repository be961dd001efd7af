//! The relay loop: one replication session from connect to error or stop.
//!
//! A session loads the durable checkpoint, opens the stream there, decodes
//! outbox inserts and hands them to the producer in commit order, collects
//! delivery reports, and periodically persists and confirms the durable
//! position. Any error ends the session; the supervisor in [`crate::app`]
//! decides whether to retry (transient) or stop (fatal). A retried session
//! starts again from the durable checkpoint: messages that were in flight are
//! sent again (duplicates), never skipped (invariant 4, stall never skip).
//!
//! Invariants kept here:
//! * 2 — persist, then confirm: [`Session::checkpoint`] writes the table and
//!   only then calls `update_applied_lsn`. On start, transactions whose commit
//!   LSN is below the loaded checkpoint are skipped.
//! * 5 — idle slots advance: a keepalive received while nothing is open or in
//!   flight is confirmed to the slot (not written to the table).
//! * 6 — bounded memory: the stream is not read while `kafka.max-in-flight`
//!   messages await acks; a transaction is counted, never buffered.
//!
//! Invariant 1 (which LSN is durable) is in [`crate::tracker`], invariant 3
//! (order) in [`crate::sink`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwire_replication::{Lsn, ReplicationClient, ReplicationEvent};
use tokio::sync::{mpsc, watch};

use crate::checkpoint::{CheckpointStore, PgCheckpointStore};
use crate::config::Config;
use crate::decode::{self, Message, OutboxMapping, ResolvedRelation};
use crate::error::{RelayError, Result};
use crate::sink::message::{format_lsn, TxnMeta};
use crate::sink::route::{validate_topic, RouteFields, TopicTemplate};
use crate::sink::{Delivery, Publisher, SendError};
use crate::source;
use crate::tracker::AckTracker;

/// How a session ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// Shutdown was requested; in-flight messages drained (or timed out)
    /// and the checkpoint persisted.
    Stopped,
}

/// What a session achieved, kept across its end for the supervisor.
#[derive(Debug, Default, Clone)]
pub struct SessionStats {
    /// Messages acknowledged by the broker in this session.
    pub acked: u64,
    /// Highest checkpoint persisted in this session.
    pub persisted: u64,
}

/// The transaction currently being received.
struct Current {
    seq: u64,
    meta: TxnMeta,
    /// Already published before the checkpoint we resumed from.
    skip: bool,
}

/// One replication session.
pub struct Session<'a> {
    cfg: &'a Config,
    template: TopicTemplate,
    table_name: String,
    mapping: OutboxMapping,
    resolved: HashMap<u32, Option<Arc<ResolvedRelation>>>,
    tracker: AckTracker,
    current: Option<Current>,
    /// Transactions whose commit LSN is below this were already published.
    resume_from: u64,
    /// Last position written to the checkpoint table.
    persisted: u64,
    /// Last position reported to the slot.
    confirmed: u64,
    /// Newest keepalive position seen while nothing was open or in flight.
    idle_position: u64,
    stats: &'a mut SessionStats,
}

/// Run one session until shutdown (Ok) or the first error (Err).
pub async fn run_session(
    cfg: &Config,
    shutdown: &mut watch::Receiver<bool>,
    stats: &mut SessionStats,
) -> Result<SessionEnd> {
    let control = source::control::connect(cfg, "checkpoint").await?;
    let store = PgCheckpointStore::new(control, &cfg.checkpoint_table(), &cfg.postgres.slot);
    let resume = store.load().await?;
    let (publisher, deliveries) = Publisher::new(cfg)?;
    let stream = source::stream::open(cfg, resume).await?;
    tracing::info!(
        slot = %cfg.postgres.slot,
        resume_from = %resume.map(format_lsn).unwrap_or_else(|| "slot position".into()),
        "replication session started"
    );
    let mut session = Session::new(cfg, resume.unwrap_or(0), stats)?;
    let result = session
        .run(stream, publisher, deliveries, &store, shutdown)
        .await;
    result
}

impl<'a> Session<'a> {
    fn new(cfg: &'a Config, resume_from: u64, stats: &'a mut SessionStats) -> Result<Self> {
        let template = TopicTemplate::parse(&cfg.kafka.topic_template)
            .map_err(|m| crate::error::ConfigError::new("kafka.topic-template", m))?;
        let table = cfg.outbox_table();
        Ok(Self {
            cfg,
            template,
            table_name: table.name.clone(),
            mapping: OutboxMapping::new(table, cfg.column_names()),
            resolved: HashMap::new(),
            tracker: AckTracker::new(resume_from),
            current: None,
            resume_from,
            persisted: resume_from,
            confirmed: resume_from,
            idle_position: 0,
            stats,
        })
    }

    async fn run<S: CheckpointStore>(
        &mut self,
        mut stream: ReplicationClient,
        mut publisher: Publisher,
        mut deliveries: mpsc::UnboundedReceiver<Delivery>,
        store: &S,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd> {
        let mut tick = tokio::time::interval(self.cfg.relay.checkpoint_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let max_in_flight = self.cfg.kafka.max_in_flight;
        let outcome: Result<()> = async {
            loop {
                if *shutdown.borrow() {
                    return Ok(());
                }
                if self.tracker.unpersisted() >= max_in_flight / 2 && self.tracker.has_persistable() {
                    // Keep the re-send window small without waiting for the tick.
                    self.checkpoint(store, &stream).await?;
                }
                let can_read = self.window_open(max_in_flight);
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => {}
                    Some(d) = deliveries.recv() => self.on_delivery(d)?,
                    _ = tick.tick() => self.checkpoint(store, &stream).await?,
                    ev = stream.recv(), if can_read => {
                        match ev? {
                            Some(ev) => self.on_event(ev, &mut publisher, &mut deliveries).await?,
                            None => return Err(RelayError::Replication(
                                pgwire_replication::PgWireError::Task("replication stream ended".into()),
                            )),
                        }
                    }
                }
            }
        }
        .await;
        match outcome {
            Ok(()) => {
                self.drain(&mut deliveries, store, &stream).await?;
                stream.stop();
                let _ = tokio::time::timeout(Duration::from_secs(2), stream.shutdown()).await;
                Ok(SessionEnd::Stopped)
            }
            Err(e) => {
                // Whatever is in flight will be replayed from the checkpoint.
                publisher.purge();
                stream.abort();
                Err(e)
            }
        }
    }

    /// Whether the stream may be read (invariant 6 and the duplicate bound).
    ///
    /// Two limits, both `kafka.max-in-flight`: messages awaiting an ack
    /// (memory), and messages sent since the last persisted checkpoint (what
    /// a crash would re-send). The second is waived when nothing can be
    /// persisted to free it — one open transaction larger than the window
    /// must still stream through — so a crash re-sends at most
    /// max(window, one transaction).
    fn window_open(&self, max_in_flight: usize) -> bool {
        self.tracker.in_flight() < max_in_flight
            && (self.tracker.unpersisted() < max_in_flight
                || (self.tracker.open_transactions() <= 1 && !self.tracker.has_persistable()))
    }

    /// Graceful stop: stop reading, wait (bounded) for in-flight acks, then
    /// persist and confirm what is durable.
    async fn drain<S: CheckpointStore>(
        &mut self,
        deliveries: &mut mpsc::UnboundedReceiver<Delivery>,
        store: &S,
        stream: &ReplicationClient,
    ) -> Result<()> {
        let deadline = Instant::now() + self.cfg.relay.shutdown_timeout;
        tracing::info!(
            in_flight = self.tracker.in_flight(),
            "draining in-flight messages"
        );
        while self.tracker.in_flight() > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, deliveries.recv()).await {
                Ok(Some(d)) => self.on_delivery(d)?,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        in_flight = self.tracker.in_flight(),
                        "shutdown timeout: unacknowledged messages will be re-sent on restart"
                    );
                    break;
                }
            }
        }
        self.checkpoint(store, stream).await?;
        tracing::info!(checkpoint = %format_lsn(self.persisted), "stopped");
        Ok(())
    }

    fn on_delivery(&mut self, d: Delivery) -> Result<()> {
        match d.result {
            Ok(()) => {
                self.tracker.acked(d.txn);
                self.stats.acked += 1;
                Ok(())
            }
            Err(e) => Err(RelayError::kafka(
                "delivery failed; replaying from the durable checkpoint",
                e,
            )),
        }
    }

    /// Persist the durable position if rows were published since the last
    /// write, then confirm to the slot what is safe to confirm.
    async fn checkpoint<S: CheckpointStore>(
        &mut self,
        store: &S,
        stream: &ReplicationClient,
    ) -> Result<()> {
        let durable = self.tracker.durable();
        if self.tracker.durable_with_rows() > self.persisted {
            tokio::time::timeout(self.cfg.postgres.connect_timeout, store.save(durable))
                .await
                .map_err(|_| RelayError::Timeout("writing the checkpoint".into()))??;
            self.persisted = durable;
            self.tracker.persisted(durable);
            self.stats.persisted = self.stats.persisted.max(durable);
            tracing::debug!(checkpoint = %format_lsn(durable), "checkpoint persisted");
        }
        // Everything published up to `durable` is persisted; what lies between
        // `persisted` and `durable` had no outbox rows, so confirming it loses
        // nothing. Idle keepalive positions likewise carry no unpublished rows.
        let safe = if self.persisted >= self.tracker.durable_with_rows() {
            durable.max(self.idle_position)
        } else {
            self.persisted
        };
        if safe > self.confirmed {
            stream.update_applied_lsn(Lsn::from_u64(safe));
            self.confirmed = safe;
        }
        Ok(())
    }

    async fn on_event(
        &mut self,
        ev: ReplicationEvent,
        publisher: &mut Publisher,
        deliveries: &mut mpsc::UnboundedReceiver<Delivery>,
    ) -> Result<()> {
        match ev {
            ReplicationEvent::Begin {
                final_lsn,
                commit_time_micros,
                ..
            } => {
                let commit_lsn = final_lsn.as_u64();
                let skip = commit_lsn < self.resume_from;
                let seq = if skip { 0 } else { self.tracker.begin() };
                self.current = Some(Current {
                    seq,
                    meta: TxnMeta::new(commit_lsn, commit_time_micros),
                    skip,
                });
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                if let Some(cur) = self.current.take() {
                    if !cur.skip {
                        self.tracker.commit(cur.seq, end_lsn.as_u64());
                    }
                }
            }
            ReplicationEvent::XLogData { data, .. } => {
                self.on_data(&data, publisher, deliveries).await?;
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                if self.current.is_none() && self.tracker.is_idle() {
                    self.idle_position = self.idle_position.max(wal_end.as_u64());
                }
            }
            ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(())
    }

    async fn on_data(
        &mut self,
        data: &bytes::Bytes,
        publisher: &mut Publisher,
        deliveries: &mut mpsc::UnboundedReceiver<Delivery>,
    ) -> Result<()> {
        match decode::parse(data)? {
            Message::Relation(rel) => {
                let id = rel.id;
                let rel = Arc::new(rel);
                let resolved = self.mapping.resolve(&rel).map_err(|e| {
                    RelayError::Environment(format!(
                        "outbox table {}.{} does not match outbox.columns: {e}",
                        rel.namespace, rel.name
                    ))
                })?;
                self.resolved.insert(id, resolved.map(Arc::new));
            }
            Message::Insert { relation_id, tuple } => {
                let Some(cur) = &self.current else {
                    return Err(RelayError::Replication(
                        pgwire_replication::PgWireError::Protocol(
                            "Insert outside a transaction".into(),
                        ),
                    ));
                };
                if cur.skip {
                    return Ok(());
                }
                let resolved = match self.resolved.get(&relation_id) {
                    Some(Some(r)) => r.clone(),
                    Some(None) => return Ok(()), // another table in the publication
                    None => {
                        return Err(RelayError::Replication(
                            pgwire_replication::PgWireError::Protocol(format!(
                                "Insert for relation {relation_id} before its Relation message"
                            )),
                        ))
                    }
                };
                let rec = resolved.record(&tuple)?;
                let topic = match &rec.topic {
                    Some(t) => t.clone(),
                    None => self.template.render(&RouteFields {
                        aggregate_type: &rec.aggregate_type,
                        event_type: &rec.event_type,
                        table: &self.table_name,
                    }),
                };
                validate_topic(&topic).map_err(|reason| RelayError::RowRejected {
                    row_id: rec.id,
                    reason,
                })?;
                publisher.ensure_topic(&topic).await?;
                let (seq, meta) = (cur.seq, cur.meta.clone());
                loop {
                    match publisher.send(&rec, &meta, &topic, seq) {
                        Ok(()) => break,
                        Err(SendError::QueueFull) => {
                            // librdkafka's own queue is full: wait for one
                            // report, then try again.
                            match deliveries.recv().await {
                                Some(d) => self.on_delivery(d)?,
                                None => tokio::time::sleep(Duration::from_millis(1)).await,
                            }
                        }
                        Err(SendError::Kafka(e)) => {
                            return Err(RelayError::kafka(
                                format!("producing outbox row id={}", rec.id),
                                e,
                            ))
                        }
                    }
                }
                self.tracker.sent(seq);
            }
            Message::Type { .. } | Message::Origin { .. } | Message::Other(_) => {}
        }
        Ok(())
    }
}

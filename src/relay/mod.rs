//! The relay loop: one replication session from connect to error or stop.
//!
//! A session loads the durable checkpoint, opens the stream there, routes
//! outbox inserts and hands them to the producer in commit order, collects
//! delivery reports, and periodically persists and confirms the durable
//! position. Any transient error ends the session; the supervisor in
//! [`crate::app`] retries with backoff (or stops on a fatal error). A retried
//! session starts again from the durable checkpoint: messages that were in
//! flight are sent again (duplicates), never skipped.
//!
//! This file is the driver: it feeds events to small parts and carries out
//! what they decide.
//! * [`router`] — relation + row → publish / reject / ignore (pure).
//! * [`progress`] — every LSN position, the persist and confirm rule
//!   (invariants 1, 2, 5) and the read window (invariant 6: messages *and*
//!   bytes in flight, `kafka.max-in-flight[-bytes]`).
//! * [`policy`] — refusals: the ledger, isolation of suspect rows,
//!   retries with backoff, DLQ or block (invariant 4, 8).
//!
//! Invariant 2 — persist, then confirm — is [`Session::checkpoint`]: write
//! the table, then tell the slot. Every bookkeeping call has a deadline.
//! Time comes from `tokio::time`, so tests pause it.

mod policy;
mod progress;
mod router;

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::checkpoint::{CheckpointStore, PgCheckpointStore};
use crate::config::Config;
use crate::decode::{self, Message, OutboxRecord};
use crate::error::{ErrorClass, RelayError, Result};
use crate::health::SharedHealth;
use crate::metrics as m;
use crate::ports::{
    Bookkeeping, EventStream, KafkaSink, MessageSink, PgBookkeeping, SourceEvent, TopicState,
};
use crate::sink::message::{format_lsn, TxnMeta};
use crate::sink::{Delivery, FailedMessage, MsgTag, SendError};
use crate::source;
use policy::{Effect, FailurePolicy};
pub use policy::{Ledger, Refusal};
use progress::{Limits, Progress};
use router::{Route, Router};

/// How a session ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// Shutdown was requested; in-flight messages drained (or timed out)
    /// and the checkpoint persisted.
    Stopped,
}

/// What sessions achieved, kept by the supervisor across session restarts.
#[derive(Debug, Default, Clone)]
pub struct SessionStats {
    /// Messages acknowledged by the broker (all sessions).
    pub acked: u64,
    /// Highest checkpoint persisted.
    pub persisted: u64,
    /// The refusal ledger (see [`policy`]): rows refused so far, kept across
    /// sessions because a refusal in a batch ends the session.
    pub refusals: Ledger,
}

/// The transaction currently being received.
struct Current {
    seq: u64,
    meta: TxnMeta,
    /// Already published before the checkpoint we resumed from.
    skip: bool,
    rows: usize,
}

/// One replication session.
pub struct Session<'a> {
    cfg: &'a Config,
    health: SharedHealth,
    router: Router,
    progress: Progress,
    policy: FailurePolicy,
    limits: Limits,
    current: Option<Current>,
    /// Last time an outbox transaction or heartbeat came through.
    last_activity: Instant,
    /// Acknowledged events per topic since the last metrics flush.
    published: HashMap<String, u64>,
    stats: &'a mut SessionStats,
}

/// Run one session until shutdown (Ok) or the first error (Err).
pub async fn run_session(
    cfg: &Config,
    health: &SharedHealth,
    shutdown: &mut watch::Receiver<bool>,
    stats: &mut SessionStats,
) -> Result<SessionEnd> {
    let control = source::control::connect(cfg, "checkpoint").await?;
    let store = PgCheckpointStore::new(control, &cfg.checkpoint_table(), &cfg.postgres.slot);
    let resume = store.load().await?;
    let book = PgBookkeeping::new(store, cfg);
    let sink = KafkaSink::new(cfg)?;
    let stream = source::stream::open(cfg, resume).await?;
    tracing::info!(
        slot = %cfg.postgres.slot,
        resume_from = %resume.map(format_lsn).unwrap_or_else(|| "slot position".into()),
        "replication session started"
    );
    health.set_stream_up(true);
    let mut session = Session::new(cfg, health.clone(), resume.unwrap_or(0), stats)?;
    let result = session.run(stream, sink, &book, shutdown).await;
    health.set_stream_up(false);
    result
}

/// A bookkeeping call with a deadline.
async fn bounded<T>(limit: Duration, what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| RelayError::Timeout(what.into()))?
}

impl<'a> Session<'a> {
    fn new(
        cfg: &'a Config,
        health: SharedHealth,
        resume_from: u64,
        stats: &'a mut SessionStats,
    ) -> Result<Self> {
        Ok(Self {
            cfg,
            health,
            router: Router::new(cfg)?,
            progress: Progress::new(resume_from),
            policy: FailurePolicy::new(cfg),
            limits: Limits {
                messages: cfg.kafka.max_in_flight,
                bytes: cfg.kafka.max_in_flight_bytes,
            },
            current: None,
            last_activity: Instant::now(),
            published: HashMap::new(),
            stats,
        })
    }

    async fn run<S: EventStream, K: MessageSink, B: Bookkeeping>(
        &mut self,
        mut stream: S,
        mut sink: K,
        book: &B,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd> {
        let mut tick = tokio::time::interval(self.cfg.relay.checkpoint_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = Instant::now() + Duration::from_secs(3600);
        let outcome: Result<()> = async {
            loop {
                if *shutdown.borrow() {
                    return Ok(());
                }
                let effects = self.policy.poll(Instant::now(), self.progress.outstanding() == 0);
                self.apply(effects, &mut sink, book).await?;
                if self.progress.wants_early_checkpoint(self.limits) {
                    self.checkpoint(book, &stream).await?;
                }
                let can_read = self.policy.may_read() && self.progress.window_open(self.limits);
                let wake = self.policy.next_wakeup();
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => {}
                    Some(d) = sink.next_delivery() => self.on_delivery(d, &mut sink, book).await?,
                    _ = tick.tick() => {
                        self.checkpoint(book, &stream).await?;
                        self.publish_gauges();
                    }
                    _ = tokio::time::sleep_until(wake.unwrap_or(far)), if wake.is_some() => {}
                    ev = stream.recv(), if can_read => match ev? {
                        Some(ev) => self.on_event(ev, &mut sink, book).await?,
                        None => return Err(RelayError::Replication(
                            pgwire_replication::PgWireError::Task("replication stream ended".into()),
                        )),
                    },
                }
            }
        }
        .await;
        match outcome {
            Ok(()) => {
                self.drain(&mut sink, book, &stream).await?;
                stream.close(true).await;
                Ok(SessionEnd::Stopped)
            }
            Err(e) => {
                // Whatever is in flight will be replayed from the checkpoint.
                sink.purge();
                if e.class() == ErrorClass::Permanent {
                    self.note_batch_refusals(&mut sink).await;
                }
                stream.close(false).await;
                Err(e)
            }
        }
    }

    /// A refusal in a batch ended the session: the other messages of that
    /// batch were refused too and their reports are already here. Note each
    /// refused row, so the next session sends it alone.
    async fn note_batch_refusals<K: MessageSink>(&mut self, sink: &mut K) {
        let until = Instant::now() + Duration::from_millis(100);
        while self.progress.outstanding() > 0 {
            let Ok(Some(d)) = tokio::time::timeout_at(until, sink.next_delivery()).await else {
                break;
            };
            self.progress.reported(d.tag.bytes);
            if let Err(failed) = d.result {
                if failed.error.class == ErrorClass::Permanent && !d.tag.is_dlq && !d.tag.isolated {
                    let _ = self.policy.refused(
                        &mut self.stats.refusals,
                        failed,
                        d.tag,
                        Instant::now(),
                    );
                }
            }
        }
    }

    /// Graceful stop: stop reading, wait (bounded) for in-flight acks —
    /// whether or not a row is held — then persist and confirm.
    async fn drain<S: EventStream, K: MessageSink, B: Bookkeeping>(
        &mut self,
        sink: &mut K,
        book: &B,
        stream: &S,
    ) -> Result<()> {
        let deadline = Instant::now() + self.cfg.relay.shutdown_timeout;
        tracing::info!(
            in_flight = self.progress.outstanding(),
            "draining in-flight messages"
        );
        while self.progress.outstanding() > 0 {
            match tokio::time::timeout_at(deadline, sink.next_delivery()).await {
                Ok(Some(d)) => self.on_delivery(d, sink, book).await?,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        in_flight = self.progress.outstanding(),
                        "shutdown timeout: unacknowledged messages will be re-sent on restart"
                    );
                    break;
                }
            }
        }
        self.checkpoint(book, stream).await?;
        tracing::info!(checkpoint = %format_lsn(self.progress.persisted_lsn()), "stopped");
        Ok(())
    }

    /// Carry out what the policy decided.
    async fn apply<K: MessageSink, B: Bookkeeping>(
        &mut self,
        effects: Vec<Effect>,
        sink: &mut K,
        book: &B,
    ) -> Result<()> {
        for effect in effects {
            match effect {
                Effect::Release(txn) => self.progress.acked(txn),
                Effect::CheckRow(id) => {
                    let t = self.cfg.postgres.connect_timeout;
                    let exists =
                        bounded(t, "checking the blocked row", book.row_exists(id)).await?;
                    let more = self.policy.row_checked(exists);
                    Box::pin(self.apply(more, sink, book)).await?;
                }
                Effect::Send(msg, tag) => {
                    if tag.isolated && sink.check_topic(&msg.topic).await? == TopicState::Missing {
                        let err = crate::sink::classify::SinkError::missing_topic(&msg.topic);
                        let more = self.policy.refused_alone(
                            &mut self.stats.refusals,
                            with_error(msg, err),
                            tag,
                            Instant::now(),
                        );
                        Box::pin(self.apply(more, sink, book)).await?;
                        continue;
                    }
                    self.send_raw(msg, tag, sink, book).await?;
                }
            }
        }
        Ok(())
    }

    /// Enqueue a prepared message, waiting for reports while the producer's
    /// queue is full.
    async fn send_raw<K: MessageSink, B: Bookkeeping>(
        &mut self,
        msg: Box<FailedMessage>,
        mut tag: Box<MsgTag>,
        sink: &mut K,
        book: &B,
    ) -> Result<()> {
        tag.bytes = msg_bytes(&msg);
        loop {
            let bytes = tag.bytes;
            match sink.send_raw(
                &msg.topic,
                msg.key.as_deref(),
                msg.payload.as_deref(),
                &msg.headers,
                tag.commit_unix_millis,
                tag,
            ) {
                Ok(()) => {
                    self.progress.enqueued(bytes);
                    return Ok(());
                }
                Err((SendError::QueueFull, t)) => {
                    tag = t;
                    self.wait_one_report(sink, book).await?;
                }
                Err((SendError::Refused(e), t))
                    if e.class == ErrorClass::Permanent && !t.is_dlq =>
                {
                    let more = self.policy.refused_alone(
                        &mut self.stats.refusals,
                        with_error(msg, e),
                        t,
                        Instant::now(),
                    );
                    return Box::pin(self.apply(more, sink, book)).await;
                }
                Err((SendError::Refused(e), t)) => {
                    return Err(RelayError::sink(
                        format!("producing outbox row id={}", t.row_id),
                        e,
                    ))
                }
            }
        }
    }

    async fn wait_one_report<K: MessageSink, B: Bookkeeping>(
        &mut self,
        sink: &mut K,
        book: &B,
    ) -> Result<()> {
        if self.progress.outstanding() == 0 {
            // Full with nothing of ours in it: give librdkafka a moment.
            tokio::time::sleep(Duration::from_millis(1)).await;
            return Ok(());
        }
        match sink.next_delivery().await {
            Some(d) => Box::pin(self.on_delivery(d, sink, book)).await,
            None => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok(())
            }
        }
    }

    // ---- delivery reports -------------------------------------------------

    async fn on_delivery<K: MessageSink, B: Bookkeeping>(
        &mut self,
        d: Delivery,
        sink: &mut K,
        book: &B,
    ) -> Result<()> {
        let tag = d.tag;
        self.progress.reported(tag.bytes);
        match d.result {
            Ok(topic) => {
                if !tag.is_dlq {
                    // Counted locally, flushed on the tick: a labelled
                    // registry lookup per message costs more than the rest
                    // of the ack path.
                    *self.published.entry(topic).or_insert(0) += 1;
                    metrics::histogram!(m::PRODUCE_LATENCY)
                        .record(tag.sent_at.elapsed().as_secs_f64());
                    let e2e = (unix_millis(SystemTime::now()) - tag.commit_unix_millis).max(0)
                        as f64
                        / 1000.0;
                    metrics::histogram!(m::END_TO_END_LATENCY).record(e2e);
                }
                self.policy.accepted(&mut self.stats.refusals, &tag);
                self.health.set_broker_ok(true);
                self.progress.acked(tag.txn);
                self.stats.acked += 1;
                Ok(())
            }
            Err(failed) => {
                let effects =
                    self.policy
                        .refused(&mut self.stats.refusals, failed, tag, Instant::now())?;
                self.apply(effects, sink, book).await
            }
        }
    }

    // ---- checkpoint -------------------------------------------------------

    /// Mark dead-lettered rows FAILED, persist the durable position if rows
    /// were published since the last write, record the blocked row, then
    /// confirm to the slot what the progress rule allows.
    async fn checkpoint<S: EventStream, B: Bookkeeping>(
        &mut self,
        book: &B,
        stream: &S,
    ) -> Result<()> {
        let t = self.cfg.postgres.connect_timeout;
        let failed = self.policy.take_failed_rows();
        if !failed.is_empty() {
            // Before the checkpoint that covers them: the janitor must never
            // see a dead-lettered row as PENDING below the checkpoint.
            bounded(
                t,
                "marking dead-lettered rows FAILED",
                book.mark_failed(&failed),
            )
            .await?;
            for (id, _) in &failed {
                self.stats.refusals.remove(id);
            }
        }
        if let Some(lsn) = self.progress.to_persist() {
            bounded(t, "writing the checkpoint", book.save(lsn)).await?;
            self.progress.persisted(lsn);
            self.stats.persisted = self.stats.persisted.max(lsn);
            metrics::gauge!(m::CHECKPOINT_LSN).set(lsn as f64);
            metrics::gauge!(m::CHECKPOINT_TIMESTAMP)
                .set(unix_millis(SystemTime::now()) as f64 / 1000.0);
            tracing::debug!(checkpoint = %format_lsn(lsn), "checkpoint persisted");
        }
        if let Some(b) = self.policy.take_blocked_change() {
            let b = b.as_ref().map(|(id, reason)| (*id, reason.as_str()));
            bounded(t, "recording the blocked row", book.record_blocked(b)).await?;
        }
        if let Some(lsn) = self.progress.to_confirm() {
            stream.confirm(lsn);
            self.progress.confirmed(lsn);
        }
        Ok(())
    }

    fn publish_gauges(&mut self) {
        for (topic, n) in self.published.iter_mut().filter(|(_, n)| **n > 0) {
            metrics::counter!(m::EVENTS_PUBLISHED, "topic" => topic.clone()).increment(*n);
            *n = 0;
        }
        metrics::gauge!(m::IN_FLIGHT).set(self.progress.in_flight() as f64);
        let lag_seconds = match self.progress.oldest_pending_commit_millis() {
            Some(ms) => (unix_millis(SystemTime::now()) - ms).max(0) as f64 / 1000.0,
            None => 0.0,
        };
        metrics::gauge!(m::LAG_SECONDS).set(lag_seconds);
        metrics::gauge!(m::LAG_BYTES).set(self.progress.lag_bytes() as f64);
        metrics::gauge!(m::HEARTBEAT_AGE).set(self.last_activity.elapsed().as_secs_f64());
    }

    // ---- replication events -------------------------------------------------

    async fn on_event<K: MessageSink, B: Bookkeeping>(
        &mut self,
        ev: SourceEvent,
        sink: &mut K,
        book: &B,
    ) -> Result<()> {
        match ev {
            SourceEvent::Begin {
                commit_lsn,
                commit_time_micros,
            } => {
                let skip = self.progress.skips(commit_lsn);
                let meta = TxnMeta::new(commit_lsn, commit_time_micros);
                let seq = if skip {
                    0
                } else {
                    self.progress.begin(meta.commit_unix_millis)
                };
                self.current = Some(Current {
                    seq,
                    meta,
                    skip,
                    rows: 0,
                });
                self.progress.observe(commit_lsn);
            }
            SourceEvent::Commit { end_lsn } => {
                if let Some(cur) = self.current.take().filter(|c| !c.skip) {
                    self.progress.commit(cur.seq, end_lsn);
                    if cur.rows > 0 {
                        metrics::histogram!(m::TRANSACTION_SIZE).record(cur.rows as f64);
                        self.last_activity = Instant::now();
                    }
                }
                self.progress.observe(end_lsn);
            }
            SourceEvent::Data { data, wal_end } => {
                self.progress.observe(wal_end);
                match decode::parse(&data)? {
                    Message::Relation(rel) => self.router.relation(rel)?,
                    Message::Insert { relation_id, tuple } => {
                        let Some(cur) = self.current.as_mut() else {
                            return Err(RelayError::Replication(
                                pgwire_replication::PgWireError::Protocol(
                                    "Insert outside a transaction".into(),
                                ),
                            ));
                        };
                        if cur.skip {
                            return Ok(());
                        }
                        let (seq, meta) = (cur.seq, cur.meta.clone());
                        let route = self.router.route(relation_id, &tuple, &meta)?;
                        if !matches!(route, Route::Ignore) {
                            cur.rows += 1;
                        }
                        match route {
                            Route::Ignore => {}
                            Route::Publish { rec, topic } => {
                                self.publish(&rec, &meta, &topic, seq, sink, book).await?;
                            }
                            Route::Reject {
                                row_id,
                                dl,
                                message,
                            } => {
                                let tag = MsgTag::first(
                                    seq,
                                    row_id.unwrap_or(0),
                                    meta.commit_unix_millis,
                                );
                                if self.policy.dead_letters() {
                                    self.progress.sent(seq);
                                }
                                let effects =
                                    self.policy
                                        .reject(row_id, *dl, message, tag, Instant::now());
                                self.apply(effects, sink, book).await?;
                            }
                        }
                    }
                    Message::Type { .. } | Message::Origin { .. } | Message::Other(_) => {}
                }
            }
            SourceEvent::KeepAlive { wal_end } => {
                self.progress.idle_at(wal_end, self.current.is_some())
            }
            SourceEvent::Heartbeat { lsn } => {
                self.last_activity = Instant::now();
                self.progress.idle_at(lsn, self.current.is_some());
            }
            SourceEvent::Other => {}
        }
        Ok(())
    }

    /// Publish one record: pipelined, or held to be sent alone when the
    /// ledger knows it; a missing topic is a refusal of the row.
    async fn publish<K: MessageSink, B: Bookkeeping>(
        &mut self,
        rec: &OutboxRecord,
        meta: &TxnMeta,
        topic: &str,
        seq: u64,
        sink: &mut K,
        book: &B,
    ) -> Result<()> {
        self.progress.sent(seq);
        let mut tag = MsgTag::first(seq, rec.id, meta.commit_unix_millis);
        let failed = || {
            failed_from_record(
                rec,
                meta,
                topic,
                crate::sink::classify::SinkError::missing_topic(topic),
            )
        };
        if sink.check_topic(topic).await? == TopicState::Missing {
            let effects =
                self.policy
                    .refused_alone(&mut self.stats.refusals, failed(), tag, Instant::now());
            return self.apply(effects, sink, book).await;
        }
        if self.stats.refusals.contains_key(&rec.id) {
            let _ = self.policy.admit(&self.stats.refusals, failed(), tag);
            return Ok(());
        }
        tag.bytes = rec.payload.len()
            + rec.aggregate_id.len()
            + rec
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        loop {
            let bytes = tag.bytes;
            match sink.send_record(rec, meta, topic, tag) {
                Ok(()) => {
                    self.progress.enqueued(bytes);
                    return Ok(());
                }
                Err((SendError::QueueFull, t)) => {
                    tag = t;
                    self.wait_one_report(sink, book).await?;
                }
                Err((SendError::Refused(e), t)) if e.class == ErrorClass::Permanent => {
                    // librdkafka refused it locally (e.g. over
                    // message.max.bytes): this row's own refusal.
                    let f = failed_from_record(rec, meta, topic, e);
                    let effects =
                        self.policy
                            .refused_alone(&mut self.stats.refusals, f, t, Instant::now());
                    return self.apply(effects, sink, book).await;
                }
                Err((SendError::Refused(e), _)) => {
                    return Err(RelayError::sink(
                        format!("producing outbox row id={}", rec.id),
                        e,
                    ))
                }
            }
        }
    }
}

/// A record as the producer would have sent it, for the refusal paths.
fn failed_from_record(
    rec: &OutboxRecord,
    meta: &TxnMeta,
    topic: &str,
    error: crate::sink::classify::SinkError,
) -> Box<FailedMessage> {
    Box::new(FailedMessage {
        error,
        topic: topic.to_string(),
        key: Some(rec.aggregate_id.as_bytes().to_vec()),
        payload: Some(rec.payload.to_vec()),
        headers: crate::sink::message::header_pairs(rec, meta),
    })
}

fn with_error(
    mut msg: Box<FailedMessage>,
    error: crate::sink::classify::SinkError,
) -> Box<FailedMessage> {
    msg.error = error;
    msg
}

/// Bytes a prepared message holds.
fn msg_bytes(m: &FailedMessage) -> usize {
    m.key.as_ref().map_or(0, Vec::len)
        + m.payload.as_ref().map_or(0, Vec::len)
        + m.headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;

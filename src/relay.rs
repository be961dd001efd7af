//! The relay loop: one replication session from connect to error or stop.
//!
//! A session loads the durable checkpoint, opens the stream there, decodes
//! outbox inserts and hands them to the producer in commit order, collects
//! delivery reports, and periodically persists and confirms the durable
//! position. Any transient error ends the session; the supervisor in
//! [`crate::app`] retries with backoff (or stops on a fatal error). A retried
//! session starts again from the durable checkpoint: messages that were in
//! flight are sent again (duplicates), never skipped.
//!
//! Invariants kept here:
//! * 2 — persist, then confirm: [`Session::checkpoint`] writes the table and
//!   only then calls `update_applied_lsn`. On start, transactions whose commit
//!   LSN is below the loaded checkpoint are skipped.
//! * 4 — stall, never skip: transient errors end the session (replay from
//!   the checkpoint); only a permanent, row-level error moves a row to the
//!   DLQ, and the row counts as done only when the DLQ copy was acked.
//! * 5 — idle slots advance: a keepalive or heartbeat received while nothing
//!   is open or in flight is confirmed to the slot (not written to the table).
//! * 6 — bounded memory: the stream is not read while `kafka.max-in-flight`
//!   messages await acks; a transaction is counted, never buffered.
//!
//! Invariant 1 (which LSN is durable) is in [`crate::tracker`], invariant 3
//! (order) in [`crate::sink`], the DLQ message format in
//! [`crate::dead_letter`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pgwire_replication::ReplicationEvent;
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use crate::checkpoint::{CheckpointStore, PgCheckpointStore};
use crate::config::{Config, OnPermanentError};
use crate::dead_letter::{self, DeadLetter, Reason};
use crate::decode::{self, Message, OutboxMapping, OutboxRecord, ResolvedRelation};
use crate::error::{ErrorClass, RelayError, Result};
use crate::health::SharedHealth;
use crate::metrics as m;
use crate::ports::{Bookkeeping, EventStream, MessageSink};
use crate::sink::classify::kafka_class;
use crate::sink::message::{format_lsn, TxnMeta};
use crate::sink::route::{validate_topic, RouteFields, TopicTemplate};
use crate::sink::{Delivery, FailedMessage, MsgTag, Publisher, SendError};
use crate::source;
use crate::tracker::AckTracker;

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
    /// Rows the broker refused permanently, with their attempts so far. A
    /// refusal ends the session and the row is re-sent in order on replay;
    /// once it reaches `relay.max-retry` attempts it is dead-lettered (or
    /// blocks). Kept across sessions for exactly that count.
    pub refusals: HashMap<i64, Refusal>,
}

/// A row's permanent refusals so far.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Attempts refused.
    pub attempts: u32,
    /// When the first one failed.
    pub first_failure: SystemTime,
    /// The latest error, for the DLQ headers.
    pub error: String,
    /// The value (or the whole message) was too large: leave it out of the
    /// DLQ copy.
    pub too_large: bool,
}

/// The transaction currently being received.
struct Current {
    seq: u64,
    meta: TxnMeta,
    /// Already published before the checkpoint we resumed from.
    skip: bool,
    rows: usize,
}

/// Work scheduled for later: a retry of a refused message, or its DLQ copy.
enum Action {
    Resend(Box<FailedMessage>, Box<MsgTag>),
    DeadLetter(Box<DeadLetter>, Box<MsgTag>),
}

/// The stream is stalled at one row (`on-permanent-error = "block"`).
struct Blocked {
    row_id: Option<i64>,
    reason: String,
    /// The refused message, when the broker refused it (retried on each
    /// check); `None` when it never got that far (retrying cannot help).
    refused: Option<(Box<FailedMessage>, Box<MsgTag>)>,
    next_check: Instant,
    backoff: Backoff,
}

/// One replication session.
pub struct Session<'a> {
    cfg: &'a Config,
    health: SharedHealth,
    template: TopicTemplate,
    /// CloudEvents encoder (`kafka.format`), handed to every transaction.
    cloudevents: Option<Arc<crate::sink::cloudevents::CloudEvents>>,
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
    /// Newest keepalive/heartbeat position seen while nothing was open or in
    /// flight.
    idle_position: u64,
    /// Newest WAL position the server reported.
    server_wal_end: u64,
    /// Last time an outbox transaction or heartbeat came through.
    last_activity: Instant,
    /// Dead-lettered rows (id, attempts) to mark FAILED before the next
    /// checkpoint write.
    failed_rows: Vec<(i64, i32)>,
    scheduled: Vec<(Instant, Action)>,
    blocked: Option<Blocked>,
    /// `blocked` changed since it was last recorded in the checkpoint table.
    blocked_dirty: bool,
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
    let (publisher, deliveries) = Publisher::new(cfg)?;
    let stream = source::stream::open(cfg, resume).await?;
    tracing::info!(
        slot = %cfg.postgres.slot,
        resume_from = %resume.map(format_lsn).unwrap_or_else(|| "slot position".into()),
        "replication session started"
    );
    health.set_stream_up(true);
    let mut session = Session::new(cfg, health.clone(), resume.unwrap_or(0), stats)?;
    let result = session
        .run(stream, publisher, deliveries, &store, shutdown)
        .await;
    health.set_stream_up(false);
    result
}

impl<'a> Session<'a> {
    fn new(
        cfg: &'a Config,
        health: SharedHealth,
        resume_from: u64,
        stats: &'a mut SessionStats,
    ) -> Result<Self> {
        let template = TopicTemplate::parse(&cfg.kafka.topic_template)
            .map_err(|msg| crate::error::ConfigError::new("kafka.topic-template", msg))?;
        let table = cfg.outbox_table();
        let cloudevents = crate::sink::cloudevents::CloudEvents::new(
            cfg.kafka.format,
            &cfg.kafka.cloudevents,
            &table.name,
        )?;
        Ok(Self {
            cfg,
            health,
            template,
            cloudevents,
            table_name: table.name.clone(),
            mapping: OutboxMapping::new(table, cfg.column_names()),
            resolved: HashMap::new(),
            tracker: AckTracker::new(resume_from),
            current: None,
            resume_from,
            persisted: resume_from,
            confirmed: resume_from,
            idle_position: 0,
            server_wal_end: 0,
            last_activity: Instant::now(),
            failed_rows: Vec::new(),
            scheduled: Vec::new(),
            blocked: None,
            blocked_dirty: false,
            published: HashMap::new(),
            stats,
        })
    }

    async fn run<S: EventStream, K: MessageSink, B: Bookkeeping>(
        &mut self,
        mut stream: S,
        mut publisher: K,
        mut deliveries: mpsc::UnboundedReceiver<Delivery>,
        store: &B,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd> {
        let mut tick = tokio::time::interval(self.cfg.relay.checkpoint_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let max_in_flight = self.cfg.kafka.max_in_flight;
        let far = Duration::from_secs(3600);
        let outcome: Result<()> = async {
            loop {
                if *shutdown.borrow() {
                    return Ok(());
                }
                self.run_due_actions(&publisher);
                // Keep the re-send window small without waiting for the tick,
                // but only when a write frees a real share of it: a write per
                // delivery report would starve the loop during catch-up.
                let worth_it = self.tracker.unpersisted() >= max_in_flight / 2
                    && self.tracker.persistable() >= (max_in_flight / 4).max(1);
                let window_shut = !self.window_open(max_in_flight) && self.tracker.has_persistable();
                if worth_it || window_shut {
                    self.checkpoint(store, &stream).await?;
                }
                let can_read = self.blocked.is_none() && self.window_open(max_in_flight);
                let next_action = self.scheduled.iter().map(|(due, _)| *due).min();
                let next_check = self.blocked.as_ref().map(|b| b.next_check);
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => {}
                    Some(d) = deliveries.recv() => self.on_delivery(d)?,
                    _ = tick.tick() => {
                        // A producer that stopped for good acknowledges nothing
                        // more: end the session now, even when idle.
                        if let Some(e) = publisher.fatal_error() {
                            return Err(e);
                        }
                        self.checkpoint(store, &stream).await?;
                        self.publish_gauges();
                    }
                    _ = tokio::time::sleep_until(next_action.unwrap_or_else(|| Instant::now() + far).into()),
                        if next_action.is_some() => {}
                    _ = tokio::time::sleep_until(next_check.unwrap_or_else(|| Instant::now() + far).into()),
                        if next_check.is_some() => self.check_blocked(store).await?,
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
                stream.close(true).await;
                Ok(SessionEnd::Stopped)
            }
            Err(e) => {
                // Deliveries of a producer that stopped for good fail as
                // "purged"; the producer's own error says why (and decides
                // whether the relay retries or stops).
                let e = publisher.fatal_error().unwrap_or(e);
                // Whatever is in flight will be replayed from the checkpoint.
                publisher.purge();
                stream.close(false).await;
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
    async fn drain<S: EventStream, B: Bookkeeping>(
        &mut self,
        deliveries: &mut mpsc::UnboundedReceiver<Delivery>,
        store: &B,
        stream: &S,
    ) -> Result<()> {
        let deadline = Instant::now() + self.cfg.relay.shutdown_timeout;
        tracing::info!(
            in_flight = self.tracker.in_flight(),
            "draining in-flight messages"
        );
        while self.tracker.in_flight() > 0 && self.scheduled.is_empty() && self.blocked.is_none() {
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

    // ---- delivery reports -------------------------------------------------

    fn on_delivery(&mut self, d: Delivery) -> Result<()> {
        let tag = d.tag;
        match d.result {
            Ok(topic) => {
                if tag.is_dlq {
                    metrics::counter!(m::DLQ_TOTAL).increment(1);
                    self.stats.refusals.remove(&tag.row_id);
                    if tag.row_id != 0 {
                        let attempts = i32::try_from(tag.attempt).unwrap_or(i32::MAX);
                        self.failed_rows.push((tag.row_id, attempts));
                    }
                } else {
                    // Counted locally, flushed on the tick: a labelled
                    // registry lookup per message costs more than the rest
                    // of the ack path.
                    match self.published.get_mut(&topic) {
                        Some(n) => *n += 1,
                        None => {
                            self.published.insert(topic, 1);
                        }
                    }
                    metrics::histogram!(m::PRODUCE_LATENCY)
                        .record(tag.sent_at.elapsed().as_secs_f64());
                    let now_ms = unix_millis(SystemTime::now());
                    let e2e = (now_ms - tag.commit_unix_millis).max(0) as f64 / 1000.0;
                    metrics::histogram!(m::END_TO_END_LATENCY).record(e2e);
                }
                if self
                    .blocked
                    .as_ref()
                    .is_some_and(|b| b.row_id == Some(tag.row_id))
                {
                    self.unblock("the broker accepted it");
                }
                self.health.set_broker_ok(true);
                self.tracker.acked(tag.txn);
                self.stats.acked += 1;
                Ok(())
            }
            Err(failed) => {
                let class = kafka_class(&failed.error);
                if tag.is_dlq {
                    // Never drop: a failed DLQ write stalls the stream.
                    return Err(RelayError::kafka(
                        format!(
                            "dead-letter write for outbox row id={} failed; stalling",
                            tag.row_id
                        ),
                        failed.error,
                    ));
                }
                match class {
                    ErrorClass::Permanent => self.on_permanent_refusal(failed, tag),
                    _ => Err(RelayError::kafka(
                        format!(
                            "delivery of outbox row id={} failed; replaying from the durable checkpoint",
                            tag.row_id
                        ),
                        failed.error,
                    )),
                }
            }
        }
    }

    /// Count a permanent refusal of `row_id`; true when its attempts are
    /// spent (dead-letter or block now).
    fn count_refusal(
        &mut self,
        row_id: i64,
        error: &rdkafka::error::KafkaError,
    ) -> (bool, Refusal) {
        let r = self
            .stats
            .refusals
            .entry(row_id)
            .or_insert_with(|| Refusal {
                attempts: 0,
                first_failure: SystemTime::now(),
                error: String::new(),
                too_large: false,
            });
        r.attempts += 1;
        r.error = error.to_string();
        r.too_large |= value_was_the_problem(error);
        (r.attempts >= self.cfg.relay.max_retry, r.clone())
    }

    /// The broker refused a message for a reason retrying will not fix.
    ///
    /// Until `relay.max-retry` attempts are spent, the refusal ends the
    /// session: the supervisor backs off and replays from the checkpoint, so
    /// the row is sent again *in order* (retrying it alone while later rows
    /// flow would reorder them; a refusal can also hit innocent rows of the
    /// same request). Then it is dead-lettered, or blocks.
    fn on_permanent_refusal(&mut self, failed: Box<FailedMessage>, tag: Box<MsgTag>) -> Result<()> {
        let (spent, refusal) = self.count_refusal(tag.row_id, &failed.error);
        tracing::warn!(row_id = tag.row_id, attempt = refusal.attempts, topic = %failed.topic, error = %refusal.error, "broker refused outbox row");
        if !spent {
            metrics::counter!(m::RETRIES, "reason" => "permanent").increment(1);
            return Err(RelayError::kafka(
                format!(
                    "broker refused outbox row id={} (attempt {}/{}); replaying from the durable checkpoint",
                    tag.row_id, refusal.attempts, self.cfg.relay.max_retry
                ),
                failed.error,
            ));
        }
        self.dead_letter_or_block(failed, tag, &refusal);
        Ok(())
    }

    /// A row's attempts are spent: send its DLQ copy, or block on it.
    fn dead_letter_or_block(
        &mut self,
        failed: Box<FailedMessage>,
        mut tag: Box<MsgTag>,
        refusal: &Refusal,
    ) {
        tag.attempt = refusal.attempts;
        tag.first_failure = Some(refusal.first_failure);
        match self.cfg.relay.on_permanent_error {
            OnPermanentError::Dlq => {
                let reason = refusal_reason(refusal, failed.topic.clone());
                let FailedMessage {
                    key,
                    payload,
                    headers,
                    ..
                } = *failed;
                let headers = if refusal.too_large {
                    relay_headers_only(headers)
                } else {
                    headers
                };
                let dl = dead_letter::from_failed(
                    tag.row_id,
                    key,
                    payload,
                    headers,
                    tag.commit_unix_millis,
                    &reason,
                );
                let dtag = Box::new(MsgTag {
                    is_dlq: true,
                    ..(*tag).clone()
                });
                // The original message's slot in the tracker is released when
                // its DLQ copy (same txn tag) is acknowledged.
                self.scheduled
                    .push((Instant::now(), Action::DeadLetter(Box::new(dl), dtag)));
            }
            OnPermanentError::Block => {
                let reason = format!(
                    "broker refused it {} times: {}",
                    refusal.attempts, refusal.error
                );
                self.block(Some(tag.row_id), reason, Some((failed, tag)));
            }
        }
    }

    fn run_due_actions<K: MessageSink>(&mut self, publisher: &K) {
        if self.scheduled.is_empty() {
            return;
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.scheduled)
            .into_iter()
            .partition(|(t, _)| *t <= now);
        self.scheduled = later;
        for (_, action) in due {
            if let Err((e, action)) = self.send_action(publisher, action) {
                self.reschedule_after_send_error(e, action);
            }
        }
    }

    /// Enqueue one scheduled message; on failure the action comes back,
    /// unchanged, to be tried again.
    fn send_action<K: MessageSink>(
        &self,
        publisher: &K,
        action: Action,
    ) -> std::result::Result<(), (SendError, Action)> {
        match action {
            Action::Resend(failed, mut tag) => {
                tag.attempt += 1;
                tag.sent_at = Instant::now();
                let sent = publisher.send_raw(
                    &failed.topic,
                    failed.key.as_deref(),
                    failed.payload.as_deref(),
                    &failed.headers,
                    tag.commit_unix_millis,
                    tag,
                );
                sent.map_err(|(e, mut tag)| {
                    tag.attempt -= 1;
                    (e, Action::Resend(failed, tag))
                })
            }
            Action::DeadLetter(dl, tag) => {
                let sent = publisher.send_raw(
                    &self.cfg.kafka.dlq_topic,
                    dl.key.as_deref(),
                    dl.value.as_deref(),
                    &dl.headers,
                    dl.timestamp_ms,
                    tag,
                );
                sent.map_err(|(e, tag)| (e, Action::DeadLetter(dl, tag)))
            }
        }
    }

    fn reschedule_after_send_error(&mut self, e: SendError, action: Action) {
        // Queue full or a local error enqueuing: try again shortly; a
        // permanent local refusal surfaces again as a delivery report.
        if let SendError::Kafka(err) = &e {
            tracing::warn!(error = %err, "could not enqueue a retry; trying again");
        }
        self.scheduled
            .push((Instant::now() + Duration::from_millis(50), action));
    }

    // ---- blocking (on-permanent-error = "block") ----------------------------

    fn block(
        &mut self,
        row_id: Option<i64>,
        reason: String,
        refused: Option<(Box<FailedMessage>, Box<MsgTag>)>,
    ) {
        let id_text = row_id
            .map(|i| i.to_string())
            .unwrap_or_else(|| "unknown".into());
        tracing::error!(
            row_id = %id_text,
            %reason,
            "stream blocked at outbox row id={id_text} (relay.on-permanent-error = \"block\"): \
             delete the row or fix the cause; the relay checks again with backoff"
        );
        metrics::gauge!(m::BLOCKED_ROW).set(row_id.unwrap_or(-1) as f64);
        let mut backoff = Backoff::new(self.cfg.relay.backoff_initial, self.cfg.relay.backoff_max);
        let next_check = Instant::now() + backoff.next_delay();
        self.blocked = Some(Blocked {
            row_id,
            reason,
            refused,
            next_check,
            backoff,
        });
        self.blocked_dirty = true;
    }

    fn unblock(&mut self, why: &str) {
        if let Some(b) = self.blocked.take() {
            tracing::info!(row_id = ?b.row_id, "stream unblocked: {why}");
            metrics::gauge!(m::BLOCKED_ROW).set(0.0);
            self.blocked_dirty = true;
        }
    }

    async fn check_blocked<B: Bookkeeping>(&mut self, store: &B) -> Result<()> {
        let Some(b) = self.blocked.as_mut() else {
            return Ok(());
        };
        b.next_check = Instant::now() + b.backoff.next_delay();
        let row_id = b.row_id;
        if let Some(id) = row_id {
            if !store.row_exists(self.cfg, id).await? {
                if let Some((_, tag)) = b.refused.take() {
                    // Its message will never be acknowledged: release it.
                    self.tracker.acked(tag.txn);
                }
                self.unblock("the row was deleted");
                return Ok(());
            }
        }
        if let Some((failed, mut tag)) = b.refused.take() {
            // Maybe the cause was fixed (topic created, ACL granted, limit
            // raised): try again, one attempt at a time.
            tag.attempt = self.cfg.relay.max_retry.saturating_sub(1);
            self.scheduled
                .push((Instant::now(), Action::Resend(failed, tag)));
        }
        Ok(())
    }

    // ---- checkpoint -------------------------------------------------------

    /// Persist the durable position if rows were published since the last
    /// write, then confirm to the slot what is safe to confirm.
    async fn checkpoint<S: EventStream, B: Bookkeeping>(
        &mut self,
        store: &B,
        stream: &S,
    ) -> Result<()> {
        if !self.failed_rows.is_empty() {
            // Before the checkpoint that covers them: the janitor must never
            // see a dead-lettered row as PENDING below the checkpoint.
            store.mark_failed(self.cfg, &self.failed_rows).await?;
            self.failed_rows.clear();
        }
        let durable = self.tracker.durable();
        if self.tracker.durable_with_rows() > self.persisted {
            tokio::time::timeout(self.cfg.postgres.connect_timeout, store.save(durable))
                .await
                .map_err(|_| RelayError::Timeout("writing the checkpoint".into()))??;
            self.persisted = durable;
            self.tracker.persisted(durable);
            self.stats.persisted = self.stats.persisted.max(durable);
            metrics::gauge!(m::CHECKPOINT_LSN).set(durable as f64);
            metrics::gauge!(m::CHECKPOINT_TIMESTAMP)
                .set(unix_millis(SystemTime::now()) as f64 / 1000.0);
            tracing::debug!(checkpoint = %format_lsn(durable), "checkpoint persisted");
        }
        if self.blocked_dirty {
            let b = self
                .blocked
                .as_ref()
                .map(|b| (b.row_id.unwrap_or(-1), b.reason.as_str()));
            store.record_blocked(self.cfg, b).await?;
            self.blocked_dirty = false;
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
            stream.confirm(safe);
            self.confirmed = safe;
        }
        Ok(())
    }

    fn publish_gauges(&mut self) {
        for (topic, n) in self.published.iter_mut() {
            if *n > 0 {
                metrics::counter!(m::EVENTS_PUBLISHED, "topic" => topic.clone()).increment(*n);
                *n = 0;
            }
        }
        metrics::gauge!(m::IN_FLIGHT).set(self.tracker.in_flight() as f64);
        let lag_seconds = match self.tracker.oldest_pending_commit_millis() {
            Some(ms) => (unix_millis(SystemTime::now()) - ms).max(0) as f64 / 1000.0,
            None => 0.0,
        };
        metrics::gauge!(m::LAG_SECONDS).set(lag_seconds);
        let position = self
            .tracker
            .durable()
            .max(self.idle_position)
            .max(self.confirmed);
        metrics::gauge!(m::LAG_BYTES).set(self.server_wal_end.saturating_sub(position) as f64);
        metrics::gauge!(m::HEARTBEAT_AGE).set(self.last_activity.elapsed().as_secs_f64());
    }

    // ---- replication events -------------------------------------------------

    async fn on_event<K: MessageSink>(
        &mut self,
        ev: ReplicationEvent,
        publisher: &mut K,
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
                let meta = TxnMeta::new(commit_lsn, commit_time_micros)
                    .with_cloudevents(self.cloudevents.clone());
                let seq = if skip {
                    0
                } else {
                    self.tracker.begin(meta.commit_unix_millis)
                };
                self.current = Some(Current {
                    seq,
                    meta,
                    skip,
                    rows: 0,
                });
                self.server_wal_end = self.server_wal_end.max(commit_lsn);
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                if let Some(cur) = self.current.take() {
                    if !cur.skip {
                        self.tracker.commit(cur.seq, end_lsn.as_u64());
                        if cur.rows > 0 {
                            metrics::histogram!(m::TRANSACTION_SIZE).record(cur.rows as f64);
                            self.last_activity = Instant::now();
                        }
                    }
                }
                self.server_wal_end = self.server_wal_end.max(end_lsn.as_u64());
            }
            ReplicationEvent::XLogData { data, wal_end, .. } => {
                self.server_wal_end = self.server_wal_end.max(wal_end.as_u64());
                self.on_data(&data, publisher, deliveries).await?;
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                self.server_wal_end = self.server_wal_end.max(wal_end.as_u64());
                if self.current.is_none() && self.tracker.is_idle() {
                    self.idle_position = self.idle_position.max(wal_end.as_u64());
                }
            }
            ReplicationEvent::Message {
                transactional: false,
                lsn,
                prefix,
                ..
            } if prefix == crate::heartbeat::PREFIX => {
                self.last_activity = Instant::now();
                self.server_wal_end = self.server_wal_end.max(lsn.as_u64());
                if self.current.is_none() && self.tracker.is_idle() {
                    self.idle_position = self.idle_position.max(lsn.as_u64());
                }
            }
            ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(())
    }

    async fn on_data<K: MessageSink>(
        &mut self,
        data: &bytes::Bytes,
        publisher: &mut K,
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
                let (seq, meta) = (cur.seq, cur.meta.clone());
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
                if let Some(c) = self.current.as_mut() {
                    c.rows += 1;
                }
                let rec = match resolved.record(&tuple) {
                    Ok(rec) => rec,
                    Err(row_err) => {
                        let reason = Reason {
                            class: "permanent",
                            message: row_err.to_string(),
                            original_topic: String::new(),
                            attempts: 1,
                            first_failure: SystemTime::now(),
                            drop_value: true,
                        };
                        let dl = dead_letter::from_row_error(&row_err, &meta, &reason);
                        return self.reject_locally(row_err.row_id, dl, seq, &meta, reason.message);
                    }
                };
                let topic = match &rec.topic {
                    Some(t) => t.clone(),
                    None => self.template.render(&RouteFields {
                        aggregate_type: &rec.aggregate_type,
                        event_type: &rec.event_type,
                        table: &self.table_name,
                    }),
                };
                if let Some((problem, drop_value)) = self.local_check(&rec, &topic) {
                    let reason = Reason {
                        class: "permanent",
                        message: format!("outbox row id={}: {problem}", rec.id),
                        original_topic: topic.clone(),
                        attempts: 1,
                        first_failure: SystemTime::now(),
                        drop_value,
                    };
                    let dl = dead_letter::from_record(&rec, &meta, &reason);
                    return self.reject_locally(Some(rec.id), dl, seq, &meta, reason.message);
                }
                publisher.ensure_topic(&topic).await?;
                self.enqueue_record(&rec, &meta, &topic, seq, publisher, deliveries)
                    .await?;
            }
            Message::Type { .. } | Message::Origin { .. } | Message::Other(_) => {}
        }
        Ok(())
    }

    /// Checks that fail before the broker is asked: the topic name and the
    /// payload size. Returns the problem and whether the value is at fault.
    fn local_check(&self, rec: &OutboxRecord, topic: &str) -> Option<(String, bool)> {
        if let Err(msg) = validate_topic(topic) {
            return Some((msg, false));
        }
        let limit = self.cfg.relay.max_payload_bytes;
        if rec.payload.len() > limit {
            return Some((
                format!(
                    "event_data is {} bytes, over relay.max-payload-bytes = {limit}",
                    rec.payload.len()
                ),
                true,
            ));
        }
        None
    }

    /// A row that can never be published as it is, found before producing:
    /// dead-letter it (one attempt: the check is deterministic, retrying
    /// would give the same answer) or block.
    fn reject_locally(
        &mut self,
        row_id: Option<i64>,
        dl: DeadLetter,
        seq: u64,
        meta: &TxnMeta,
        message: String,
    ) -> Result<()> {
        tracing::warn!(row_id = ?row_id, "{message}");
        match self.cfg.relay.on_permanent_error {
            OnPermanentError::Dlq => {
                let mut tag = MsgTag::first(seq, row_id.unwrap_or(0), meta.commit_unix_millis);
                tag.first_failure = Some(SystemTime::now());
                tag.is_dlq = true;
                self.tracker.sent(seq);
                self.scheduled
                    .push((Instant::now(), Action::DeadLetter(Box::new(dl), tag)));
            }
            OnPermanentError::Block => self.block(row_id, message, None),
        }
        Ok(())
    }

    async fn enqueue_record<K: MessageSink>(
        &mut self,
        rec: &OutboxRecord,
        meta: &TxnMeta,
        topic: &str,
        seq: u64,
        publisher: &K,
        deliveries: &mut mpsc::UnboundedReceiver<Delivery>,
    ) -> Result<()> {
        let mut tag = MsgTag::first(seq, rec.id, meta.commit_unix_millis);
        if let Some(r) = self
            .stats
            .refusals
            .get(&rec.id)
            .filter(|r| r.attempts >= self.cfg.relay.max_retry)
        {
            // Spent in an earlier session whose DLQ write was not acked.
            let r = r.clone();
            let failed = failed_from_record(rec, meta, topic, rdkafka::error::KafkaError::Canceled);
            self.tracker.sent(seq);
            self.dead_letter_or_block(failed, tag, &r);
            return Ok(());
        }
        loop {
            match publisher.send_record(rec, meta, topic, tag) {
                Ok(()) => break,
                Err((SendError::QueueFull, t)) => {
                    // librdkafka's own queue is full: wait for one report,
                    // then try again.
                    tag = t;
                    match deliveries.recv().await {
                        Some(d) => self.on_delivery(d)?,
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                Err((SendError::Kafka(e), t)) if kafka_class(&e) == ErrorClass::Permanent => {
                    // librdkafka refused it locally (e.g. over
                    // message.max.bytes): same path as a broker refusal.
                    self.tracker.sent(seq);
                    let failed = failed_from_record(rec, meta, topic, e);
                    return self.on_permanent_refusal(failed, t);
                }
                Err((SendError::Kafka(e), _)) => {
                    return Err(RelayError::kafka(
                        format!("producing outbox row id={}", rec.id),
                        e,
                    ))
                }
            }
        }
        self.tracker.sent(seq);
        Ok(())
    }
}

/// Broker errors where the message's value is what was refused: the DLQ
/// copy leaves it out.
fn value_was_the_problem(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::InvalidMessage)
    )
}

/// The DLQ reason for a row whose refusals are spent.
fn refusal_reason(r: &Refusal, original_topic: String) -> Reason {
    Reason {
        class: "permanent",
        message: r.error.clone(),
        original_topic,
        attempts: r.attempts,
        first_failure: r.first_failure,
        drop_value: r.too_large,
    }
}

/// A record as the producer would have sent it, for the refusal paths.
fn failed_from_record(
    rec: &OutboxRecord,
    meta: &TxnMeta,
    topic: &str,
    error: rdkafka::error::KafkaError,
) -> Box<FailedMessage> {
    Box::new(FailedMessage {
        error,
        topic: topic.to_string(),
        key: Some(rec.aggregate_id.as_bytes().to_vec()),
        payload: Some(crate::sink::message::value(rec, meta).into_owned()),
        headers: crate::sink::message::header_pairs(rec, meta),
    })
}

/// When the message was too large, the DLQ copy keeps only the relay's own
/// headers (the row's may be what made it too large).
fn relay_headers_only(headers: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    headers
        .into_iter()
        .take(crate::sink::message::RELAY_HEADER_COUNT)
        .collect()
}

fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;

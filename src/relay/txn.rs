//! The exactly-once session (`kafka.delivery = "exactly-once"`): the same
//! stream, router and messages as the at-least-once loop, but the broker's
//! acknowledgement is the Kafka *commit*, and the resume position travels
//! inside the committed transaction (invariant 9).
//!
//! Startup order — each step needs the one before:
//! 1. hold the slot: with `ha.enabled` the leadership was won before any
//!    session runs ([`crate::leader`]); without it the slot must not be
//!    active (checked; a relay that would fence a live one waits instead);
//! 2. `init_transactions` — fences every older producer with our
//!    transactional id and aborts its open transaction;
//! 3. read the last committed progress record ([`progress_topic`]);
//! 4. open the stream there, skipping the inserts of a split transaction
//!    that are already committed.
//!
//! Each Kafka transaction holds whole PostgreSQL transactions, the DLQ
//! copies they produced and, last, the progress record (a first one, with
//! the position of the transaction before, only registers the progress
//! partition early: [`send`]). It commits every
//! `kafka.transaction-interval` (at a PostgreSQL commit boundary) or when it
//! holds `kafka.transaction-max-messages` messages (or
//! `kafka.max-in-flight-bytes` bytes) — then, inside a PostgreSQL
//! transaction, it is a *split*: the record says how many inserts of that
//! transaction are in. No Kafka transaction is open while the stream is idle.
//! Only after `commit_transaction` returned are dead-lettered rows marked
//! FAILED, the checkpoint table written and the slot told ([`position`]).
//!
//! Failures: a fenced producer stops the process
//! ([`RelayError::ProducerFenced`], exit code 3); anything else aborts the
//! open transaction and ends the session — the next one resumes from the
//! last committed progress record, so nothing aborted is ever counted.
//!
//! Refusals keep the at-least-once rules, per Kafka transaction instead of
//! per batch: a row refused inside a transaction (its producer refusal
//! aborts all of it) is noted in the ledger; on replay it is sent in a Kafka
//! transaction of its own, where a refusal is certainly its own and counts
//! as an attempt; once `relay.max-retry` attempts are spent its DLQ copy
//! replaces it, in the transaction. Rows the relay's own checks refuse
//! (malformed, oversized, bad topic name) are dead-lettered at once.
//! `relay.on-permanent-error = "block"` is refused at config time.

mod ahead;
mod commit;
mod position;
mod send;

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::router::{Route, Router};
use super::{bounded, SessionEnd, SessionStats};
use crate::checkpoint::{CheckpointStore, PgCheckpointStore};
use crate::config::Config;
use crate::error::{ErrorClass, RelayError, Result};
use crate::health::SharedHealth;
use crate::leader::Leadership;
use crate::metrics as m;
use crate::ports::{EventStream, PgBookkeeping, SourceEvent};
use crate::sink::message::{format_lsn, TxnMeta};
use crate::sink::progress_topic::{self, ProgressRecord, Resume};
use crate::sink::transactional::TxnSink;
use crate::sink::Delivery;
use crate::source;
use ahead::ReadAhead;
use position::Positions;

/// Run one exactly-once session (see the module docs).
pub(super) async fn session_body(
    cfg: &Config,
    health: &SharedHealth,
    shutdown: &mut watch::Receiver<bool>,
    stats: &mut SessionStats,
    leader: Option<&Leadership>,
) -> Result<SessionEnd> {
    let control = source::control::connect(cfg, "checkpoint").await?;
    if !cfg.ha.enabled {
        slot_must_be_free(&control, cfg).await?;
    }
    let store = PgCheckpointStore::new(control, &cfg.checkpoint_table(), &cfg.postgres.slot);
    if cfg.kafka.create_topics {
        progress_topic::ensure(cfg).await?;
    }
    let (sink, reports) = TxnSink::new(cfg)?;
    // The leader's grace first (see `crate::leader`): only then may this
    // process fence the previous leader's producer at the broker.
    if let Some(leader) = leader {
        tokio::select! {
            r = leader.stream_gate() => r?,
            _ = shutdown.wait_for(|v| *v) => return Ok(SessionEnd::Stopped),
        }
    }
    sink.init()?;
    let id = sink.id().to_string();
    let cfg2 = cfg.clone();
    let last = tokio::task::spawn_blocking(move || {
        progress_topic::read_last(&cfg2, &id, Duration::from_secs(30))
    })
    .await
    .map_err(|e| RelayError::Environment(format!("progress reader panicked: {e}")))??;
    let resume = match &last {
        Some(rec) => rec.resume()?,
        None => {
            // First exactly-once start (or a migration from at-least-once):
            // what the checkpoint table covers was published before.
            let lsn = store.load().await?.unwrap_or(0);
            tracing::info!(checkpoint = %format_lsn(lsn), "no progress record yet: resuming from the checkpoint table");
            Resume {
                lsn,
                skip: 0,
                epoch: 0,
            }
        }
    };
    let unmarked = last.map(|r| r.failed).unwrap_or_default();
    let book = PgBookkeeping::new(store, cfg);
    let stream = source::stream::open(cfg, (resume.lsn > 0).then_some(resume.lsn)).await?;
    tracing::info!(
        slot = %cfg.postgres.slot,
        transactional_id = sink.id(),
        resume_from = %format_lsn(resume.lsn),
        skip_inserts = resume.skip,
        epoch = resume.epoch + 1,
        "exactly-once replication session started"
    );
    health.set_stream_up(true);
    let mut session = TxnSession::new(cfg, health.clone(), resume, sink, stats)?;
    session.failed_rows = unmarked;
    let result = session.run(stream, reports, &book, shutdown).await;
    health.set_stream_up(false);
    result
}

/// Without leader election, a slot held by another walsender means another
/// relay may be streaming: calling `init_transactions` now would fence it
/// while it still holds the slot. Wait instead (a transient error).
async fn slot_must_be_free(client: &tokio_postgres::Client, cfg: &Config) -> Result<()> {
    let row = client
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&cfg.postgres.slot],
        )
        .await
        .map_err(|e| RelayError::postgres("checking the slot", e))?;
    if row.is_some_and(|r| r.get::<_, bool>(0)) {
        return Err(RelayError::Timeout(format!(
            "slot {} is held by another walsender; not fencing its producer (exactly-once waits)",
            cfg.postgres.slot
        )));
    }
    Ok(())
}

/// The PostgreSQL transaction being received.
struct PgTxn {
    commit_lsn: u64,
    meta: TxnMeta,
    /// Committed before the resume position: skip it whole.
    skip_whole: bool,
    /// Inserts received so far (the progress record's index).
    inserts: u64,
    /// Inserts already in Kafka (a split we resume): skip the first ones.
    skip_until: u64,
    /// Rows this session sent (or dead-lettered) of it.
    rows: usize,
}

/// The open Kafka transaction.
struct OpenTxn {
    /// See [`TxnSession::began`]; due an interval after.
    began: Instant,
    msgs: usize,
    bytes: usize,
    /// Messages per topic, counted as published once committed.
    per_topic: HashMap<String, u64>,
    /// Rows dead-lettered in it: (id, attempts), marked FAILED after commit.
    failed: Vec<(i64, i32)>,
    /// The one row sent alone in it (a refused row's retry).
    alone: Option<i64>,
    /// The last PostgreSQL commit inside it: (commit LSN, inserts, end LSN).
    boundary: Option<(u64, u64, u64)>,
}

/// One exactly-once session.
pub(super) struct TxnSession<'a> {
    cfg: &'a Config,
    health: SharedHealth,
    router: Router,
    cloudevents: Option<std::sync::Arc<crate::sink::cloudevents::CloudEvents>>,
    sink: TxnSink,
    pos: Positions,
    resume: Resume,
    epoch: u64,
    cur: Option<PgTxn>,
    open: Option<OpenTxn>,
    /// Dead-lettered rows of committed transactions not yet marked FAILED
    /// (carried in every progress record until they are).
    failed_rows: Vec<(i64, i32)>,
    /// Events read while a commit was in flight, handled before new ones.
    ahead: ReadAhead,
    /// The progress record of the last committed transaction (the resume
    /// position before the first).
    committed: ProgressRecord,
    /// When the event being handled arrived.
    arrived: Instant,
    last_persist: Instant,
    last_activity: Instant,
    stats: &'a mut SessionStats,
}

impl<'a> TxnSession<'a> {
    fn new(
        cfg: &'a Config,
        health: SharedHealth,
        resume: Resume,
        sink: TxnSink,
        stats: &'a mut SessionStats,
    ) -> Result<Self> {
        Ok(Self {
            cfg,
            health,
            router: Router::new(cfg)?,
            cloudevents: super::encoder(cfg)?,
            sink,
            pos: Positions::new(resume.lsn),
            resume,
            epoch: resume.epoch + 1,
            cur: None,
            open: None,
            failed_rows: Vec::new(),
            ahead: ReadAhead::default(),
            committed: ProgressRecord::of_resume(resume),
            arrived: Instant::now(),
            last_persist: Instant::now(),
            last_activity: Instant::now(),
            stats,
        })
    }

    async fn run<S: EventStream>(
        &mut self,
        mut stream: S,
        mut reports: mpsc::UnboundedReceiver<Delivery>,
        book: &PgBookkeeping,
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
                // What was read during a commit comes first, in order.
                if let Some(ev) = self.ahead.next() {
                    let (at, ev) = ev?;
                    self.arrived = at;
                    self.on_event(ev, &mut stream, book, &mut reports).await?;
                    continue;
                }
                // Commit at the interval, but only at a PostgreSQL boundary.
                let due = match (&self.open, &self.cur) {
                    (Some(o), None) => Some(o.began + self.cfg.kafka.transaction_interval),
                    _ => None,
                };
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => {}
                    Some(d) = reports.recv() => self.on_report(d)?,
                    _ = tokio::time::sleep_until(due.unwrap_or(far)), if due.is_some() => {
                        self.commit_at_boundary(&mut stream, book, &mut reports).await?;
                    }
                    _ = tick.tick() => {
                        if let Some(e) = self.sink.fenced().or_else(|| self.sink.publisher.fatal_error()) {
                            return Err(e);
                        }
                        self.checkpoint(&stream, book, false).await?;
                        self.publish_gauges();
                    }
                    ev = stream.recv() => {
                        let ev = super::ended(ev?)?;
                        self.arrived = Instant::now();
                        self.on_event(ev, &mut stream, book, &mut reports).await?;
                    }
                }
            }
        }
        .await;
        match outcome {
            Ok(()) => {
                // Graceful stop: commit what is open (a split when inside a
                // PostgreSQL transaction), then persist and confirm.
                if self.open.is_some() {
                    match &self.cur {
                        Some(_) => self.commit_split(&mut stream, book, &mut reports).await?,
                        None => {
                            self.commit_at_boundary(&mut stream, book, &mut reports)
                                .await?
                        }
                    }
                }
                self.checkpoint(&stream, book, true).await?;
                stream.close(true).await;
                tracing::info!(checkpoint = %format_lsn(self.pos.persisted_lsn()), "stopped");
                Ok(SessionEnd::Stopped)
            }
            Err(e) => {
                if self.open.take().is_some() {
                    self.pos.kafka_aborted();
                    if self.sink.fenced().is_none() {
                        self.sink.abort();
                    }
                }
                // A fence shows first as a failed delivery, commit or abort.
                let e = self.sink.fenced().unwrap_or(e);
                if matches!(e, RelayError::ProducerFenced(_)) {
                    tracing::error!(
                        transactional_id = self.sink.id(),
                        "fenced: another relay with the same kafka.transactional-id took over; stopping (exit code 3)"
                    );
                }
                stream.close(false).await;
                Err(e)
            }
        }
    }

    // ---- delivery reports ---------------------------------------------------

    /// A report: only a failure matters (the commit acknowledges). A refused
    /// row is noted in the ledger — an attempt when it was alone in its
    /// transaction — and the session ends (the transaction is lost anyway).
    fn on_report(&mut self, d: Delivery) -> Result<()> {
        let Err(failed) = d.result else {
            return Ok(());
        };
        let tag = d.tag;
        if failed.error.class == ErrorClass::Permanent && !tag.is_dlq && tag.row_id != 0 {
            let alone = self.open.as_ref().and_then(|o| o.alone) == Some(tag.row_id);
            let r = self
                .stats
                .refusals
                .entry(tag.row_id)
                .or_insert_with(|| super::Refusal {
                    attempts: 0,
                    first_failure: std::time::SystemTime::now(),
                    error: String::new(),
                    too_large: false,
                });
            r.error = failed.error.message.clone();
            r.too_large |= failed.error.too_large;
            if alone {
                r.attempts += 1;
            }
            tracing::warn!(row_id = tag.row_id, attempt = r.attempts, topic = %failed.topic, error = %r.error, "broker refused outbox row; aborting the Kafka transaction");
            metrics::counter!(m::RETRIES, "reason" => "permanent").increment(1);
        }
        Err(RelayError::sink(
            format!(
                "delivery of outbox row id={} failed; aborting the Kafka transaction",
                tag.row_id
            ),
            failed.error,
        ))
    }

    // ---- replication events -----------------------------------------------

    async fn on_event<S: EventStream>(
        &mut self,
        ev: SourceEvent,
        stream: &mut S,
        book: &PgBookkeeping,
        reports: &mut mpsc::UnboundedReceiver<Delivery>,
    ) -> Result<()> {
        match ev {
            SourceEvent::Begin {
                commit_lsn,
                commit_time_micros,
            } => {
                let skip_until = if commit_lsn == self.resume.lsn {
                    self.resume.skip
                } else {
                    0
                };
                self.cur = Some(PgTxn {
                    commit_lsn,
                    meta: TxnMeta::new(commit_lsn, commit_time_micros)
                        .with_cloudevents(self.cloudevents.clone()),
                    skip_whole: commit_lsn < self.resume.lsn,
                    inserts: 0,
                    skip_until,
                    rows: 0,
                });
                self.pos.observe(commit_lsn);
            }
            SourceEvent::Commit { end_lsn } => {
                let Some(cur) = self.cur.take() else {
                    return Ok(());
                };
                if cur.skip_whole {
                    self.pos.observe(end_lsn);
                    return Ok(());
                }
                if cur.rows > 0 {
                    metrics::histogram!(m::TRANSACTION_SIZE).record(cur.rows as f64);
                    self.last_activity = Instant::now();
                }
                self.pos
                    .pg_commit(end_lsn, cur.rows > 0, self.open.is_some());
                if let Some(o) = self.open.as_mut() {
                    o.boundary = Some((cur.commit_lsn, cur.inserts, end_lsn));
                    let interval = self.cfg.kafka.transaction_interval;
                    if o.began.elapsed() >= interval || self.full() {
                        self.commit_at_boundary(stream, book, reports).await?;
                    }
                }
            }
            SourceEvent::Data { data, wal_end } => {
                self.pos.observe(wal_end);
                let Some((relation_id, tuple)) = self.router.insert_of(&data)? else {
                    return Ok(());
                };
                let Some(cur) = self.cur.as_mut() else {
                    return Err(super::insert_outside_transaction());
                };
                if cur.skip_whole {
                    return Ok(());
                }
                let idx = cur.inserts;
                cur.inserts += 1;
                if idx < cur.skip_until {
                    return Ok(());
                }
                let meta = cur.meta.clone();
                match self.router.route(relation_id, &tuple, &meta)? {
                    Route::Ignore => {}
                    Route::Publish { rec, topic } => {
                        self.publish(&rec, &meta, &topic, stream, book, reports)
                            .await?;
                    }
                    Route::Reject {
                        row_id,
                        dl,
                        message,
                    } => {
                        tracing::warn!(row_id = ?row_id, "{message}");
                        self.send_dead_letter(*dl, 1).await?;
                    }
                }
                if self.open.is_some() && self.full() {
                    self.commit_split(stream, book, reports).await?;
                }
            }
            SourceEvent::KeepAlive { wal_end } => {
                let busy = self.cur.is_some() || self.open.is_some();
                self.pos.idle_at(wal_end, busy);
            }
            SourceEvent::Heartbeat { lsn } => {
                self.last_activity = Instant::now();
                let busy = self.cur.is_some() || self.open.is_some();
                self.pos.idle_at(lsn, busy);
            }
            SourceEvent::Other => {}
        }
        Ok(())
    }

    /// When a transaction opened now counts as begun: when the event that
    /// opens it arrived — one read during the previous commit has waited
    /// since then, and should not wait a whole interval more — but no
    /// earlier than half an interval ago: were commits slow, every later
    /// transaction would otherwise be due at once, carry a single
    /// PostgreSQL transaction, and the commits' cost would no longer be
    /// spread over a batch (throughput collapsed that way in a trial run).
    pub(super) fn began(&self) -> Instant {
        let now = Instant::now();
        let floor = now
            .checked_sub(self.cfg.kafka.transaction_interval / 2)
            .unwrap_or(now);
        self.arrived.max(floor)
    }

    /// The open Kafka transaction holds enough.
    pub(super) fn full(&self) -> bool {
        self.open.as_ref().is_some_and(|o| {
            o.msgs >= self.cfg.kafka.transaction_max_messages
                || o.bytes >= self.cfg.kafka.max_in_flight_bytes
        })
    }
}

/// A bookkeeping call with the session's deadline.
async fn pg<T>(
    cfg: &Config,
    what: &str,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    bounded(cfg.postgres.connect_timeout, what, f).await
}

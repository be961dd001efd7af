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
//! The driver's own pieces: `events` (feeding events and reports to the
//! parts), `send` (enqueueing, carrying out the policy's effects),
//! `persist` (checkpoint and gauges).
//!
//! Invariant 2 — persist, then confirm — is [`Session::checkpoint`]: write
//! the table, then tell the slot. Every bookkeeping call has a deadline.
//! Time comes from `tokio::time`, so tests pause it.

mod events;
mod persist;
mod policy;
mod progress;
mod router;
mod send;
mod thread;
mod txn;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::checkpoint::{CheckpointStore, PgCheckpointStore};
use crate::config::Config;
use crate::error::{ErrorClass, RelayError, Result};
use crate::health::SharedHealth;
use crate::leader::Leadership;
use crate::ports::{Bookkeeping, EventStream, KafkaSink, MessageSink, PgBookkeeping};
use crate::sink::message::{format_lsn, TxnMeta};
use crate::source;
use policy::FailurePolicy;
pub use policy::{Ledger, Refusal};
use progress::{Limits, Progress};
use router::Router;
pub use thread::run_session;

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
    /// Shared with each row's send: a clone per row is a count, not two
    /// strings.
    meta: Arc<TxnMeta>,
    /// Already published before the checkpoint we resumed from.
    skip: bool,
    rows: usize,
}

/// Handles of the histograms recorded per message or transaction.
struct Histograms {
    produce_latency: metrics::Histogram,
    end_to_end_latency: metrics::Histogram,
    transaction_size: metrics::Histogram,
}

impl Histograms {
    fn new() -> Self {
        use crate::metrics as m;
        Self {
            produce_latency: metrics::histogram!(m::PRODUCE_LATENCY),
            end_to_end_latency: metrics::histogram!(m::END_TO_END_LATENCY),
            transaction_size: metrics::histogram!(m::TRANSACTION_SIZE),
        }
    }
}

/// One replication session.
pub struct Session<'a> {
    cfg: &'a Config,
    health: SharedHealth,
    router: Router,
    /// CloudEvents encoder (`kafka.format`), handed to every transaction.
    cloudevents: Option<Arc<crate::sink::cloudevents::CloudEvents>>,
    progress: Progress,
    policy: FailurePolicy,
    limits: Limits,
    current: Option<Current>,
    /// Last time an outbox transaction or heartbeat came through.
    last_activity: Instant,
    /// Acknowledged events per topic since the last metrics flush.
    published: HashMap<Arc<str>, u64>,
    /// The per-message histograms, looked up once: a registry lookup (hash
    /// of the key, a generation check) per message cost more than the
    /// recording itself.
    histograms: Histograms,
    stats: &'a mut SessionStats,
}

/// Run one session until shutdown (Ok) or the first error (Err).
///
/// `leader` is the leader lease ([`crate::leader`]). When its fence turns
/// true (or its sender is gone) the session future is dropped on the spot,
/// which purges the producer — queued and in-flight messages — and drops the
/// replication stream without a checkpoint write (invariant 10). Dropping,
/// not a flag the loop checks, so a loop stuck in a bookkeeping call is
/// fenced just as fast. Its stream gate holds loading the checkpoint and
/// `START_REPLICATION` back until the grace period is over; connecting and
/// creating the producer run during it.
///
/// This runs on the calling runtime; [`run_session`] runs it on the
/// session's own thread (see [`thread`]).
pub async fn run_session_here(
    cfg: &Config,
    health: &SharedHealth,
    shutdown: &mut watch::Receiver<bool>,
    stats: &mut SessionStats,
    leader: Option<Leadership>,
) -> Result<SessionEnd> {
    let Some(leader) = leader else {
        return session_body(cfg, health, shutdown, stats, None).await;
    };
    let mut fence = leader.fence.clone();
    let fenced = RelayError::Fenced("the leader lease ran out".into());
    if *fence.borrow_and_update() {
        return Err(fenced);
    }
    let result = tokio::select! {
        biased;
        _ = fence.wait_for(|v| *v) => Err(fenced),
        r = session_body(cfg, health, shutdown, stats, Some(&leader)) => r,
    };
    health.set_stream_up(false);
    result
}

async fn session_body(
    cfg: &Config,
    health: &SharedHealth,
    shutdown: &mut watch::Receiver<bool>,
    stats: &mut SessionStats,
    leader: Option<&Leadership>,
) -> Result<SessionEnd> {
    if cfg.kafka.delivery == crate::config::Delivery::ExactlyOnce {
        return txn::session_body(cfg, health, shutdown, stats, leader).await;
    }
    let control = source::control::connect(cfg, "checkpoint").await?;
    let store = PgCheckpointStore::new(control, &cfg.checkpoint_table(), &cfg.postgres.slot);
    let book = PgBookkeeping::new(store, cfg);
    let sink = KafkaSink::new(cfg)?;
    if let Some(leader) = leader {
        tokio::select! {
            r = leader.stream_gate() => r?,
            _ = shutdown.wait_for(|v| *v) => return Ok(SessionEnd::Stopped),
        }
    }
    // After the gate, so a fenced leader's last checkpoint write that was
    // still on a stalled wire is seen ([`crate::leader`], "Winning and streaming").
    let resume = book.load().await?;
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

/// Events (or delivery reports) handled per turn of the loop when more are
/// ready: one `select!` and one wake-up for a batch instead of each event.
/// Small enough that the checkpoint tick and shutdown are never late.
const BATCH: usize = 256;

/// A stream that ended (`Ok(None)`) ends the session: there is no end to a
/// replication stream the relay did not ask for.
fn ended(ev: Option<crate::ports::SourceEvent>) -> Result<crate::ports::SourceEvent> {
    ev.ok_or_else(|| {
        RelayError::Replication(pgwire_replication::PgWireError::Task(
            "replication stream ended".into(),
        ))
    })
}

/// The CloudEvents encoder of `kafka.format` (`None`: raw messages), one
/// per session, shared by every transaction — both delivery modes.
fn encoder(cfg: &Config) -> Result<Option<Arc<crate::sink::cloudevents::CloudEvents>>> {
    Ok(crate::sink::cloudevents::CloudEvents::new(
        cfg.kafka.format,
        &cfg.kafka.cloudevents,
        &cfg.outbox_table().name,
    )?)
}

/// pgoutput sends inserts only between Begin and Commit; anything else is
/// a broken stream (both delivery modes end the session on it).
fn insert_outside_transaction() -> RelayError {
    RelayError::Replication(pgwire_replication::PgWireError::Protocol(
        "Insert outside a transaction".into(),
    ))
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
            cloudevents: encoder(cfg)?,
            progress: Progress::new(resume_from),
            policy: FailurePolicy::new(cfg),
            limits: Limits {
                messages: cfg.kafka.max_in_flight,
                bytes: cfg.kafka.max_in_flight_bytes,
            },
            current: None,
            last_activity: Instant::now(),
            published: HashMap::new(),
            histograms: Histograms::new(),
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
        // The checkpoint write in progress, if one is (see `start_checkpoint`).
        let mut saving: Option<persist::Saving<'_>> = None;
        let outcome: Result<()> = async {
            loop {
                if *shutdown.borrow() {
                    return Ok(());
                }
                let effects = self.policy.poll(Instant::now(), self.progress.outstanding() == 0);
                self.apply(effects, &mut sink, book).await?;
                if saving.is_none() && self.progress.wants_early_checkpoint(self.limits) {
                    saving = self.start_checkpoint(book, &stream).await?;
                }
                let can_read = self.can_read();
                let wake = self.policy.next_wakeup();
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => {}
                    Some(d) = sink.next_delivery() => {
                        self.on_delivery(d, &mut sink, book).await?;
                        for _ in 1..BATCH {
                            let Some(d) = sink.try_next_delivery() else { break };
                            self.on_delivery(d, &mut sink, book).await?;
                        }
                    }
                    lsn = async { saving.as_mut().expect("guarded").done().await }, if saving.is_some() => {
                        saving = None;
                        self.checkpoint_written(lsn?, &stream);
                    }
                    _ = tick.tick() => {
                        // A producer that stopped for good acknowledges nothing
                        // more: end the session now, even when idle.
                        if let Some(e) = sink.fatal_error() {
                            return Err(e);
                        }
                        if saving.is_none() {
                            saving = self.start_checkpoint(book, &stream).await?;
                        }
                        self.publish_gauges();
                    }
                    _ = tokio::time::sleep_until(wake.unwrap_or(far)), if wake.is_some() => {}
                    ev = stream.recv(), if can_read => {
                        self.on_event(ended(ev?)?, &mut sink, book).await?;
                        for _ in 1..BATCH {
                            if !self.can_read() {
                                break;
                            }
                            let Some(ev) = stream.try_recv() else { break };
                            self.on_event(ended(ev?)?, &mut sink, book).await?;
                        }
                    }
                }
            }
        }
        .await;
        match outcome {
            Ok(()) => {
                if let Some(mut s) = saving.take() {
                    let lsn = s.done().await?;
                    self.checkpoint_written(lsn, &stream);
                }
                self.drain(&mut sink, book, &stream).await?;
                stream.close(true).await;
                Ok(SessionEnd::Stopped)
            }
            Err(e) => {
                // A producer that stopped for good (the gap-less guarantee
                // stops it on any refused batch) says why, and its error
                // decides whether the relay retries or stops. Either way the
                // refusals already reported are noted first, so the next
                // session sends those rows alone.
                let fatal = sink.fatal_error();
                let refused = e.class() == ErrorClass::Permanent || fatal.is_some();
                let e = fatal.unwrap_or(e);
                // Whatever is in flight will be replayed from the checkpoint.
                sink.purge();
                if refused {
                    self.note_batch_refusals(&mut sink).await;
                    self.policy.count_lone_refusal(&mut self.stats.refusals);
                }
                stream.close(false).await;
                Err(e)
            }
        }
    }

    /// Whether the stream may be read now: no row is held (block mode) and
    /// the in-flight window is open (invariant 6).
    fn can_read(&self) -> bool {
        self.policy.may_read() && self.progress.window_open(self.limits)
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
}

fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;

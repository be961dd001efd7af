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
use crate::ports::{Bookkeeping, EventStream, KafkaSink, MessageSink, PgBookkeeping};
use crate::sink::message::{format_lsn, TxnMeta};
use crate::source;
use policy::FailurePolicy;
pub use policy::{Ledger, Refusal};
use progress::{Limits, Progress};
use router::Router;

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
    /// CloudEvents encoder (`kafka.format`), handed to every transaction.
    cloudevents: Option<Arc<crate::sink::cloudevents::CloudEvents>>,
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
///
/// `fence` is the leader lease ([`crate::leader`]): when it turns true (or
/// its sender is gone) the session future is dropped on the spot, which
/// purges the producer — queued and in-flight messages — and drops the
/// replication stream without a checkpoint write (invariant 10). Dropping,
/// not a flag the loop checks, so a loop stuck in a bookkeeping call is
/// fenced just as fast.
pub async fn run_session(
    cfg: &Config,
    health: &SharedHealth,
    shutdown: &mut watch::Receiver<bool>,
    stats: &mut SessionStats,
    fence: Option<watch::Receiver<bool>>,
) -> Result<SessionEnd> {
    let Some(mut fence) = fence else {
        return session_body(cfg, health, shutdown, stats).await;
    };
    let fenced = RelayError::Fenced("the leader lease ran out".into());
    if *fence.borrow_and_update() {
        return Err(fenced);
    }
    let result = tokio::select! {
        biased;
        _ = fence.wait_for(|v| *v) => Err(fenced),
        r = session_body(cfg, health, shutdown, stats) => r,
    };
    health.set_stream_up(false);
    result
}

async fn session_body(
    cfg: &Config,
    health: &SharedHealth,
    shutdown: &mut watch::Receiver<bool>,
    stats: &mut SessionStats,
) -> Result<SessionEnd> {
    if cfg.kafka.delivery == crate::config::Delivery::ExactlyOnce {
        return txn::session_body(cfg, health, shutdown, stats).await;
    }
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
            cloudevents: crate::sink::cloudevents::CloudEvents::new(
                cfg.kafka.format,
                &cfg.kafka.cloudevents,
                &cfg.outbox_table().name,
            )?,
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
                        // A producer that stopped for good acknowledges nothing
                        // more: end the session now, even when idle.
                        if let Some(e) = sink.fatal_error() {
                            return Err(e);
                        }
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

//! The failure policy: what happens to a row the broker (or the relay's own
//! checks) refuses. It keeps the refusal ledger, decides dead-letter or
//! block, and holds the stream at a refused row; it does no I/O and returns
//! [`Effect`]s for the driver to carry out.
//!
//! The rules, and why:
//!
//! * **An attempt counts only against the row refused alone.** The broker
//!   refuses a whole produce batch when one record is too large, so a
//!   refusal of a pipelined message may be a neighbour's fault. It ends the
//!   session (the driver purges, notes every refused row as a suspect, and
//!   the supervisor replays from the checkpoint); an attempt is counted only
//!   when that failure refused exactly one row — then no neighbour shared
//!   its fate, and the refusal was its own ([`FailurePolicy::count_lone_refusal`]).
//!   On replay a suspect is *isolated*: sent only once nothing else is in
//!   flight, and nothing after it is read until its report. Accepted: it
//!   was innocent, forgotten. Refused: an attempt of its own.
//! * **A refused row stays ahead of everything after it.** While a row is
//!   held (isolated, waiting to retry, or blocked) the stream is not read,
//!   and since it was sent alone nothing after it is in flight. So in block
//!   mode nothing after it is delivered before it, and a retry never
//!   reorders.
//! * **Retries back off.** Attempts `< relay.max-retry` are retried in place
//!   after a growing delay; a blocked row is re-checked (deleted? accepted
//!   now?) on the same backoff, which keeps growing.
//! * **One hold at a time**: the stream stops at the first held row, so a
//!   second cannot appear (asserted).
//! * Local refusals (a topic that does not exist, librdkafka refusing to
//!   enqueue) are this row's own by construction and count at once.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::{Config, OnPermanentError};
use crate::dead_letter::{self, DeadLetter, Reason};
use crate::error::{ErrorClass, RelayError};
use crate::metrics as m;
use crate::sink::classify::SinkError;
use crate::sink::{FailedMessage, MsgTag};

/// A row's permanent refusals so far (kept across sessions).
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Attempts refused while the row was sent alone. 0: refused only in a
    /// batch so far (a suspect, sent alone next time).
    pub attempts: u32,
    /// When the first one failed.
    pub first_failure: SystemTime,
    /// The latest error, for the DLQ headers.
    pub error: String,
    /// The value (or the whole message) was too large: leave it out of the
    /// DLQ copy.
    pub too_large: bool,
}

/// The refusal ledger: row id → refusals.
pub type Ledger = HashMap<i64, Refusal>;

/// What the driver must do.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Enqueue this message now.
    Send(Box<FailedMessage>, Box<MsgTag>),
    /// This transaction's message will never be acknowledged (its row was
    /// deleted while blocked): count it done.
    Release(u64),
    /// Ask whether the row still exists, then call [`FailurePolicy::row_checked`].
    CheckRow(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Wait until then.
    Wait(Instant),
    /// Waiting for the driver's row check.
    Checking,
    /// Send the message once nothing else is in flight.
    Ready,
    /// Sent alone; waiting for its report.
    InFlight,
}

/// The row the stream is stopped at.
#[derive(Debug)]
struct Held {
    row_id: Option<i64>,
    /// The message to (re)send and its tag; `None` while in flight, or when
    /// retrying cannot help (the relay's own checks refused it).
    msg: Option<(Box<FailedMessage>, Box<MsgTag>)>,
    /// Its transaction, when the tracker counts its message.
    txn: Option<u64>,
    phase: Phase,
    /// Set when the row blocks the stream (`on-permanent-error = "block"`).
    blocked: Option<String>,
    backoff: Backoff,
}

/// See the module docs.
pub(crate) struct FailurePolicy {
    max_retry: u32,
    mode: OnPermanentError,
    dlq_topic: String,
    backoff_initial: Duration,
    backoff_max: Duration,
    hold: Option<Held>,
    /// Dead-lettered rows (id, attempts) to mark FAILED before the next
    /// checkpoint write.
    failed_rows: Vec<(i64, i32)>,
    /// The blocked row changed since it was last recorded.
    blocked_changed: bool,
    /// Rows refused in a batch since the last [`count_lone_refusal`](Self::count_lone_refusal).
    suspects: Vec<i64>,
}

impl FailurePolicy {
    pub(crate) fn new(cfg: &Config) -> Self {
        Self {
            max_retry: cfg.relay.max_retry,
            mode: cfg.relay.on_permanent_error,
            dlq_topic: cfg.kafka.dlq_topic.clone(),
            backoff_initial: cfg.relay.backoff_initial,
            backoff_max: cfg.relay.backoff_max,
            hold: None,
            failed_rows: Vec::new(),
            blocked_changed: false,
            suspects: Vec::new(),
        }
    }

    /// The session ended on refusals in a batch and every report of them is
    /// in: when exactly one row was refused, the refusal was that row's own,
    /// so it counts as an attempt (see the module docs).
    pub(crate) fn count_lone_refusal(&mut self, ledger: &mut Ledger) {
        let mut suspects = std::mem::take(&mut self.suspects);
        suspects.sort_unstable();
        suspects.dedup();
        if let [id] = suspects[..] {
            if let Some(r) = ledger.get_mut(&id) {
                r.attempts += 1;
            }
        }
    }

    /// Whether the ledger says `row_id` has used up its attempts: it is
    /// dead-lettered or blocks on admission, without another send.
    pub(crate) fn spent(&self, ledger: &Ledger, row_id: i64) -> Option<SinkError> {
        let r = ledger.get(&row_id)?;
        (r.attempts >= self.max_retry).then(|| SinkError {
            class: ErrorClass::Permanent,
            message: r.error.clone(),
            too_large: r.too_large,
        })
    }

    /// Whether the stream may be read: not while a row is held.
    pub(crate) fn may_read(&self) -> bool {
        self.hold.is_none()
    }

    /// Whether rejected rows go to the DLQ (else they block).
    pub(crate) fn dead_letters(&self) -> bool {
        self.mode == OnPermanentError::Dlq
    }

    /// When [`poll`](Self::poll) has something to do next.
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        match self.hold.as_ref()?.phase {
            Phase::Wait(t) => Some(t),
            _ => None,
        }
    }

    /// A record about to be sent: if the ledger knows it, hold it to be sent
    /// alone and return `None`; otherwise give it back to send pipelined.
    pub(crate) fn admit(
        &mut self,
        ledger: &Ledger,
        msg: Box<FailedMessage>,
        tag: Box<MsgTag>,
    ) -> Option<(Box<FailedMessage>, Box<MsgTag>)> {
        if !ledger.contains_key(&tag.row_id) {
            return Some((msg, tag));
        }
        debug_assert!(self.hold.is_none(), "one hold at a time");
        self.hold = Some(Held {
            row_id: Some(tag.row_id),
            txn: Some(tag.txn),
            msg: Some((msg, tag)),
            phase: Phase::Ready,
            blocked: None,
            backoff: self.backoff(),
        });
        None
    }

    /// Time passed or the producer went quiet (`quiet`: nothing in flight).
    pub(crate) fn poll(&mut self, now: Instant, quiet: bool) -> Vec<Effect> {
        let Some(h) = self.hold.as_mut() else {
            return Vec::new();
        };
        if let Phase::Wait(t) = h.phase {
            if now < t {
                return Vec::new();
            }
            match (h.blocked.is_some(), h.row_id) {
                (true, Some(id)) => {
                    h.phase = Phase::Checking;
                    return vec![Effect::CheckRow(id)];
                }
                _ => h.phase = Phase::Ready,
            }
        }
        if h.phase != Phase::Ready || !quiet {
            return Vec::new();
        }
        match h.msg.take() {
            Some((msg, mut tag)) => {
                tag.isolated = true;
                tag.sent_at = std::time::Instant::now();
                h.phase = Phase::InFlight;
                vec![Effect::Send(msg, tag)]
            }
            None => {
                // Nothing to retry (the relay's own check refused it): only
                // a deleted row unblocks.
                h.phase = Phase::Wait(now + h.backoff.next_delay());
                Vec::new()
            }
        }
    }

    /// The driver's answer to [`Effect::CheckRow`].
    pub(crate) fn row_checked(&mut self, exists: bool) -> Vec<Effect> {
        let Some(h) = self.hold.as_mut() else {
            return Vec::new();
        };
        if exists {
            h.phase = Phase::Ready;
            return Vec::new();
        }
        let txn = h.txn;
        self.release("the row was deleted");
        txn.map(Effect::Release).into_iter().collect()
    }

    /// The broker acknowledged `tag`'s message.
    pub(crate) fn accepted(&mut self, ledger: &mut Ledger, tag: &MsgTag) {
        if tag.is_dlq {
            metrics::counter!(m::DLQ_TOTAL).increment(1);
            if tag.row_id != 0 {
                let attempts = i32::try_from(tag.attempt).unwrap_or(i32::MAX);
                self.failed_rows.push((tag.row_id, attempts));
            }
        } else {
            ledger.remove(&tag.row_id);
        }
        if self
            .hold
            .as_ref()
            .is_some_and(|h| h.phase == Phase::InFlight && h.row_id == Some(tag.row_id))
        {
            self.release("the broker accepted it");
        }
    }

    /// The producer reported `failed` for `tag`. `Err` ends the session.
    pub(crate) fn refused(
        &mut self,
        ledger: &mut Ledger,
        failed: Box<FailedMessage>,
        tag: Box<MsgTag>,
        now: Instant,
    ) -> Result<Vec<Effect>, RelayError> {
        let id = tag.row_id;
        if tag.is_dlq {
            // Never drop: a failed DLQ write stalls the stream.
            return Err(RelayError::sink(
                format!("dead-letter write for outbox row id={id} failed; stalling"),
                failed.error,
            ));
        }
        if failed.error.class != ErrorClass::Permanent {
            return Err(RelayError::sink(
                format!(
                    "delivery of outbox row id={id} failed; replaying from the durable checkpoint"
                ),
                failed.error,
            ));
        }
        if !tag.isolated {
            self.suspects.push(id);
            let r = note(ledger, id, &failed.error);
            tracing::warn!(row_id = id, topic = %failed.topic, error = %r.error, "broker refused outbox row in a batch; it will be sent alone");
            metrics::counter!(m::RETRIES, "reason" => "permanent").increment(1);
            return Err(RelayError::sink(
                format!("broker refused outbox row id={id} in a batch; replaying from the durable checkpoint"),
                failed.error,
            ));
        }
        Ok(self.refused_alone(ledger, failed, tag, now))
    }

    /// A refusal that is certainly this row's own: count it; retry in place
    /// with backoff, dead-letter, or block.
    pub(crate) fn refused_alone(
        &mut self,
        ledger: &mut Ledger,
        failed: Box<FailedMessage>,
        tag: Box<MsgTag>,
        now: Instant,
    ) -> Vec<Effect> {
        self.decide(ledger, failed, tag, now, true)
    }

    /// A row whose attempts were used up in earlier sessions comes round
    /// again: dead-letter it, or block on it, without sending it again.
    pub(crate) fn give_up(
        &mut self,
        ledger: &mut Ledger,
        failed: Box<FailedMessage>,
        tag: Box<MsgTag>,
        now: Instant,
    ) -> Vec<Effect> {
        self.decide(ledger, failed, tag, now, false)
    }

    fn decide(
        &mut self,
        ledger: &mut Ledger,
        failed: Box<FailedMessage>,
        mut tag: Box<MsgTag>,
        now: Instant,
        count: bool,
    ) -> Vec<Effect> {
        debug_assert!(
            self.hold
                .as_ref()
                .is_none_or(|h| h.row_id == Some(tag.row_id)),
            "one hold at a time"
        );
        let r = note(ledger, tag.row_id, &failed.error);
        let spent = if self.hold.as_ref().is_some_and(|h| h.blocked.is_some()) || !count {
            true // already blocked (re-checks are not attempts), or spent before
        } else {
            r.attempts += 1;
            r.attempts >= self.max_retry
        };
        let r = r.clone();
        tag.attempt = r.attempts;
        tag.first_failure = Some(r.first_failure);
        tag.isolated = false;
        if !spent || self.hold.as_ref().is_none_or(|h| h.blocked.is_none()) {
            tracing::warn!(row_id = tag.row_id, attempt = r.attempts, max = self.max_retry, topic = %failed.topic, error = %r.error, "broker refused outbox row");
        }
        if spent && self.mode == OnPermanentError::Dlq {
            self.hold = None;
            return vec![self.dead_letter(*failed, *tag, &r)];
        }
        let mut h = self.hold.take().unwrap_or_else(|| Held {
            row_id: Some(tag.row_id),
            txn: Some(tag.txn),
            msg: None,
            phase: Phase::Ready,
            blocked: None,
            backoff: Backoff::new(self.backoff_initial, self.backoff_max),
        });
        if spent && h.blocked.is_none() {
            let reason = format!("broker refused it {} times: {}", r.attempts, r.error);
            announce_block(Some(tag.row_id), &reason);
            h.blocked = Some(reason);
            self.blocked_changed = true;
        }
        h.phase = Phase::Wait(now + h.backoff.next_delay());
        h.msg = Some((failed, tag));
        self.hold = Some(h);
        Vec::new()
    }

    /// The relay's own checks refused the row (see the router): dead-letter
    /// it with `tag` (the driver counted it sent), or block on it.
    pub(crate) fn reject(
        &mut self,
        row_id: Option<i64>,
        dl: DeadLetter,
        message: String,
        mut tag: Box<MsgTag>,
        now: Instant,
    ) -> Vec<Effect> {
        tracing::warn!(row_id = ?row_id, "{message}");
        if self.dead_letters() {
            tag.first_failure = Some(SystemTime::now());
            tag.is_dlq = true;
            return vec![Effect::Send(self.dlq_message(dl), tag)];
        }
        debug_assert!(self.hold.is_none(), "one hold at a time");
        announce_block(row_id, &message);
        let mut backoff = self.backoff();
        self.hold = Some(Held {
            row_id,
            msg: None,
            txn: None,
            phase: Phase::Wait(now + backoff.next_delay()),
            blocked: Some(message),
            backoff,
        });
        self.blocked_changed = true;
        Vec::new()
    }

    /// Rows whose DLQ copies were acked, to mark FAILED (then forget them).
    /// Whether a checkpoint has rows to mark FAILED or a blocked row to
    /// record before it may write the position.
    pub(crate) fn has_bookkeeping(&self) -> bool {
        !self.failed_rows.is_empty() || self.blocked_changed
    }

    pub(crate) fn take_failed_rows(&mut self) -> Vec<(i64, i32)> {
        std::mem::take(&mut self.failed_rows)
    }

    /// The blocked row to record, when it changed: `Some(None)` to clear.
    pub(crate) fn take_blocked_change(&mut self) -> Option<Option<(i64, String)>> {
        if !std::mem::take(&mut self.blocked_changed) {
            return None;
        }
        Some(self.hold.as_ref().and_then(|h| {
            h.blocked
                .as_ref()
                .map(|reason| (h.row_id.unwrap_or(-1), reason.clone()))
        }))
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.backoff_initial, self.backoff_max)
    }

    fn release(&mut self, why: &str) {
        if let Some(h) = self.hold.take() {
            if h.blocked.is_some() {
                tracing::info!(row_id = ?h.row_id, "stream unblocked: {why}");
                metrics::gauge!(m::BLOCKED_ROW).set(0.0);
                self.blocked_changed = true;
            }
        }
    }

    fn dead_letter(&self, failed: FailedMessage, tag: MsgTag, r: &Refusal) -> Effect {
        let reason = Reason {
            class: "permanent",
            message: r.error.clone(),
            original_topic: failed.topic.clone(),
            attempts: r.attempts,
            first_failure: r.first_failure,
            drop_value: r.too_large,
        };
        let FailedMessage {
            key,
            payload,
            headers,
            ..
        } = failed;
        // When the message was too large, keep only the relay's own headers
        // (the row's may be what made it too large).
        let headers = if r.too_large {
            headers
                .into_iter()
                .take(crate::sink::message::RELAY_HEADER_COUNT)
                .collect()
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
            ..tag
        });
        // The original's slot in the tracker is released when this copy
        // (same transaction) is acknowledged.
        Effect::Send(self.dlq_message(dl), dtag)
    }

    fn dlq_message(&self, dl: DeadLetter) -> Box<FailedMessage> {
        Box::new(FailedMessage {
            error: SinkError::new(ErrorClass::Permanent, ""),
            topic: self.dlq_topic.clone(),
            key: dl.key,
            payload: dl.value,
            headers: dl.headers,
        })
    }
}

/// Record `error` for row `id` in the ledger (no attempt counted).
fn note<'a>(ledger: &'a mut Ledger, id: i64, error: &SinkError) -> &'a mut Refusal {
    let r = ledger.entry(id).or_insert_with(|| Refusal {
        attempts: 0,
        first_failure: SystemTime::now(),
        error: String::new(),
        too_large: false,
    });
    r.error = error.message.clone();
    r.too_large |= error.too_large;
    r
}

fn announce_block(row_id: Option<i64>, reason: &str) {
    let id = row_id
        .map(|i| i.to_string())
        .unwrap_or_else(|| "unknown".into());
    tracing::error!(
        row_id = %id,
        %reason,
        "stream blocked at outbox row id={id} (relay.on-permanent-error = \"block\"): \
         delete the row or fix the cause; the relay checks again with backoff"
    );
    metrics::gauge!(m::BLOCKED_ROW).set(row_id.unwrap_or(-1) as f64);
}

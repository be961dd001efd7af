//! Every LSN position of a session, and the one rule for what may be
//! persisted and confirmed.
//!
//! Positions, and how they relate (checked by `debug_assert!`s):
//!
//! * `resume_from` — the loaded checkpoint: the end LSN of the last durable
//!   commit. A transaction whose commit LSN is *strictly below* it was
//!   published; one whose commit starts exactly there is new.
//! * `durable` ([`AckTracker`], invariant 1) — everything up to it acked.
//! * `persisted` ≤ `durable` — written to the checkpoint table.
//! * `confirmed` ≤ max(`persisted`, rows-free positions) — reported to the
//!   slot, only after the table write that covers it (invariant 2).
//! * `idle` — newest keepalive/heartbeat position seen while nothing was
//!   open or in flight (invariant 5); confirmed, never written to the table.
//! * `server_wal_end` — newest position the server reported (lag).
//!
//! It also counts what sits in the producer (messages and bytes) for the
//! read window (invariant 6).

use crate::tracker::AckTracker;

/// The session's positions and in-flight counts.
#[derive(Debug)]
pub(crate) struct Progress {
    tracker: AckTracker,
    resume_from: u64,
    persisted: u64,
    confirmed: u64,
    idle: u64,
    server_wal_end: u64,
    /// Messages enqueued and not yet reported (the producer's own count).
    sink_msgs: usize,
    /// Their bytes.
    sink_bytes: usize,
}

/// The read window's bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// `kafka.max-in-flight`.
    pub messages: usize,
    /// `kafka.max-in-flight-bytes`.
    pub bytes: usize,
}

impl Progress {
    pub(crate) fn new(resume_from: u64) -> Self {
        Self {
            tracker: AckTracker::new(resume_from),
            resume_from,
            persisted: resume_from,
            confirmed: resume_from,
            idle: 0,
            server_wal_end: 0,
            sink_msgs: 0,
            sink_bytes: 0,
        }
    }

    /// Whether a transaction committed at `commit_lsn` was already published.
    pub(crate) fn skips(&self, commit_lsn: u64) -> bool {
        commit_lsn < self.resume_from
    }

    pub(crate) fn begin(&mut self, commit_unix_millis: i64) -> u64 {
        self.tracker.begin(commit_unix_millis)
    }

    pub(crate) fn commit(&mut self, seq: u64, end_lsn: u64) {
        self.tracker.commit(seq, end_lsn);
        self.debug_check();
    }

    /// One message of transaction `seq` will be published (or dead-lettered).
    pub(crate) fn sent(&mut self, seq: u64) {
        self.tracker.sent(seq);
    }

    /// That message is done: acked, or its DLQ copy acked, or its row gone.
    pub(crate) fn acked(&mut self, seq: u64) {
        self.tracker.acked(seq);
        self.debug_check();
    }

    /// A message of `bytes` went into the producer.
    pub(crate) fn enqueued(&mut self, bytes: usize) {
        self.sink_msgs += 1;
        self.sink_bytes += bytes;
    }

    /// The producer reported on a message of `bytes`.
    pub(crate) fn reported(&mut self, bytes: usize) {
        debug_assert!(self.sink_msgs > 0, "a report for nothing enqueued");
        self.sink_msgs = self.sink_msgs.saturating_sub(1);
        self.sink_bytes = self.sink_bytes.saturating_sub(bytes);
    }

    /// Messages inside the producer.
    pub(crate) fn outstanding(&self) -> usize {
        self.sink_msgs
    }

    /// A position the server reported.
    pub(crate) fn observe(&mut self, lsn: u64) {
        self.server_wal_end = self.server_wal_end.max(lsn);
    }

    /// A keepalive or heartbeat at `lsn`; `txn_open` while a transaction is
    /// being received.
    pub(crate) fn idle_at(&mut self, lsn: u64, txn_open: bool) {
        self.observe(lsn);
        if !txn_open && self.tracker.is_idle() {
            self.idle = self.idle.max(lsn);
        }
    }

    /// Whether the stream may be read (invariant 6 and the duplicate bound).
    ///
    /// Messages awaiting an ack and their bytes (memory), and messages sent
    /// since the last persisted checkpoint (what a crash would re-send). The
    /// last is waived when nothing can be persisted to free it — one open
    /// transaction larger than the window must still stream through — so a
    /// crash re-sends at most max(window, one transaction).
    pub(crate) fn window_open(&self, l: Limits) -> bool {
        let t = &self.tracker;
        t.in_flight() < l.messages
            && self.sink_bytes < l.bytes
            && (t.unpersisted() < l.messages
                || (t.open_transactions() <= 1 && !t.has_persistable()))
    }

    /// Write the checkpoint now rather than at the tick: only when a write
    /// frees a real share of the re-send window (a write per delivery
    /// report would starve the loop during catch-up), or the window is shut.
    pub(crate) fn wants_early_checkpoint(&self, l: Limits) -> bool {
        let t = &self.tracker;
        let worth_it =
            t.unpersisted() >= l.messages / 2 && t.persistable() >= (l.messages / 4).max(1);
        worth_it || (!self.window_open(l) && t.has_persistable())
    }

    /// The position to write to the checkpoint table, if rows were published
    /// since the last write (a write for row-free transactions would itself
    /// be WAL and feed an idle relay forever).
    pub(crate) fn to_persist(&self) -> Option<u64> {
        (self.tracker.durable_with_rows() > self.persisted).then(|| self.tracker.durable())
    }

    /// The table now holds `lsn`.
    pub(crate) fn persisted(&mut self, lsn: u64) {
        debug_assert!(lsn >= self.persisted, "checkpoint moved back");
        debug_assert!(
            lsn <= self.tracker.durable(),
            "persisted past the acked prefix"
        );
        self.persisted = lsn;
        self.tracker.persisted(lsn);
    }

    /// The confirm rule, written once: everything published up to `durable`
    /// is persisted, so `durable` (and an idle position) may be confirmed —
    /// what lies between `persisted` and `durable` had no outbox rows;
    /// otherwise only `persisted`.
    pub(crate) fn to_confirm(&self) -> Option<u64> {
        let safe = if self.persisted >= self.tracker.durable_with_rows() {
            self.tracker.durable().max(self.idle)
        } else {
            self.persisted
        };
        (safe > self.confirmed).then_some(safe)
    }

    /// The slot was told `lsn`.
    pub(crate) fn confirmed(&mut self, lsn: u64) {
        debug_assert!(lsn > self.confirmed);
        debug_assert!(
            lsn <= self.persisted || self.persisted >= self.tracker.durable_with_rows(),
            "confirmed a position with unpersisted rows below it"
        );
        self.confirmed = lsn;
    }

    pub(crate) fn persisted_lsn(&self) -> u64 {
        self.persisted
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.tracker.in_flight()
    }

    pub(crate) fn oldest_pending_commit_millis(&self) -> Option<i64> {
        self.tracker.oldest_pending_commit_millis()
    }

    /// WAL the server holds beyond what the relay has durably handled.
    pub(crate) fn lag_bytes(&self) -> u64 {
        let position = self.tracker.durable().max(self.idle).max(self.confirmed);
        self.server_wal_end.saturating_sub(position)
    }

    fn debug_check(&self) {
        debug_assert!(self.persisted <= self.tracker.durable());
        debug_assert!(self.tracker.durable_with_rows() <= self.tracker.durable());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        messages: 10,
        bytes: 1000,
    };

    #[test]
    fn commits_strictly_below_the_checkpoint_are_skipped() {
        let p = Progress::new(208);
        assert!(p.skips(200));
        assert!(!p.skips(208), "the next commit can start exactly there");
    }

    #[test]
    fn confirm_only_what_is_persisted_while_rows_are_unpersisted() {
        let mut p = Progress::new(0);
        let a = p.begin(0);
        p.sent(a);
        p.commit(a, 100);
        p.acked(a);
        assert_eq!(p.to_confirm(), None, "acked but not persisted");
        assert_eq!(p.to_persist(), Some(100));
        p.persisted(100);
        assert_eq!(p.to_confirm(), Some(100));
        p.confirmed(100);
        // A row-free transaction and an idle keepalive: confirm, no write.
        let b = p.begin(0);
        p.commit(b, 150);
        p.idle_at(180, false);
        assert_eq!(p.to_persist(), None);
        assert_eq!(p.to_confirm(), Some(180));
    }

    #[test]
    fn the_window_closes_on_bytes_too() {
        let mut p = Progress::new(0);
        let a = p.begin(0);
        p.sent(a);
        p.enqueued(999);
        assert!(p.window_open(L));
        p.sent(a);
        p.enqueued(1);
        assert!(!p.window_open(L), "1000 bytes in the producer");
        p.reported(1);
        assert!(p.window_open(L));
    }
}

//! Exactly-once positions: what may be written to the checkpoint table and
//! confirmed to the slot. Pure, no I/O.
//!
//! The resume position lives in Kafka (the progress record); these are only
//! the PostgreSQL-side echoes of it, for `status`, the janitor and the slot's
//! retained WAL. The rule, invariant 9: a PostgreSQL transaction counts as
//! published once every one of its inserts is in a *committed* Kafka
//! transaction — not when acked, not when enqueued.
//!
//! * `committed` — end LSN of the newest PostgreSQL transaction published
//!   whole (a transaction without outbox rows that ended while no Kafka
//!   transaction was open counts at once: nothing of it is in flight).
//! * `open_end` — the newest PostgreSQL transaction that ended inside the
//!   open Kafka transaction: it becomes `committed` when that commits.
//! * `persisted` ≤ `committed`, written to the table; `confirmed` ≤
//!   max(`persisted`, row-free positions), told to the slot after the table
//!   (the order of invariant 2, kept here too so `status` never shows a slot
//!   ahead of its table).
//! * `idle` — a keepalive/heartbeat position seen while neither a
//!   PostgreSQL nor a Kafka transaction was open (invariant 5).

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Positions {
    committed: u64,
    committed_with_rows: u64,
    open_end: Option<(u64, bool)>,
    persisted: u64,
    confirmed: u64,
    idle: u64,
    server_wal_end: u64,
}

impl Positions {
    /// Resuming at `lsn` (where the stream starts; the slot was told it).
    pub(crate) fn new(lsn: u64) -> Self {
        Self {
            committed: lsn,
            committed_with_rows: lsn,
            open_end: None,
            persisted: lsn,
            confirmed: lsn,
            idle: 0,
            server_wal_end: 0,
        }
    }

    /// A PostgreSQL transaction ended at `end`; `rows`: this session
    /// published rows of it; `kafka_open`: a Kafka transaction holds some.
    pub(crate) fn pg_commit(&mut self, end: u64, rows: bool, kafka_open: bool) {
        self.observe(end);
        if kafka_open {
            let rows = rows || self.open_end.is_some_and(|(_, r)| r);
            self.open_end = Some((end, rows));
        } else {
            self.committed = self.committed.max(end);
            if rows {
                self.committed_with_rows = self.committed;
            }
        }
    }

    /// The open Kafka transaction committed.
    pub(crate) fn kafka_committed(&mut self) {
        if let Some((end, rows)) = self.open_end.take() {
            self.committed = self.committed.max(end);
            if rows {
                self.committed_with_rows = self.committed;
            }
        }
    }

    /// The open Kafka transaction was aborted: what ended inside it is not
    /// published (the session ends; the next resumes from Kafka).
    pub(crate) fn kafka_aborted(&mut self) {
        self.open_end = None;
    }

    /// A position the server reported.
    pub(crate) fn observe(&mut self, lsn: u64) {
        self.server_wal_end = self.server_wal_end.max(lsn);
    }

    /// A keepalive or heartbeat at `lsn`; `busy` while a PostgreSQL or Kafka
    /// transaction is open.
    pub(crate) fn idle_at(&mut self, lsn: u64, busy: bool) {
        self.observe(lsn);
        if !busy && self.open_end.is_none() {
            self.idle = self.idle.max(lsn);
        }
    }

    /// The position to write to the checkpoint table, if rows were published
    /// since the last write.
    pub(crate) fn to_persist(&self) -> Option<u64> {
        (self.committed_with_rows > self.persisted).then_some(self.committed)
    }

    /// The table now holds `lsn`.
    pub(crate) fn persisted(&mut self, lsn: u64) {
        debug_assert!(
            lsn <= self.committed,
            "persisted past the committed position"
        );
        self.persisted = self.persisted.max(lsn);
    }

    /// What may be told to the slot now, if it moved.
    pub(crate) fn to_confirm(&self) -> Option<u64> {
        let safe = if self.persisted >= self.committed_with_rows {
            self.committed.max(self.idle)
        } else {
            self.persisted
        };
        (safe > self.confirmed).then_some(safe)
    }

    /// The slot was told `lsn`.
    pub(crate) fn confirmed(&mut self, lsn: u64) {
        self.confirmed = lsn;
    }

    /// WAL the server holds beyond what is published.
    pub(crate) fn lag_bytes(&self) -> u64 {
        let p = self.committed.max(self.idle).max(self.confirmed);
        self.server_wal_end.saturating_sub(p)
    }

    pub(crate) fn persisted_lsn(&self) -> u64 {
        self.persisted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_counts_before_the_kafka_commit() {
        let mut p = Positions::new(100);
        p.pg_commit(200, true, true);
        assert_eq!(p.to_persist(), None, "in an open Kafka transaction");
        p.idle_at(300, false);
        assert_eq!(p.to_confirm(), None, "no idle advance past an open one");
        p.kafka_committed();
        assert_eq!(p.to_persist(), Some(200));
        assert_eq!(p.to_confirm(), None, "table first");
        p.persisted(200);
        assert_eq!(p.to_confirm(), Some(200));
        p.confirmed(200);
        p.idle_at(300, false);
        assert_eq!(p.to_confirm(), Some(300));
    }

    #[test]
    fn an_aborted_transaction_publishes_nothing() {
        let mut p = Positions::new(100);
        p.pg_commit(200, true, true);
        p.kafka_aborted();
        p.kafka_committed();
        assert_eq!(p.to_persist(), None);
        assert_eq!(p.to_confirm(), None);
    }

    #[test]
    fn row_free_transactions_confirm_without_a_write() {
        let mut p = Positions::new(100);
        p.pg_commit(150, false, false);
        assert_eq!(p.to_persist(), None);
        assert_eq!(p.to_confirm(), Some(150));
    }
}

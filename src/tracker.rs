//! Acknowledgement bookkeeping: which commit LSN is durable.
//!
//! Invariant 1 (checkpoint after ack) lives here. The durable position is
//! the commit end-LSN of the newest transaction T such that every message of
//! T and of every earlier transaction was acknowledged by the broker. It is
//! never "the highest LSN seen": acks arrive out of order across partitions,
//! so a later transaction may be fully acked while an earlier one is not.
//!
//! Transactions are numbered in commit order (the order the stream delivers
//! them); each message carries its transaction's number to the producer and
//! back in the delivery report. Memory is one small entry per transaction
//! not yet durable, never one per message (invariant 6: a huge transaction
//! is a counter, not a buffer).

use std::collections::VecDeque;

#[derive(Debug)]
struct Txn {
    /// Messages handed to the producer and not yet acknowledged.
    pending: usize,
    /// Messages sent in total (0: the transaction had no outbox rows).
    sent: usize,
    /// Commit end-LSN, known once the Commit message arrived.
    end_lsn: Option<u64>,
    /// Commit time (Unix ms), for the lag-in-seconds metric.
    commit_unix_millis: i64,
}

/// Tracks transactions from Begin until all their messages are acked.
#[derive(Debug, Default)]
pub struct AckTracker {
    /// Sequence number of `txns[0]`.
    base: u64,
    txns: VecDeque<Txn>,
    durable: u64,
    durable_with_rows: u64,
    in_flight: usize,
    /// Durable transactions not yet covered by a persisted checkpoint:
    /// (end LSN, messages). A crash re-sends these.
    unpersisted_txns: VecDeque<(u64, usize)>,
    /// Messages a crash now would send again: everything sent since the last
    /// persisted checkpoint, acked or not.
    unpersisted: usize,
}

impl AckTracker {
    /// Start with a known durable position (the loaded checkpoint).
    pub fn new(durable: u64) -> Self {
        Self {
            durable,
            durable_with_rows: durable,
            ..Default::default()
        }
    }

    /// A transaction (committed at `commit_unix_millis`) began; returns its
    /// sequence number.
    pub fn begin(&mut self, commit_unix_millis: i64) -> u64 {
        let seq = self.base + self.txns.len() as u64;
        self.txns.push_back(Txn {
            pending: 0,
            sent: 0,
            end_lsn: None,
            commit_unix_millis,
        });
        seq
    }

    /// Commit time of the oldest transaction not yet durable.
    pub fn oldest_pending_commit_millis(&self) -> Option<i64> {
        self.txns.front().map(|t| t.commit_unix_millis)
    }

    /// One message of transaction `seq` was handed to the producer.
    pub fn sent(&mut self, seq: u64) {
        if let Some(t) = self.get_mut(seq) {
            t.pending += 1;
            t.sent += 1;
            self.in_flight += 1;
            self.unpersisted += 1;
        }
    }

    /// Transaction `seq` committed at `end_lsn`: no more messages will come.
    pub fn commit(&mut self, seq: u64, end_lsn: u64) {
        if let Some(t) = self.get_mut(seq) {
            t.end_lsn = Some(end_lsn);
        }
        self.advance();
    }

    /// The broker acknowledged one message of transaction `seq`.
    pub fn acked(&mut self, seq: u64) {
        if let Some(t) = self.get_mut(seq) {
            if t.pending > 0 {
                t.pending -= 1;
                self.in_flight -= 1;
            }
        }
        self.advance();
    }

    /// Commit end-LSN up to which everything is acknowledged.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Like [`durable`](Self::durable) but only counting transactions that
    /// published something: the checkpoint table is written when this moves,
    /// so transactions without outbox rows never cause a write (which would
    /// itself be WAL and could feed an idle relay forever).
    pub fn durable_with_rows(&self) -> u64 {
        self.durable_with_rows
    }

    /// The checkpoint table now holds `lsn`: transactions up to it will not
    /// be re-sent after a crash.
    pub fn persisted(&mut self, lsn: u64) {
        while let Some(&(end, n)) = self.unpersisted_txns.front() {
            if end > lsn {
                break;
            }
            self.unpersisted -= n;
            self.unpersisted_txns.pop_front();
        }
    }

    /// Messages sent since the last persisted checkpoint: the duplicates a
    /// crash right now would cause.
    pub fn unpersisted(&self) -> usize {
        self.unpersisted
    }

    /// Whether persisting [`durable`](Self::durable) would shrink
    /// [`unpersisted`](Self::unpersisted).
    pub fn has_persistable(&self) -> bool {
        !self.unpersisted_txns.is_empty()
    }

    /// Messages a checkpoint write now would take out of the re-send window.
    pub fn persistable(&self) -> usize {
        self.unpersisted_txns.iter().map(|(_, n)| n).sum()
    }

    /// Messages not yet acknowledged, across all transactions.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// No transaction is open or waiting for acks.
    pub fn is_idle(&self) -> bool {
        self.txns.is_empty()
    }

    /// Transactions not yet durable (open or waiting for acks).
    pub fn open_transactions(&self) -> usize {
        self.txns.len()
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut Txn> {
        let idx = seq.checked_sub(self.base)?;
        self.txns.get_mut(usize::try_from(idx).ok()?)
    }

    fn advance(&mut self) {
        while let Some(front) = self.txns.front() {
            match front.end_lsn {
                Some(end) if front.pending == 0 => {
                    self.durable = self.durable.max(end);
                    if front.sent > 0 {
                        self.durable_with_rows = self.durable_with_rows.max(end);
                        self.unpersisted_txns.push_back((end, front.sent));
                    }
                    self.txns.pop_front();
                    self.base += 1;
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_acks_wait_for_earlier_transactions() {
        let mut t = AckTracker::new(5);
        let a = t.begin(0);
        t.sent(a);
        t.sent(a);
        t.commit(a, 100);
        let b = t.begin(0);
        t.sent(b);
        t.commit(b, 200);
        // b fully acked first: nothing durable yet
        t.acked(b);
        assert_eq!(t.durable(), 5);
        t.acked(a);
        assert_eq!(t.durable(), 5);
        t.acked(a);
        assert_eq!(t.durable(), 200);
        assert_eq!(t.in_flight(), 0);
        assert!(t.is_idle());
    }

    #[test]
    fn open_transaction_blocks_even_when_acked() {
        let mut t = AckTracker::new(0);
        let a = t.begin(0);
        t.sent(a);
        t.acked(a);
        assert_eq!(t.durable(), 0, "not committed yet: more rows may come");
        t.commit(a, 50);
        assert_eq!(t.durable(), 50);
    }

    #[test]
    fn empty_transactions_advance_durable_but_not_rows() {
        let mut t = AckTracker::new(10);
        let a = t.begin(0);
        t.commit(a, 20);
        assert_eq!(t.durable(), 20);
        assert_eq!(t.durable_with_rows(), 10);
        let b = t.begin(0);
        t.sent(b);
        t.commit(b, 30);
        t.acked(b);
        assert_eq!(t.durable_with_rows(), 30);
    }

    #[test]
    fn unpersisted_counts_until_the_checkpoint_covers_it() {
        let mut t = AckTracker::new(0);
        let a = t.begin(0);
        t.sent(a);
        t.sent(a);
        t.commit(a, 10);
        let b = t.begin(0);
        t.sent(b);
        assert_eq!(t.unpersisted(), 3);
        t.acked(a);
        t.acked(a);
        assert!(t.has_persistable());
        t.persisted(t.durable());
        assert_eq!(t.unpersisted(), 1, "b is still open");
        assert!(!t.has_persistable());
        t.commit(b, 20);
        t.acked(b);
        t.persisted(20);
        assert_eq!(t.unpersisted(), 0);
    }

    #[test]
    fn stray_acks_are_ignored() {
        let mut t = AckTracker::new(0);
        t.acked(99);
        let a = t.begin(0);
        t.commit(a, 1);
        t.acked(a);
        assert_eq!(t.durable(), 1);
        assert_eq!(t.in_flight(), 0);
    }

    /// Random interleavings: durable never exceeds the end LSN of the newest
    /// transaction whose prefix is fully acked.
    #[test]
    fn randomized_prefix_property() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let mut t = AckTracker::new(0);
            let n = (rnd() % 20 + 1) as usize;
            let mut unacked: Vec<(u64, usize)> = Vec::new();
            let mut sizes = Vec::new();
            for i in 0..n {
                let s = t.begin(0);
                let k = (rnd() % 4) as usize;
                for _ in 0..k {
                    t.sent(s);
                    unacked.push((s, i));
                }
                t.commit(s, (i as u64 + 1) * 10);
                sizes.push(k);
            }
            let mut remaining = sizes.clone();
            while !unacked.is_empty() {
                let j = (rnd() as usize) % unacked.len();
                let (s, i) = unacked.swap_remove(j);
                t.acked(s);
                remaining[i] -= 1;
                let prefix = remaining.iter().take_while(|r| **r == 0).count();
                let expect = if prefix == 0 { 0 } else { prefix as u64 * 10 };
                assert_eq!(t.durable(), expect);
            }
            assert_eq!(t.durable(), n as u64 * 10);
        }
    }
}

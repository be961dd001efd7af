//! The comparison itself, pure: window rows in, broker messages in, findings
//! out. No I/O, so every rule is unit-tested with hand-made fixtures.
//!
//! Memory does not grow with the number of messages read, only with the
//! window's id span and with what is found:
//!
//! * three bitsets over the window's id span `lo..=hi` — row is in the
//!   window, seen on a main topic, seen in the DLQ — 3 bits per id
//!   (2 million ids: 750 KB);
//! * a count per duplicated id, the largest `(commit LSN, id)` per partition;
//! * listed findings, each list capped at [`LIST_LIMIT`] entries (the counts
//!   stay exact).
//!
//! Rules:
//!
//! * **missing**: a window row seen neither on its topic nor in the DLQ.
//!   Rows seen only in the DLQ count as dead-lettered, not missing.
//! * **duplicate**: a window row seen more than once on the main topics.
//! * **reordered**: in a partition, the first delivery of a window row whose
//!   `(commit LSN, id)` is below that of an earlier message of the same
//!   partition. Repeated deliveries (re-sends after a crash replay what was
//!   already there) and replays (`lsn` = `replay`, re-published on purpose)
//!   are left out. Every message that arrives after one that should have
//!   come after it counts once.
//! * **foreign**: a message without the relay's `id` and `lsn` headers, or
//!   one whose id lies in the window's id span (or above it, for an
//!   open-ended window) and matches no row of the table. Ids the ledger
//!   cannot settle alone are returned as [`Seen::Lookup`] for the caller to
//!   look up in the table; ids below the span (older than the window) are
//!   not judged.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

/// Longest list of each kind of finding kept (counts stay exact).
pub const LIST_LIMIT: usize = 1000;

/// Most ids a window may span: 3 bits each, so 96 MiB at this bound.
pub const MAX_SPAN: u64 = 1 << 28;

/// The `lsn` header of a relay message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LsnTag {
    /// Commit LSN of the row's transaction.
    Commit(u64),
    /// `dlq replay`: re-published on purpose, out of commit order.
    Replay,
}

impl LsnTag {
    /// Parse the header value.
    pub fn parse(v: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(v).ok()?;
        if s == "replay" {
            return Some(Self::Replay);
        }
        crate::sink::message::parse_lsn(s).map(Self::Commit)
    }
}

/// Where a message is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Position {
    /// Topic name (shared by every position in it).
    #[serde(serialize_with = "shared_str")]
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

fn shared_str<S: serde::Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s)
}

/// A message's relay headers, as far as they parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relay {
    /// The `id` header.
    pub id: Option<i64>,
    /// The `lsn` header.
    pub lsn: Option<LsnTag>,
}

/// What the ledger made of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Counted against a window row.
    Counted,
    /// Not the window's (older, or outside `--ids`): not judged.
    Outside,
    /// Foreign: recorded.
    Foreign,
    /// Needs a table lookup: report it with [`Ledger::unmatched`] if no row
    /// has this id.
    Lookup(i64),
}

/// An order violation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Where the late message is.
    #[serde(flatten)]
    pub at: Position,
    /// Its row id.
    pub id: i64,
    /// Its commit LSN (`X/Y`).
    pub lsn: String,
    /// The row id of the earlier message it should have preceded.
    pub after_id: i64,
    /// That message's commit LSN.
    pub after_lsn: String,
}

/// A message that matches no row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Foreign {
    /// Where it is.
    #[serde(flatten)]
    pub at: Position,
    /// Its `id` header, if it had a numeric one.
    pub id: Option<i64>,
    /// Why it is foreign.
    pub reason: &'static str,
}

/// A list capped at [`LIST_LIMIT`] with an exact count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capped<T> {
    /// How many there are.
    pub count: u64,
    /// The first [`LIST_LIMIT`] of them.
    pub items: Vec<T>,
    /// Whether `items` was cut short.
    pub truncated: bool,
}

impl<T> Default for Capped<T> {
    fn default() -> Self {
        Self {
            count: 0,
            items: Vec::new(),
            truncated: false,
        }
    }
}

impl<T> Capped<T> {
    fn push(&mut self, item: T) {
        self.count += 1;
        if self.items.len() < LIST_LIMIT {
            self.items.push(item);
        } else {
            self.truncated = true;
        }
    }
}

/// A duplicated row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Duplicate {
    /// Row id.
    pub id: i64,
    /// Deliveries on the main topics (≥ 2).
    pub count: u32,
}

/// Everything the comparison found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Findings {
    /// Rows in the window.
    pub rows: u64,
    /// Messages judged (window rows, foreign, looked up).
    pub messages: u64,
    /// Window rows not on the broker: ranges of consecutive ids (inclusive),
    /// count in rows.
    pub missing: Capped<[i64; 2]>,
    /// Window rows found only in the DLQ.
    pub dead_lettered: u64,
    /// Rows delivered more than once; `count` in rows.
    pub duplicates: Capped<Duplicate>,
    /// Extra deliveries in total (sum of count − 1).
    pub duplicate_messages: u64,
    /// Order violations.
    pub reordered: Capped<Violation>,
    /// Messages that match no row.
    pub foreign: Capped<Foreign>,
    /// Deliveries marked as replays (not order-checked).
    pub replays: u64,
}

struct BitSet(Vec<u64>);

impl BitSet {
    fn new(bits: u64) -> Self {
        Self(vec![0; bits.div_ceil(64) as usize])
    }

    fn get(&self, i: u64) -> bool {
        self.0[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Set bit `i`; returns whether it was set before.
    fn set(&mut self, i: u64) -> bool {
        let w = &mut self.0[(i / 64) as usize];
        let mask = 1 << (i % 64);
        let was = *w & mask != 0;
        *w |= mask;
        was
    }
}

/// Per-id state of one verification.
pub struct Ledger {
    lo: i64,
    hi: i64,
    open_ended: bool,
    in_window: BitSet,
    seen: BitSet,
    dlq: BitSet,
    counts: HashMap<i64, u32>,
    /// Largest `(commit LSN, id)` delivered first so far, per partition.
    high: HashMap<(Arc<str>, i32), (u64, i64)>,
    findings: Findings,
}

impl Ledger {
    /// A ledger for window rows with ids in `lo..=hi` (empty when
    /// `lo > hi`). `open_ended`: rows may be added above `hi` while we read
    /// (no upper bound on the window), so ids above it are looked up.
    pub fn new(lo: i64, hi: i64, open_ended: bool) -> Result<Self, String> {
        let span = if hi >= lo {
            (i128::from(hi) - i128::from(lo) + 1) as u128
        } else {
            0
        };
        if span > u128::from(MAX_SPAN) {
            return Err(format!(
                "the window's ids span {span} values (from {lo} to {hi}), over {MAX_SPAN}: narrow it with --ids or --since"
            ));
        }
        Ok(Self {
            lo,
            hi,
            open_ended,
            in_window: BitSet::new(span as u64),
            seen: BitSet::new(span as u64),
            dlq: BitSet::new(span as u64),
            counts: HashMap::new(),
            high: HashMap::new(),
            findings: Findings::default(),
        })
    }

    fn index(&self, id: i64) -> Option<u64> {
        (self.lo <= id && id <= self.hi).then(|| (id - self.lo) as u64)
    }

    /// A row of the window. Ids outside `lo..=hi` are ignored.
    pub fn add_row(&mut self, id: i64) {
        if let Some(i) = self.index(id) {
            if !self.in_window.set(i) {
                self.findings.rows += 1;
            }
        }
    }

    /// A message from a main topic.
    pub fn observe(&mut self, at: &Position, relay: Relay) -> Seen {
        let (Some(id), Some(lsn)) = (relay.id, relay.lsn) else {
            self.findings.messages += 1;
            self.foreign(at, relay.id, "no relay id and lsn headers");
            return Seen::Foreign;
        };
        let Some(i) = self.index(id) else {
            if id > self.hi && self.open_ended {
                self.findings.messages += 1;
                return Seen::Lookup(id);
            }
            return Seen::Outside;
        };
        if !self.in_window.get(i) {
            self.findings.messages += 1;
            return Seen::Lookup(id);
        }
        self.findings.messages += 1;
        if self.seen.set(i) {
            let c = self.counts.entry(id).or_insert(1);
            *c += 1;
            return Seen::Counted;
        }
        let LsnTag::Commit(lsn) = lsn else {
            self.findings.replays += 1;
            return Seen::Counted;
        };
        let key = (at.topic.clone(), at.partition);
        match self.high.get_mut(&key) {
            Some(high) if (lsn, id) < *high => {
                let (after_lsn, after_id) = *high;
                self.findings.reordered.push(Violation {
                    at: at.clone(),
                    id,
                    lsn: crate::sink::message::format_lsn(lsn),
                    after_id,
                    after_lsn: crate::sink::message::format_lsn(after_lsn),
                });
            }
            Some(high) => *high = (lsn, id),
            None => {
                self.high.insert(key, (lsn, id));
            }
        }
        Seen::Counted
    }

    /// A message from the DLQ topic: only its id matters.
    pub fn observe_dlq(&mut self, id: Option<i64>) {
        if let Some(i) = id.and_then(|id| self.index(id)) {
            self.dlq.set(i);
        }
    }

    /// A [`Seen::Lookup`] message whose id matches no row of the table.
    pub fn unmatched(&mut self, at: &Position, id: i64) {
        self.foreign(at, Some(id), "no row with this id");
    }

    fn foreign(&mut self, at: &Position, id: Option<i64>, reason: &'static str) {
        self.findings.foreign.push(Foreign {
            at: at.clone(),
            id,
            reason,
        });
    }

    /// Settle missing rows and duplicates.
    pub fn finish(mut self) -> Findings {
        let span = if self.hi >= self.lo {
            (self.hi - self.lo) as u64 + 1
        } else {
            0
        };
        let mut run: Option<[i64; 2]> = None;
        for i in 0..span {
            let missing = self.in_window.get(i) && !self.seen.get(i);
            if missing && self.dlq.get(i) {
                self.findings.dead_lettered += 1;
            }
            let id = self.lo + i as i64;
            if missing && !self.dlq.get(i) {
                self.findings.missing.count += 1;
                match &mut run {
                    Some(r) => r[1] = id,
                    None => run = Some([id, id]),
                }
            } else if let Some(r) = run.take() {
                push_range(&mut self.findings.missing, r);
            }
        }
        if let Some(r) = run {
            push_range(&mut self.findings.missing, r);
        }
        let mut dups: Vec<(i64, u32)> = self.counts.into_iter().collect();
        dups.sort_unstable();
        for (id, count) in dups {
            self.findings.duplicate_messages += u64::from(count - 1);
            self.findings.duplicates.push(Duplicate { id, count });
        }
        self.findings
    }
}

/// Add a range to the list without touching the row count.
fn push_range(list: &mut Capped<[i64; 2]>, r: [i64; 2]) {
    if list.items.len() < LIST_LIMIT {
        list.items.push(r);
    } else {
        list.truncated = true;
    }
}

#[cfg(test)]
mod tests;

//! A test-only fault hook: crash the process at a named point, so the
//! exactly-once tests can kill the relay deterministically at each
//! dangerous moment (before the Kafka commit, between it and the checkpoint
//! write, before the slot confirm, in the middle of a split transaction).
//!
//! `OUTBOX_RELAY_TEST_FAULT=<point>:<n>` makes the `n`th pass through
//! `point` (1-based) call [`std::process::abort`] — as abrupt as `kill -9`:
//! no destructor, no flush, no goodbye to the broker or PostgreSQL. Unset (as
//! in production) a pass costs one relaxed atomic load. Read once, at the
//! first pass.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable naming the fault (not a configuration key).
pub const ENV: &str = "OUTBOX_RELAY_TEST_FAULT";

/// The points the relay passes, in the order of one exactly-once commit.
pub mod point {
    /// The progress record is enqueued; `commit_transaction` not yet called.
    pub const BEFORE_KAFKA_COMMIT: &str = "before-kafka-commit";
    /// `commit_transaction` returned; the checkpoint table not yet written.
    pub const AFTER_KAFKA_COMMIT: &str = "after-kafka-commit";
    /// The checkpoint table was written; the slot not yet told.
    pub const BEFORE_SLOT_CONFIRM: &str = "before-slot-confirm";
    /// A Kafka transaction that ended inside a PostgreSQL transaction (a
    /// split) committed.
    pub const MID_SPLIT: &str = "mid-split";
}

struct Fault {
    point: String,
    at: u64,
    passes: AtomicU64,
}

fn fault() -> Option<&'static Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    FAULT
        .get_or_init(|| {
            let v = std::env::var(ENV).ok()?;
            let (point, n) = v.rsplit_once(':').unwrap_or((v.as_str(), "1"));
            Some(Fault {
                point: point.to_string(),
                at: n.parse().unwrap_or(1),
                passes: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Pass `point`: aborts the process when the configured fault says so.
pub fn hit(point: &str) {
    let Some(f) = fault() else { return };
    if f.point != point {
        return;
    }
    if f.passes.fetch_add(1, Ordering::Relaxed) + 1 == f.at {
        eprintln!("outbox-relay: test fault {point}:{}: aborting", f.at);
        std::process::abort();
    }
}

//! Where the relay's durable position lives.
//!
//! Invariant 2 (persist, then confirm): the relay calls
//! [`CheckpointStore::save`] and only after it returned `Ok` reports the
//! position to the replication slot. A restart resumes from
//! [`CheckpointStore::load`]. The stored value is the *end* LSN of the last
//! durable commit, so a restart skips transactions whose commit LSN is
//! strictly below it: the next transaction's commit record can start exactly
//! at that end LSN, and "at or below" would drop it.

mod memory;
mod postgres;

use std::future::Future;

pub use memory::MemoryStore;
pub use postgres::PgCheckpointStore;

use crate::error::Result;

/// Durable, monotonic storage of one LSN.
///
/// Contract for implementors:
/// * `save` returns `Ok` only once the position survives a crash of this
///   process.
/// * Positions never go backwards: saving an LSN lower than the stored one
///   is a successful no-op (a stale writer can never undo progress).
pub trait CheckpointStore: Send + Sync {
    /// The stored position, `None` before the first save.
    fn load(&self) -> impl Future<Output = Result<Option<u64>>> + Send;
    /// Store `lsn` if it is higher than what is stored.
    fn save(&self, lsn: u64) -> impl Future<Output = Result<()>> + Send;
}

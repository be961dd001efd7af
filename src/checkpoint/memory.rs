//! In-memory store for tests of the relay loop without a database.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::CheckpointStore;
use crate::error::Result;

/// Keeps the position in an atomic; `0` means never saved.
#[derive(Clone, Default)]
pub struct MemoryStore {
    lsn: Arc<AtomicU64>,
}

impl MemoryStore {
    /// Current stored value (0 if none).
    pub fn get(&self) -> u64 {
        self.lsn.load(Ordering::SeqCst)
    }
}

impl CheckpointStore for MemoryStore {
    async fn load(&self) -> Result<Option<u64>> {
        Ok(Some(self.get()).filter(|v| *v != 0))
    }

    async fn save(&self, lsn: u64) -> Result<()> {
        self.lsn.fetch_max(lsn, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn monotonic() {
        let s = MemoryStore::default();
        assert_eq!(s.load().await.unwrap(), None);
        s.save(10).await.unwrap();
        s.save(5).await.unwrap();
        assert_eq!(s.load().await.unwrap(), Some(10));
    }
}

//! Liveness and readiness, shared between the relay loop (which knows) and
//! the HTTP endpoint (which tells).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Readiness facts, cheap to update from any task.
#[derive(Debug, Default)]
pub struct Health {
    stream_up: AtomicBool,
    broker_ok: AtomicBool,
}

/// Shared handle.
pub type SharedHealth = Arc<Health>;

impl Health {
    /// A new handle, not ready.
    pub fn shared() -> SharedHealth {
        Arc::new(Health::default())
    }

    /// The replication stream started (true) or ended (false).
    pub fn set_stream_up(&self, up: bool) {
        self.stream_up.store(up, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::STREAM_UP).set(if up { 1.0 } else { 0.0 });
    }

    /// A broker answered (true) or all brokers are down (false).
    pub fn set_broker_ok(&self, ok: bool) {
        self.broker_ok.store(ok, Ordering::Relaxed);
    }

    /// Stream running and broker reachable: what `/readyz` reports.
    pub fn is_ready(&self) -> bool {
        self.stream_up.load(Ordering::Relaxed) && self.broker_ok.load(Ordering::Relaxed)
    }

    /// Stream state alone.
    pub fn stream_up(&self) -> bool {
        self.stream_up.load(Ordering::Relaxed)
    }

    /// Broker state alone.
    pub fn broker_ok(&self) -> bool {
        self.broker_ok.load(Ordering::Relaxed)
    }
}

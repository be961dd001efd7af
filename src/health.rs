//! Liveness and readiness, shared between the relay loop (which knows) and
//! the HTTP endpoint (which tells).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

/// Readiness facts, cheap to update from any task.
#[derive(Debug, Default)]
pub struct Health {
    stream_up: AtomicBool,
    broker_ok: AtomicBool,
    /// 0: no election (HA off, or not decided yet), 1: standby, 2: leader.
    role: AtomicU8,
    /// A standby's lock connection answers.
    standby_ok: AtomicBool,
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

    /// Leader (`Some(true)`), standby (`Some(false)`) or no election
    /// (`None`); sets `outbox_relay_leader`.
    pub fn set_leader(&self, leader: Option<bool>) {
        let v = match leader {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        };
        self.role.store(v, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::LEADER).set(if v == 1 { 0.0 } else { 1.0 });
        if v == 1 {
            // A standby publishes nothing, so it measures no lag: the values a
            // former leader last set would go stale — and keep its
            // OutboxRelayLagHigh firing and the dashboard's max() showing them
            // beside the new leader's real lag.
            metrics::gauge!(crate::metrics::LAG_SECONDS).set(0.0);
            metrics::gauge!(crate::metrics::LAG_BYTES).set(0.0);
        }
    }

    /// Leader (`Some(true)`), standby (`Some(false)`), or no election.
    pub fn leader(&self) -> Option<bool> {
        match self.role.load(Ordering::Relaxed) {
            1 => Some(false),
            2 => Some(true),
            _ => None,
        }
    }

    /// A standby's lock connection answered (true) or failed (false).
    pub fn set_standby_ok(&self, ok: bool) {
        self.standby_ok.store(ok, Ordering::Relaxed);
    }

    /// What `/readyz` reports: a leader (or a relay without election) is
    /// ready with its stream running and a broker reachable; a standby is
    /// ready while its lock connection answers and a broker is reachable —
    /// it is healthy and able to take over, so a load balancer or a rolling
    /// update must not count it as failed.
    pub fn is_ready(&self) -> bool {
        let broker = self.broker_ok.load(Ordering::Relaxed);
        match self.leader() {
            Some(false) => broker && self.standby_ok.load(Ordering::Relaxed),
            _ => self.stream_up.load(Ordering::Relaxed) && broker,
        }
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

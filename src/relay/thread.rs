//! The session runs on a thread of its own, on a single-threaded runtime.
//!
//! Why: a replication session is one pipeline — the replication worker
//! (pgwire-replication's task reading the socket) hands each event to the
//! loop through a bounded channel, the loop hands messages to librdkafka and
//! takes its delivery reports back. On the process's multi-threaded runtime
//! the worker task and the loop sit on different threads, so every event
//! crossed threads: the receiver parked and was woken through a futex per
//! event, and once the channel was full the worker was woken per freed slot
//! (one event per wake-up, a timer armed each time). A profile of catch-up
//! showed half the relay's CPU in the scheduler (`finish_task_switch`,
//! `try_to_wake_up`) and catch-up ran in two modes, one three times costlier.
//!
//! On one thread the worker and the loop take turns: the loop drains what is
//! ready (up to tokio's cooperative budget) before it yields, and the worker
//! then refills the channel in a burst without a wake-up in between. The
//! checkpoint's PostgreSQL connection lives on the same runtime. Everything
//! else — the HTTP endpoint, the leader lease, the janitor — stays on the
//! process runtime, so a busy session never delays a lease renewal.
//!
//! Fencing is unchanged: the lease's watch channel and the lock connection's
//! client are runtime-agnostic (channels to tasks on the process runtime),
//! and the session future is still dropped on the spot when the fence fires.

use tokio::sync::{oneshot, watch};

use super::{run_session_here, SessionEnd, SessionStats};
use crate::config::Config;
use crate::error::{RelayError, Result};
use crate::health::SharedHealth;
use crate::leader::Leadership;

/// [`run_session_here`] on a new thread with its own current-thread runtime;
/// `stats` travel there and back.
pub async fn run_session(
    cfg: &Config,
    health: &SharedHealth,
    shutdown: &mut watch::Receiver<bool>,
    stats: &mut SessionStats,
    leader: Option<Leadership>,
) -> Result<SessionEnd> {
    let (cfg2, health2, mut shutdown2) = (cfg.clone(), health.clone(), shutdown.clone());
    let mut moved = std::mem::take(stats);
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("relay-session".into())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(run_session_here(
                    &cfg2,
                    &health2,
                    &mut shutdown2,
                    &mut moved,
                    leader,
                )),
                Err(e) => Err(RelayError::Environment(format!(
                    "cannot start the session's runtime: {e}"
                ))),
            };
            let _ = tx.send((result, moved));
        })
        .map_err(|e| RelayError::Environment(format!("cannot start the session thread: {e}")))?;
    let (result, moved) = rx
        .await
        .map_err(|_| RelayError::Environment("the session thread panicked".into()))?;
    *stats = moved;
    result
}

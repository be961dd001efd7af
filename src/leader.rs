//! Leader election through PostgreSQL: one relay produces per slot, the
//! others stand by (invariant 10, *one producer per slot*).
//!
//! ## The lock
//!
//! A session-level advisory lock, `pg_try_advisory_lock(hashtext('outbox-relay:' || slot))`,
//! held on a dedicated connection. The key is derived from the slot name
//! **only** — not from the host, the version, the config file or the user —
//! so every relay that could open this slot contends for the same key (two
//! leaders with different lock keys is how others failed). Advisory locks
//! are per database, and a logical slot belongs to one database, so the
//! scope matches. `status` finds the holder through `pg_locks`.
//!
//! The lock connection uses TCP keepalives on the client side and, on the
//! server side, `idle_session_timeout = lease` and `tcp_keepalives_*` /
//! `tcp_user_timeout`, so a leader cut off from PostgreSQL loses its lock
//! within about one lease instead of holding it for hours.
//!
//! ## The lease and the fencing argument
//!
//! The leader renews its lease every `lease/4` with a cheap query (`SELECT 1`)
//! on the lock connection. A renewal sent at `s` that succeeds proves the
//! lock was held when the server ran it (a session lock lives as long as the
//! session), and extends the lease to `s + lease`. When the lease runs out
//! (the query failed or did not answer in time), the leader is *fenced*: the
//! session future is dropped at once, which purges the producer (queued and
//! in-flight messages) and drops the replication stream
//! ([`crate::relay::run_session`]). It then goes back to standing by.
//!
//! A standby that wins the lock at `a` knows the old leader's lock was gone
//! by then, so its last successful renewal was sent at some `s ≤ a`, and it
//! stopped producing by `s + lease`. The standby waits
//! [`grace`] = `lease + lease/4` after `a` before it opens the stream
//! (the quarter is slack for scheduling the fence). So the old leader's last
//! message was handed over before the new leader's first: two producers
//! never overlap. What this does not cover, in at-least-once mode, is a
//! produce request already on the wire to the broker when the lease ran out
//! and delayed longer than the slack; exactly-once mode fences that at the
//! broker with the transactional id.
//!
//! After the grace period, a slot still `active` belongs to a walsender of
//! the old leader (it can no longer be streaming to anyone who produces):
//! the new leader ends it with `pg_terminate_backend` — only then, and only
//! because it holds the lock — instead of waiting for `wal_sender_timeout`.
//!
//! Standbys never call `START_REPLICATION` and never write the checkpoint
//! table: they only run the lock query.
//!
//! A graceful stop of the leader drains, persists, then releases the lock
//! at once (`pg_advisory_unlock_all`, then closing the connection);
//! standbys poll every `ha.poll-interval`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_postgres::Client;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::{RelayError, Result};
use crate::health::SharedHealth;
use crate::source::control;

/// Fixed prefix of the lock key; the rest is the slot name.
pub const LOCK_PREFIX: &str = "outbox-relay:";

/// SQL expression for the lock key, with the slot as `$1`.
pub const LOCK_KEY_SQL: &str = "hashtext('outbox-relay:' || $1)::bigint";

/// Whether this process may do leader-only housekeeping (janitor,
/// heartbeat). True without HA.
static ACTING: AtomicBool = AtomicBool::new(true);

/// True unless this process is a standby (the janitor and heartbeat skip
/// their work on standbys).
pub fn may_act() -> bool {
    ACTING.load(Ordering::Relaxed)
}

/// `host:pid:start-ms`: names this process in the `relay_instance` header,
/// logs and `status`.
pub fn instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let start = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!("{}:{}:{start}", hostname(), std::process::id())
    })
}

/// This host's name (no libc call: the kernel's, or `HOSTNAME`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// How long a standby that won the lock waits before opening the stream.
pub fn grace(cfg: &Config) -> Duration {
    cfg.ha.lease + cfg.ha.lease / 4
}

/// Role word in the lock connection's `application_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Waiting for the lock.
    Standby,
    /// Holding the lock.
    Leader,
}

impl Role {
    fn word(self) -> &'static str {
        match self {
            Role::Standby => "standby",
            Role::Leader => "leader",
        }
    }
}

/// `outbox-relay <role> <slot> <host>:<pid> <since-unix>`, cut to
/// PostgreSQL's 63 bytes (the host is shortened first). `status` parses it.
pub fn application_name(role: Role, slot: &str, since_unix: u64) -> String {
    let pid = std::process::id();
    let mut host = hostname();
    loop {
        let name = format!(
            "outbox-relay {} {slot} {host}:{pid} {since_unix}",
            role.word()
        );
        if name.len() <= 63 || host.is_empty() {
            return name.chars().take(63).collect();
        }
        host.pop();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Held leadership: the lock connection and its renewal task.
pub struct Lease {
    client: std::sync::Arc<Client>,
    fenced: watch::Receiver<bool>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Becomes true (or closes) when the lease ran out: stop producing now.
    pub fn fence(&self) -> watch::Receiver<bool> {
        self.fenced.clone()
    }

    /// Whether the lease already ran out.
    pub fn is_fenced(&self) -> bool {
        *self.fenced.borrow()
    }

    /// Give the lock up at once (graceful stop or after a fence).
    pub async fn release(self) {
        self.renewer.abort();
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            self.client.batch_execute("SELECT pg_advisory_unlock_all()"),
        )
        .await;
        // Dropping the last client handle closes the connection.
    }
}

/// Wait as a standby until this process holds the lock and the grace period
/// passed; `Ok(None)` when `stop` came first. Connection failures while
/// standing by are retried with backoff (a standby is not broken because
/// PostgreSQL restarted).
pub async fn acquire(
    cfg: &Config,
    health: &SharedHealth,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Lease>> {
    let mut backoff = Backoff::new(cfg.relay.backoff_initial, cfg.relay.backoff_max);
    let mut announced = false;
    loop {
        if *stop.borrow() {
            return Ok(None);
        }
        match try_acquire(cfg, health, stop, &mut announced).await {
            Ok(Some(lease)) => return Ok(Some(lease)),
            Ok(None) => return Ok(None),
            Err(e) if e.class() == crate::error::ErrorClass::Fatal => return Err(e),
            Err(e) => {
                health.set_standby_ok(false);
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "leader election: lock connection failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

/// One lock connection: poll until won, then grace; `Err` when the
/// connection failed.
async fn try_acquire(
    cfg: &Config,
    health: &SharedHealth,
    stop: &mut watch::Receiver<bool>,
    announced: &mut bool,
) -> Result<Option<Lease>> {
    let slot = &cfg.postgres.slot;
    let lease = cfg.ha.lease;
    let client = control::connect_tuned(
        cfg,
        "leader election",
        &application_name(Role::Standby, slot, unix_now()),
        |pg| {
            pg.keepalives(true)
                .keepalives_idle(lease.max(Duration::from_secs(1)))
                .keepalives_interval(Duration::from_secs(1))
                .keepalives_retries(3);
        },
    )
    .await?;
    // The server's side of the lease: a lock session that stops talking is
    // ended (and its lock freed) after one lease. Each is best effort (older
    // servers lack idle_session_timeout).
    let ms = lease.as_millis();
    let secs = lease.as_secs().max(1);
    for set in [
        format!("SET idle_session_timeout = {ms}"),
        format!("SET tcp_user_timeout = {ms}"),
        format!("SET tcp_keepalives_idle = {secs}"),
        "SET tcp_keepalives_interval = 1".to_string(),
        "SET tcp_keepalives_count = 3".to_string(),
    ] {
        if let Err(e) = client.batch_execute(&set).await {
            tracing::debug!(error = %e, "leader election: {set} not applied");
        }
    }
    let mut poll = tokio::time::interval(cfg.ha.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return Ok(None);
        }
        let row = tokio::time::timeout(
            lease,
            client.query_one(
                &format!("SELECT pg_try_advisory_lock({LOCK_KEY_SQL})"),
                &[slot],
            ),
        )
        .await
        .map_err(|_| RelayError::Timeout("leader election: trying the lock".into()))?
        .map_err(|e| RelayError::postgres("leader election: trying the lock", e))?;
        let won: bool = row.get(0);
        if !won {
            health.set_standby_ok(true);
            if !*announced {
                *announced = true;
                set_role(health, Role::Standby);
                tracing::info!(slot = %slot, instance = instance_id(), "standing by: another relay holds the slot's lock");
            }
            continue;
        }
        let won_at = Instant::now();
        let _ = client
            .query_one(
                "SELECT set_config('application_name', $1, false)",
                &[&application_name(Role::Leader, slot, unix_now())],
            )
            .await;
        let client = std::sync::Arc::new(client);
        let (fence_tx, fenced) = watch::channel(false);
        let renewer = tokio::spawn(renew(client.clone(), lease, won_at, fence_tx));
        let held = Lease {
            client,
            fenced,
            renewer,
        };
        let grace = grace(cfg);
        tracing::info!(slot = %slot, grace = ?grace, "won the slot's lock; waiting out the grace period before streaming");
        let mut f = held.fence();
        tokio::select! {
            _ = tokio::time::sleep_until(won_at + grace) => {}
            _ = f.wait_for(|v| *v) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            held.release().await;
            return Ok(None);
        }
        if held.is_fenced() {
            held.release().await;
            return Err(RelayError::Timeout(
                "leader election: lost the lock during the grace period".into(),
            ));
        }
        end_stale_walsender(&held.client, slot).await;
        set_role(health, Role::Leader);
        tracing::info!(slot = %slot, instance = instance_id(), "became leader");
        return Ok(Some(held));
    }
}

/// After the grace period the old leader has stopped producing; a walsender
/// still holding the slot is its leftover. End it (we hold the lock: proof
/// its owner lost leadership) rather than wait for `wal_sender_timeout`.
async fn end_stale_walsender(client: &Client, slot: &str) {
    let q = "SELECT active_pid, pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL";
    match tokio::time::timeout(Duration::from_secs(2), client.query_opt(q, &[&slot])).await {
        Ok(Ok(Some(row))) => {
            let pid: i32 = row.get(0);
            let ok: bool = row.get(1);
            tracing::warn!(slot = %slot, walsender_pid = pid, terminated = ok, "ended the previous leader's walsender that still held the slot");
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not end the previous leader's walsender; the stream retries until it is gone")
        }
        Err(_) => tracing::warn!("checking the slot's walsender timed out"),
    }
}

/// Renew every `lease/4`; flag the fence when a renewal fails or the lease
/// runs out first.
async fn renew(
    client: std::sync::Arc<Client>,
    lease: Duration,
    won_at: Instant,
    fence: watch::Sender<bool>,
) {
    let every = lease / 4;
    let mut valid_until = won_at + lease;
    loop {
        let sent = Instant::now();
        match tokio::time::timeout_at(valid_until, client.simple_query("SELECT 1")).await {
            Ok(Ok(_)) => valid_until = sent + lease,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "leader lease: renewal failed; stopping production now");
                break;
            }
            Err(_) => {
                tracing::error!(lease = ?lease, "leader lease: no renewal within the lease; stopping production now");
                break;
            }
        }
        tokio::time::sleep_until((sent + every).min(valid_until)).await;
        if Instant::now() >= valid_until {
            tracing::error!("leader lease ran out; stopping production now");
            break;
        }
    }
    fence.send_replace(true);
}

/// Record the role: metric, health, the housekeeping flag.
pub fn set_role(health: &SharedHealth, role: Role) {
    let leader = role == Role::Leader;
    ACTING.store(leader, Ordering::Relaxed);
    health.set_leader(Some(leader));
}

/// Before the first election: neither role yet, no housekeeping.
pub fn start_election() {
    ACTING.store(false, Ordering::Relaxed);
}

/// Mark this process as not leading (after a fence), until it wins again.
pub fn step_down(health: &SharedHealth) {
    ACTING.store(false, Ordering::Relaxed);
    health.set_leader(Some(false));
    tracing::warn!(
        instance = instance_id(),
        "stepped down: leadership lost; standing by"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_name_fits_postgres_limit() {
        let n = application_name(Role::Leader, &"s".repeat(40), 1_700_000_000);
        assert!(n.len() <= 63, "{n}");
        assert!(n.starts_with("outbox-relay leader sss"));
    }

    #[test]
    fn grace_exceeds_lease() {
        let cfg = Config::default();
        assert!(grace(&cfg) > cfg.ha.lease);
    }
}

//! Leader election through PostgreSQL: one relay produces per slot, the
//! others stand by (invariant 10, *one producer per slot*).
//!
//! ## The lock
//!
//! A session-level advisory lock, `pg_try_advisory_lock(hashtext('outbox-relay:' || slot))`,
//! held on a dedicated connection. The key is derived from the slot name
//! **only** — not from the host, the version, the config file or the user —
//! so every relay that could open this slot contends for the same key (two
//! leaders with different lock keys is how others failed). The key is a
//! compatibility contract: every release computes it the same way. Advisory
//! locks are per database, and a logical slot belongs to one database, so the
//! scope matches.
//!
//! The lock connection uses TCP keepalives on the client side and, on the
//! server side, `idle_session_timeout = lease` and `tcp_keepalives_*` /
//! `tcp_user_timeout`, so a leader cut off from PostgreSQL loses its lock
//! within about one lease instead of holding it for hours.
//!
//! Standbys try the lock every `ha.poll-interval` (50 ms by default). Polling,
//! not a blocking `pg_advisory_lock`: each try also reads the current
//! leader's advertised lease (below), a waiter left behind by a killed
//! standby cannot be first in the lock's queue, and no server log fills with
//! the errors of cancelled lock waits. The cost is a trivial query per
//! standby per poll.
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
//! stopped producing by `s + L`, where `L` is *the old leader's* lease. The
//! new leader waits [`grace_for`]`(L)` = `L + L/4` after `a` before it opens
//! the stream (the quarter is slack for scheduling the fence). So the old
//! leader's last message was handed over before the new leader's first: two
//! producers never overlap.
//!
//! `L` is not necessarily ours: relays of different releases, or a rolling
//! change of `ha.lease`, run side by side. Every leader advertises its lease
//! in its lock connection's `application_name` ([`name`]); each standby poll
//! reads the leaders' names, and the grace uses the longest lease seen while
//! standing by, never less than our own. A leader without an advertised
//! lease (the first release with election) counts as [`LEGACY_LEASE`], its
//! default; so does a lock whose holder we never saw named (winning at the
//! first try, e.g. at startup). Every release names itself leader right
//! after its win, before its grace period, so a holder that produced was
//! named while it held the lock. A holder with a longer lease than ours that
//! we missed between two polls held the lock for less than our
//! `poll-interval` ≤ `lease/2` — less than its own grace — so it never
//! produced; one with a shorter lease is covered by ours. The assumption left: standbys' clocks run at the same rate as
//! the leader's (monotonic clocks; drift is ppm), and a standby's poll loop
//! is not suspended for longer than a lease while the lock changes hands.
//!
//! What the lease does not cover, in at-least-once mode: bytes of a produce
//! request already written to the broker connection when the lease ran out
//! (delivered later than the slack), and a leader *process* suspended (SIGSTOP,
//! a VM pause) for longer than its lease — on resume, librdkafka's threads
//! may send what was queued before the fence task runs. Exactly-once mode
//! fences both at the broker with the transactional id.
//!
//! ## Winning and streaming
//!
//! The winner does not wait idle: [`acquire`] returns at the win, and the
//! session connects to PostgreSQL and creates its producer during the grace
//! period; only [`Leadership::stream_gate`] — the end of the grace — lets it
//! load the checkpoint and send `START_REPLICATION`. Loading after the gate
//! matters: a fenced leader's last checkpoint write may still be on the
//! wire (a stalled connection delivers it when the stall ends). One that
//! lands within the grace is honoured, so the new session does not re-send
//! what it covers; one that lands later covers only acknowledged messages,
//! and the monotonic upsert keeps it from moving anything backwards. A slot still
//! `active` then belongs to a walsender of the old leader (it can no longer
//! be streaming to anyone who produces): the new leader ends it with
//! `pg_terminate_backend` — only then, and only because it holds the lock —
//! instead of waiting for `wal_sender_timeout`.
//!
//! Standbys never call `START_REPLICATION` and never write the checkpoint
//! table: they only run the lock query.
//!
//! A graceful stop of the leader drains, persists, then releases the lock
//! at once (`pg_advisory_unlock_all`, then closing the connection).
//!
//! ## Takeover time
//!
//! After `kill -9` of the leader, PostgreSQL frees the lock when it sees the
//! connection close (at once): takeover ≈ `poll-interval`/2, plus
//! `1.25 × lease`, plus `START_REPLICATION` and the first event. The
//! default lease (500 ms) trades that against self-fencing: a leader whose renewal gets no answer
//! within `lease − lease/4` (375 ms) on a stalled PostgreSQL or a starved
//! process steps down, and whoever leads next re-sends from the checkpoint
//! (duplicates, never loss).

mod lease;
mod name;

pub use lease::{Leadership, Lease};
pub use name::{
    advertised_lease, application_name, holder_lease, hostname, instance_id, Role, LEGACY_LEASE,
};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::{RelayError, Result};
use crate::health::SharedHealth;
use crate::source::control;

/// Fixed prefix of the lock key; the rest is the slot name.
pub const LOCK_PREFIX: &str = "outbox-relay:";

/// The lock key's SQL, with the slot as `$1`: a compatibility contract —
/// every release must compute the same key (README "Compatibility").
macro_rules! lock_key_sql {
    () => {
        "hashtext('outbox-relay:' || $1)::bigint"
    };
}

/// SQL expression for the lock key, with the slot as `$1`.
pub const LOCK_KEY_SQL: &str = lock_key_sql!();

/// Whether this process may do leader-only housekeeping (janitor,
/// heartbeat). True without HA.
static ACTING: AtomicBool = AtomicBool::new(true);

/// True unless this process is a standby (the janitor and heartbeat skip
/// their work on standbys).
pub fn may_act() -> bool {
    ACTING.load(Ordering::Relaxed)
}

/// How long a new leader waits before it opens the stream, when the
/// previous holder's lease was `lease` (see the fencing argument above).
pub fn grace_for(lease: Duration) -> Duration {
    lease + lease / 4
}

/// The grace period when every relay runs with this config's lease.
pub fn grace(cfg: &Config) -> Duration {
    grace_for(cfg.ha.lease)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One standby poll: try the lock and, in the same round trip, read the
/// names of the slot's current leaders (other sessions).
const POLL_SQL: &str = concat!(
    "SELECT pg_try_advisory_lock(",
    lock_key_sql!(),
    "), ARRAY(SELECT application_name FROM pg_stat_activity \
     WHERE application_name LIKE 'outbox-relay leader %' \
     AND split_part(application_name, ' ', 3) = $1 AND pid <> pg_backend_pid())"
);

/// Wait as a standby until this process holds the lock; `Ok(None)` when
/// `stop` came first. The lease returned is in its grace period: the caller
/// prepares its session and opens the stream through
/// [`Leadership::stream_gate`]. Connection failures while standing by are
/// retried with backoff (a standby is not broken because PostgreSQL
/// restarted).
pub async fn acquire(
    cfg: &Config,
    health: &SharedHealth,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Lease>> {
    let mut backoff = Backoff::new(cfg.relay.backoff_initial, cfg.relay.backoff_max);
    let mut standing = Standing::default();
    loop {
        if *stop.borrow() {
            return Ok(None);
        }
        match try_acquire(cfg, health, stop, &mut standing).await {
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

/// What a standby learned while standing by (kept across reconnects).
#[derive(Default)]
struct Standing {
    /// "standing by" was logged.
    announced: bool,
    /// The longest lease of any holder seen; `None`: none seen.
    holders_lease: Option<Duration>,
}

/// One lock connection: poll until won; `Err` when the connection failed.
async fn try_acquire(
    cfg: &Config,
    health: &SharedHealth,
    stop: &mut watch::Receiver<bool>,
    standing: &mut Standing,
) -> Result<Option<Lease>> {
    let slot = &cfg.postgres.slot;
    let lease = cfg.ha.lease;
    let client = control::connect_tuned(
        cfg,
        "leader election",
        &application_name(Role::Standby, slot, unix_now(), lease),
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
    let poll_sql = client
        .prepare(POLL_SQL)
        .await
        .map_err(|e| RelayError::postgres("leader election: preparing the lock query", e))?;
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
        let asked_at = Instant::now();
        let row = tokio::time::timeout(lease, client.query_one(&poll_sql, &[slot]))
            .await
            .map_err(|_| RelayError::Timeout("leader election: trying the lock".into()))?
            .map_err(|e| RelayError::postgres("leader election: trying the lock", e))?;
        let won_at = Instant::now();
        let won: bool = row.get(0);
        if !won {
            // A holder not (yet) named leader is one between its win and its
            // rename — in its grace period, not producing: nothing to learn.
            // Should it vanish unnamed, `None` below still assumes the most.
            let leaders: Vec<String> = row.get(1);
            if !leaders.is_empty() {
                let seen = holder_lease(&leaders);
                standing.holders_lease = Some(standing.holders_lease.map_or(seen, |l| l.max(seen)));
            }
            health.set_standby_ok(true);
            if !standing.announced {
                standing.announced = true;
                set_role(health, Role::Standby);
                tracing::info!(slot = %slot, instance = instance_id(), "standing by: another relay holds the slot's lock");
            }
            continue;
        }
        let _ = client
            .query_one(
                "SELECT set_config('application_name', $1, false)",
                &[&application_name(Role::Leader, slot, unix_now(), lease)],
            )
            .await;
        // The previous holder's lease: the longest seen, at least ours; an
        // unseen holder may be a release that advertised none.
        let previous = standing.holders_lease.unwrap_or(LEGACY_LEASE).max(lease);
        let grace = grace_for(previous);
        if previous > lease {
            tracing::info!(slot = %slot, previous_lease = ?previous, own_lease = ?lease, "won the slot's lock; the previous holder may have had a longer lease (ha.lease): waiting for it");
        }
        tracing::info!(slot = %slot, grace = ?grace, "won the slot's lock; preparing the session, streaming after the grace period");
        return Ok(Some(Lease::start(
            client,
            slot,
            lease,
            (asked_at, won_at),
            grace,
            health.clone(),
        )));
    }
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
    fn the_lock_key_never_changes() {
        // Relays of every release must contend for one key: changing this
        // text lets two leaders hold "the" lock at once.
        assert_eq!(LOCK_KEY_SQL, "hashtext('outbox-relay:' || $1)::bigint");
        assert!(POLL_SQL.starts_with(&format!("SELECT pg_try_advisory_lock({LOCK_KEY_SQL})")));
        assert_eq!(LOCK_PREFIX, "outbox-relay:");
    }

    #[test]
    fn grace_exceeds_lease() {
        let cfg = Config::default();
        assert!(grace(&cfg) > cfg.ha.lease);
        assert!(grace_for(LEGACY_LEASE) > LEGACY_LEASE);
    }
}

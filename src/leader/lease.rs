//! Held leadership: the lock connection, its renewals, and the moment the
//! stream may open (the fencing argument is in the [module docs](super)).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_postgres::Client;

use crate::error::{RelayError, Result};
use crate::health::SharedHealth;

/// Held leadership: the lock connection, its renewal task, and the end of
/// the grace period.
pub struct Lease {
    client: Arc<Client>,
    fenced: watch::Receiver<bool>,
    renewer: tokio::task::JoinHandle<()>,
    slot: String,
    /// Before this the previous holder may still produce: no stream yet.
    stream_from: Instant,
    health: SharedHealth,
    /// "became leader" was recorded (after the first gate).
    became: Arc<AtomicBool>,
}

impl Lease {
    /// Start renewing a lock on `client` that the query sent at `asked_at`
    /// won (its answer arrived at `won_at`): the first proof dates from the
    /// question, the grace period from the answer — each the safe side.
    pub(super) fn start(
        client: Client,
        slot: &str,
        lease: Duration,
        (asked_at, won_at): (Instant, Instant),
        grace: Duration,
        health: SharedHealth,
    ) -> Lease {
        let client = Arc::new(client);
        let (fence_tx, fenced) = watch::channel(false);
        let renewer = tokio::spawn(renew(client.clone(), lease, asked_at, fence_tx));
        Lease {
            client,
            fenced,
            renewer,
            slot: slot.to_string(),
            stream_from: won_at + grace,
            health,
            became: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Becomes true (or closes) when the lease ran out: stop producing now.
    pub fn fence(&self) -> watch::Receiver<bool> {
        self.fenced.clone()
    }

    /// Whether the lease already ran out.
    pub fn is_fenced(&self) -> bool {
        *self.fenced.borrow()
    }

    /// What a session needs to lead: the fence, and the gate before the stream.
    pub fn leadership(&self) -> Leadership {
        Leadership {
            fence: self.fence(),
            client: self.client.clone(),
            slot: self.slot.clone(),
            stream_from: self.stream_from,
            health: self.health.clone(),
            became: self.became.clone(),
        }
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

/// A session's view of the lease ([`crate::relay::run_session`]): it may
/// connect, load the checkpoint and create its producer at once, but opens
/// the replication stream only after [`Leadership::stream_gate`].
#[derive(Clone)]
pub struct Leadership {
    /// True (or closed) once the lease ran out: drop the session.
    pub fence: watch::Receiver<bool>,
    client: Arc<Client>,
    slot: String,
    stream_from: Instant,
    health: SharedHealth,
    became: Arc<AtomicBool>,
}

impl Leadership {
    /// Wait out the grace period (nothing to wait after the first session of
    /// a leadership), then end a walsender that still holds the slot; the
    /// first time, this process becomes the leader (metric, housekeeping).
    ///
    /// After the grace period the previous holder stopped producing, so a
    /// walsender still holding the slot is its leftover ("active for PID"
    /// until `wal_sender_timeout`). We may end it — only now, and only
    /// because we hold the lock, which proves its owner lost leadership.
    pub async fn stream_gate(&self) -> Result<()> {
        tokio::time::sleep_until(self.stream_from).await;
        if *self.fence.borrow() {
            return Err(RelayError::Fenced(
                "the leader lease ran out during the grace period".into(),
            ));
        }
        end_stale_walsender(&self.client, &self.slot).await;
        if !self.became.swap(true, Ordering::SeqCst) {
            super::set_role(&self.health, super::Role::Leader);
            tracing::info!(slot = %self.slot, instance = super::instance_id(), "became leader");
        }
        Ok(())
    }
}

/// End a walsender holding `slot` (see [`Leadership::stream_gate`]).
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
/// runs out first. A renewal sent at `s` that succeeds extends the lease to
/// `s + lease` (the send time, not the answer's: the server may have run it
/// at any moment in between).
async fn renew(
    client: Arc<Client>,
    lease: Duration,
    asked_at: Instant,
    fence: watch::Sender<bool>,
) {
    let every = lease / 4;
    let mut valid_until = asked_at + lease;
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

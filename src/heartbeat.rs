//! Heartbeat: every `relay.heartbeat-interval` a small non-transactional
//! logical message (prefix [`PREFIX`]) is written to WAL with
//! `pg_logical_emit_message`. The relay sees it on its stream even when the
//! outbox is idle or the database's traffic is all in other tables, so the
//! lag and heartbeat-age metrics stay true and the idle slot keeps advancing
//! (invariant 5): without it, a database whose WAL comes only from tables
//! outside the publication would give the relay nothing to confirm.
//!
//! Privilege: none beyond logging in. In PostgreSQL 15
//! `pg_logical_emit_message` is executable by `PUBLIC` and makes no
//! permission check of its own; only a DBA who revoked it from `PUBLIC` needs
//! `GRANT EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message(boolean, text, text) TO outbox_relay`.
//!
//! A heartbeat failure never stops the relay: it is logged at warn and the
//! control connection is re-opened with backoff.

use tokio::sync::watch;
use tokio_postgres::Client;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::{RelayError, Result};
use crate::source::control;

/// Prefix of heartbeat messages; the relay recognises them by it.
pub const PREFIX: &str = "outbox-relay-heartbeat";

/// The statement that writes one heartbeat ($1 = [`PREFIX`]; content: the
/// server's time). Non-transactional, so it is decoded at once, outside any
/// transaction.
pub const EMIT_SQL: &str = "SELECT pg_logical_emit_message(false, $1::text, now()::text)::text";

/// Write one heartbeat; returns the LSN of the message as text.
pub async fn emit(client: &Client) -> Result<String> {
    let row = client
        .query_one(EMIT_SQL, &[&PREFIX])
        .await
        .map_err(|e| RelayError::postgres("emitting a heartbeat", e))?;
    Ok(row.get(0))
}

/// Emit heartbeats until `shutdown`; returns at once when the interval is 0.
pub async fn run(cfg: Config, mut shutdown: watch::Receiver<bool>) {
    let interval = cfg.relay.heartbeat_interval;
    if interval.is_zero() {
        tracing::info!("heartbeat disabled (relay.heartbeat-interval = 0)");
        return;
    }
    let mut backoff = Backoff::new(cfg.relay.backoff_initial, cfg.relay.backoff_max);
    let mut client: Option<Client> = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        tokio::select! {
            _ = tick.tick() => {}
            changed = shutdown.changed() => { if changed.is_err() { return; } continue; }
        }
        // Standbys leave the heartbeat to the leader (one writer per slot).
        if !crate::leader::may_act() {
            continue;
        }
        let result = async {
            if client.as_ref().is_none_or(Client::is_closed) {
                client = Some(control::connect(&cfg, "heartbeat").await?);
            }
            emit(client.as_ref().expect("connected")).await
        }
        .await;
        match result {
            Ok(lsn) => {
                if failing {
                    tracing::info!(%lsn, "heartbeat restored");
                    failing = false;
                } else {
                    tracing::trace!(%lsn, "heartbeat emitted");
                }
                backoff.reset();
            }
            Err(e) => {
                client = None;
                failing = true;
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "heartbeat failed; the relay keeps running");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    changed = shutdown.changed() => if changed.is_err() { return },
                }
                // Try again right away instead of waiting a whole interval.
                tick.reset_immediately();
            }
        }
    }
}

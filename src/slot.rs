//! Slot health: every `relay.slot-check-interval` the relay's replication
//! slot is read from `pg_replication_slots` and its `wal_status` exported as
//! [`crate::metrics::SLOT_WAL_STATUS`] (one series per status, 1 for the
//! current one).
//!
//! `wal_status` (PostgreSQL 13+) says whether the WAL the slot needs is still
//! there: `reserved` (within `max_wal_size`), `extended` (kept beyond it
//! because of the slot), `unreserved` (past `max_slot_wal_keep_size`: the
//! next checkpoint removes it) and `lost` (removed; the slot can never stream
//! again). A lost or vanished slot means outbox events may have been skipped
//! by the database, so it is fatal: the relay stops with
//! [`RelayError::Environment`] naming the slot and the fix, and never
//! recreates the slot by itself (that would silently start from "now").
//!
//! Transient failures of the check itself (connection lost) are logged and
//! retried; they never stop the relay.

use tokio::sync::watch;
use tokio_postgres::Client;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::{RelayError, Result};
use crate::sink::message::parse_lsn;
use crate::source::control;

/// Every `wal_status` value, in order of increasing danger.
pub const WAL_STATUSES: &[&str] = &["reserved", "extended", "unreserved", "lost"];

/// The relay's slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotInfo {
    /// Slot name.
    pub name: String,
    /// Output plugin (the relay needs `pgoutput`).
    pub plugin: Option<String>,
    /// A walsender is streaming from it.
    pub active: bool,
    /// PID of that walsender.
    pub active_pid: Option<i32>,
    /// `reserved` | `extended` | `unreserved` | `lost`; `None` when the slot
    /// has never reserved WAL.
    pub wal_status: Option<String>,
    /// Position the consumer confirmed (as `X/Y` text).
    pub confirmed_flush_lsn: Option<String>,
    /// Oldest WAL the slot still needs (as `X/Y` text).
    pub restart_lsn: Option<String>,
    /// Bytes that can still be written before the slot is at risk of being
    /// invalidated; `None` when `max_slot_wal_keep_size` is unlimited (-1).
    pub safe_wal_size: Option<i64>,
}

impl SlotInfo {
    /// `confirmed_flush_lsn` as a number.
    pub fn confirmed_flush(&self) -> Option<u64> {
        self.confirmed_flush_lsn.as_deref().and_then(parse_lsn)
    }
}

/// Read the slot; `None` if it does not exist.
pub async fn query(client: &Client, slot: &str) -> Result<Option<SlotInfo>> {
    let row = client
        .query_opt(
            "SELECT slot_name::text, plugin::text, active, active_pid, wal_status, \
                    confirmed_flush_lsn::text, restart_lsn::text, safe_wal_size \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| RelayError::postgres("reading pg_replication_slots", e))?;
    Ok(row.map(|r| SlotInfo {
        name: r.get(0),
        plugin: r.get(1),
        active: r.get(2),
        active_pid: r.get(3),
        wal_status: r.get(4),
        confirmed_flush_lsn: r.get(5),
        restart_lsn: r.get(6),
        safe_wal_size: r.get(7),
    }))
}

/// Export `wal_status` as [`crate::metrics::SLOT_WAL_STATUS`]: 1 for the
/// current status, 0 for the others (all 0 when the slot is missing).
pub fn record(info: Option<&SlotInfo>) {
    let current = info.and_then(|i| i.wal_status.as_deref());
    for status in WAL_STATUSES {
        let v = if current == Some(*status) { 1.0 } else { 0.0 };
        metrics::gauge!(crate::metrics::SLOT_WAL_STATUS, "status" => *status).set(v);
    }
}

/// Decide whether the slot can still serve the relay: a missing slot or
/// `wal_status = lost` is fatal.
pub fn evaluate(slot: &str, info: Option<&SlotInfo>) -> Result<()> {
    match info {
        None => Err(RelayError::Environment(format!(
            "replication slot {slot} does not exist any more (postgres.slot): it was dropped while the relay \
             depended on it, so changes since its last confirmed position may have been skipped; the relay \
             will not recreate it by itself: see README 'Slot health' to recover (re-run `outbox-relay init`, \
             then republish PENDING rows)"
        ))),
        Some(i) if i.wal_status.as_deref() == Some("lost") => Err(RelayError::Environment(format!(
            "replication slot {slot} was invalidated (wal_status=lost): WAL needed by the relay was removed \
             (max_slot_wal_keep_size exceeded), so outbox events committed after confirmed_flush_lsn {} may \
             never be streamed; the relay will not recreate the slot by itself: see README 'Slot health' to \
             recover (drop the slot, re-run `outbox-relay init`, then republish PENDING rows)",
            i.confirmed_flush_lsn.as_deref().unwrap_or("unknown")
        ))),
        Some(_) => Ok(()),
    }
}

/// One check on `client`: query, export, log when at risk, evaluate.
pub async fn check(client: &Client, slot: &str) -> Result<Option<SlotInfo>> {
    let info = query(client, slot).await?;
    record(info.as_ref());
    if let Some(i) = &info {
        if matches!(i.wal_status.as_deref(), Some("extended" | "unreserved")) {
            tracing::warn!(
                slot,
                wal_status = i.wal_status.as_deref().unwrap_or(""),
                safe_wal_size = ?i.safe_wal_size,
                "replication slot retains WAL beyond max_wal_size; it is invalidated if the relay falls further behind"
            );
        }
    }
    evaluate(slot, info.as_ref())?;
    Ok(info)
}

/// Connect and check once (startup): fatal conditions and connection
/// failures are both returned.
pub async fn check_now(cfg: &Config) -> Result<Option<SlotInfo>> {
    let client = control::connect(cfg, "slot check").await?;
    check(&client, &cfg.postgres.slot).await
}

/// Check every `relay.slot-check-interval` until `shutdown` (Ok) or until
/// the slot is lost or missing (Err, fatal). Connection and query failures
/// are logged at warn and retried with backoff.
pub async fn monitor(cfg: Config, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    let slot = cfg.postgres.slot.clone();
    let mut backoff = Backoff::new(cfg.relay.backoff_initial, cfg.relay.backoff_max);
    let mut client: Option<Client> = None;
    let mut tick = tokio::time::interval(cfg.relay.slot_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *shutdown.borrow_and_update() {
            return Ok(());
        }
        tokio::select! {
            _ = tick.tick() => {}
            changed = shutdown.changed() => { if changed.is_err() { return Ok(()); } continue; }
        }
        let outcome = async {
            if client.as_ref().is_none_or(Client::is_closed) {
                client = Some(control::connect(&cfg, "slot check").await?);
            }
            check(client.as_ref().expect("connected"), &slot).await
        }
        .await;
        match outcome {
            Ok(_) => backoff.reset(),
            Err(e @ RelayError::Environment(_)) => {
                tracing::error!(error = %e, "replication slot unusable; stopping");
                return Err(e);
            }
            Err(e) => {
                client = None;
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "slot check failed; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    changed = shutdown.changed() => if changed.is_err() { return Ok(()) },
                }
                tick.reset_immediately();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(status: Option<&str>) -> SlotInfo {
        SlotInfo {
            name: "s".into(),
            plugin: Some("pgoutput".into()),
            active: true,
            active_pid: Some(1),
            wal_status: status.map(str::to_string),
            confirmed_flush_lsn: Some("0/16B3748".into()),
            restart_lsn: Some("0/16B3710".into()),
            safe_wal_size: None,
        }
    }

    #[test]
    fn lost_and_missing_are_fatal_and_named() {
        for s in [None, Some("reserved"), Some("extended"), Some("unreserved")] {
            evaluate("s", Some(&info(s))).unwrap();
        }
        let e = evaluate("myslot", Some(&info(Some("lost")))).unwrap_err();
        assert_eq!(e.class(), crate::error::ErrorClass::Fatal);
        let msg = e.to_string();
        assert!(
            msg.contains("replication slot myslot was invalidated (wal_status=lost)"),
            "{msg}"
        );
        assert!(
            msg.contains("Slot health") && msg.contains("0/16B3748"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
        let e = evaluate("myslot", None).unwrap_err();
        assert_eq!(e.class(), crate::error::ErrorClass::Fatal);
        assert!(e.to_string().contains("myslot does not exist"), "{e}");
    }

    #[test]
    fn confirmed_flush_parses() {
        assert_eq!(info(None).confirmed_flush(), Some(0x16B3748));
    }

    #[test]
    fn gauge_has_one_current_status() {
        let recorder = crate::http::builder().unwrap().build_recorder();
        let h = recorder.handle();
        metrics::with_local_recorder(&recorder, || record(Some(&info(Some("extended")))));
        let text = h.render();
        let name = crate::metrics::SLOT_WAL_STATUS;
        assert!(
            text.contains(&format!("{name}{{status=\"extended\"}} 1")),
            "{text}"
        );
        for s in ["reserved", "unreserved", "lost"] {
            assert!(
                text.contains(&format!("{name}{{status=\"{s}\"}} 0")),
                "{text}"
            );
        }
    }
}

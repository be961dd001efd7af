//! After a lost slot: which rows the stream will never deliver, kept safe
//! until `outbox-relay replay --status PENDING` has published them.
//!
//! A slot can disappear: a PostgreSQL 15 failover does not carry logical
//! slots to the new primary, `pg_upgrade` before 17 drops them, and
//! `max_slot_wal_keep_size` invalidates a slot that falls too far behind.
//! Transactions committed before a new slot exists never come through its
//! stream. Worse, the janitor would mark their rows PROCESSED as soon as the
//! new slot's position passes its snapshot — a claim that they were
//! published, which they were not.
//!
//! So `init`, when it creates the slot while there is history (a checkpoint
//! row for the slot, or PENDING rows), records a *lost range* in the
//! checkpoint row, in three steps that survive a crash between any two:
//!
//! 1. `recovery_started_at = now()`; the janitor's snapshot is discarded; the
//!    old snapshot, if the old checkpoint covered it, is kept as
//!    `recovery_base` (its rows were delivered). While a recovery is started
//!    but has no snapshot yet, the janitor marks nothing.
//! 2. The slot is created. Once `pg_create_logical_replication_slot`
//!    returns, every transaction that commits later is decoded by it.
//! 3. `recovery_snapshot = pg_current_snapshot()`: every transaction it does
//!    not see commits later, so comes through the new slot.
//!
//! The lost range is then: PENDING rows whose transaction (`txid`) is
//! visible in `recovery_snapshot` and not in `recovery_base`. It holds every
//! row the old slot never delivered (and possibly some it did, or that the
//! new slot also delivers between steps 2 and 3: duplicates, never gaps).
//! The janitor does not mark rows of the lost range; the table-health metric
//! `outbox_relay_oldest_unpublished_age_seconds` counts them, so the alert
//! fires until they are replayed; `replay --status PENDING` selects them
//! (they are past the durable checkpoint by definition), marks each
//! PROCESSED after the broker acknowledged it, and clears the range once no
//! PENDING row is left in it.
//!
//! A second lost slot before the first range was replayed keeps the first
//! `recovery_base`, so the new range contains the old one.

use tokio_postgres::Client;

use crate::config::Config;
use crate::error::{RelayError, Result};

/// The recovery columns of the checkpoint row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryState {
    /// A lost range is being recorded or awaits its replay.
    pub started: bool,
    /// Step 3's snapshot (`None` while step 3 has not run).
    pub snapshot: Option<String>,
    /// Rows visible here were delivered by the old slot.
    pub base: Option<String>,
}

impl RecoveryState {
    /// Started, but the boundary is not known yet: nothing may be treated
    /// as published by the new slot's position.
    pub fn incomplete(&self) -> bool {
        self.started && self.snapshot.is_none()
    }
}

/// What `init` recorded.
#[derive(Debug, Clone, Default)]
pub struct LostRange {
    /// PENDING rows in the lost range now.
    pub rows: i64,
    /// Smallest and largest id among them.
    pub ids: Option<(i64, i64)>,
}

/// SQL condition: the row's transaction is in the lost range. `snap` and
/// `base` are SQL expressions of type text (parameters or columns); NULL
/// `base` means no base.
pub fn in_lost_range(txid_col: &str, snap: &str, base: &str) -> String {
    format!(
        "(pg_visible_in_snapshot({txid_col}, {snap}::pg_snapshot) \
          AND NOT coalesce(pg_visible_in_snapshot({txid_col}, {base}::pg_snapshot), false))"
    )
}

fn ck(cfg: &Config) -> String {
    let c = cfg.checkpoint_table();
    format!("{}.{}", c.schema, c.name)
}

/// Read the recovery state of the configured slot.
pub async fn load(client: &Client, cfg: &Config) -> Result<RecoveryState> {
    let row = client
        .query_opt(
            &format!(
                "SELECT recovery_started_at IS NOT NULL, recovery_snapshot::text, recovery_base::text \
                 FROM {} WHERE slot_name = $1",
                ck(cfg)
            ),
            &[&cfg.postgres.slot],
        )
        .await
        .map_err(|e| RelayError::postgres("reading the recovery state (outbox.checkpoint-table)", e))?;
    Ok(row
        .map(|r| RecoveryState {
            started: r.get(0),
            snapshot: r.get(1),
            base: r.get(2),
        })
        .unwrap_or_default())
}

/// Step 1, before `init` creates a missing slot. Returns whether a lost
/// range is being recorded (there is a checkpoint row, or PENDING rows).
pub async fn before_new_slot(client: &Client, cfg: &Config) -> Result<bool> {
    let c = &cfg.outbox.columns;
    if c.txid.is_empty() {
        // Without the txid column rows cannot be told apart by transaction;
        // the janitor does not mark rows either, so nothing is at risk.
        return Ok(false);
    }
    let mut pending = false;
    for view in cfg.per_table() {
        let found: bool = client
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM {} WHERE {} = 'PENDING')",
                    view.outbox.table, view.outbox.columns.status
                ),
                &[],
            )
            .await
            .map_err(|e| RelayError::postgres("looking for PENDING rows", e))?
            .get(0);
        pending |= found;
    }
    let ck = ck(cfg);
    let sql = format!(
        "WITH touched AS ( \
           UPDATE {ck} SET recovery_started_at = coalesce(recovery_started_at, now()), \
             recovery_snapshot = NULL, \
             recovery_base = CASE WHEN recovery_started_at IS NOT NULL THEN recovery_base \
                                  WHEN janitor_lsn <= lsn THEN janitor_snapshot END, \
             janitor_snapshot = NULL, janitor_lsn = NULL \
           WHERE slot_name = $1 RETURNING 1) \
         INSERT INTO {ck} (slot_name, lsn, recovery_started_at) \
         SELECT $1, '0/0', now() WHERE $2 AND NOT EXISTS (SELECT 1 FROM touched) \
         ON CONFLICT (slot_name) DO NOTHING"
    );
    client
        .execute(&sql, &[&cfg.postgres.slot, &pending])
        .await
        .map_err(|e| RelayError::postgres("recording the start of a slot recovery", e))?;
    Ok(load(client, cfg).await?.started)
}

/// Step 3, after the slot exists (also on a re-run of `init` after a crash
/// between steps). Returns the lost range when a recovery is open.
pub async fn after_slot(client: &Client, cfg: &Config) -> Result<Option<LostRange>> {
    if cfg.outbox.columns.txid.is_empty() {
        return Ok(None);
    }
    client
        .execute(
            &format!(
                "UPDATE {} SET recovery_snapshot = pg_current_snapshot() \
                 WHERE slot_name = $1 AND recovery_started_at IS NOT NULL AND recovery_snapshot IS NULL",
                ck(cfg)
            ),
            &[&cfg.postgres.slot],
        )
        .await
        .map_err(|e| RelayError::postgres("recording the lost range of a slot recovery", e))?;
    let state = load(client, cfg).await?;
    if !state.started {
        return Ok(None);
    }
    Ok(Some(lost_range_all(client, cfg, &state).await?))
}

/// [`lost_range`] over every outbox table (`outbox.tables`): rows summed;
/// ids only with one table (they repeat across tables).
pub async fn lost_range_all(
    client: &Client,
    cfg: &Config,
    state: &RecoveryState,
) -> Result<LostRange> {
    let views = cfg.per_table();
    if views.len() == 1 {
        return lost_range(client, &views[0], state).await;
    }
    let mut rows = 0;
    for view in &views {
        rows += lost_range(client, view, state).await?.rows;
    }
    Ok(LostRange { rows, ids: None })
}

/// The PENDING rows of the lost range.
pub async fn lost_range(client: &Client, cfg: &Config, state: &RecoveryState) -> Result<LostRange> {
    let c = &cfg.outbox.columns;
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), min({id}), max({id}) FROM {t} WHERE {st} = 'PENDING' AND {cond}",
                id = c.id,
                t = cfg.outbox.table,
                st = c.status,
                cond = in_lost_range(&c.txid, "$1::text", "$2::text"),
            ),
            &[&state.snapshot, &state.base],
        )
        .await
        .map_err(|e| RelayError::postgres("counting the rows of the lost range", e))?;
    let rows: i64 = row.get(0);
    let ids = match (row.get::<_, Option<i64>>(1), row.get::<_, Option<i64>>(2)) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    };
    Ok(LostRange { rows, ids })
}

/// Close the recovery once no PENDING row is left in the lost range.
/// Returns whether it was closed.
pub async fn close_if_done(client: &Client, cfg: &Config) -> Result<bool> {
    let state = load(client, cfg).await?;
    if !state.started || state.snapshot.is_none() {
        return Ok(false);
    }
    let views = cfg.per_table();
    if views.len() > 1 {
        // Every table's part of the range must be done; the statement below
        // re-checks the first table atomically, the others just before.
        for view in &views[1..] {
            if lost_range(client, view, &state).await?.rows > 0 {
                return Ok(false);
            }
        }
    }
    let cfg = &views[0];
    let c = &cfg.outbox.columns;
    let n = client
        .execute(
            &format!(
                "UPDATE {ck} k SET recovery_started_at = NULL, recovery_snapshot = NULL, recovery_base = NULL \
                 WHERE k.slot_name = $1 AND k.recovery_snapshot IS NOT NULL AND NOT EXISTS ( \
                   SELECT 1 FROM {t} o WHERE o.{st} = 'PENDING' AND {cond})",
                ck = ck(cfg),
                t = cfg.outbox.table,
                st = c.status,
                cond = in_lost_range(
                    &format!("o.{}", c.txid),
                    "k.recovery_snapshot::text",
                    "k.recovery_base::text"
                ),
            ),
            &[&cfg.postgres.slot],
        )
        .await
        .map_err(|e| RelayError::postgres("closing the slot recovery", e))?;
    Ok(n > 0)
}

/// After `init`: tell the operator about a lost range, or a slot that is
/// still there but invalidated (which `init` does not replace).
pub async fn explain_init(
    client: &Client,
    cfg: &Config,
    report: &crate::source::control::InitReport,
) {
    let slot = &cfg.postgres.slot;
    if let Some(r) = &report.lost_range {
        let ids = r
            .ids
            .map(|(a, b)| format!(" (ids {a}..{b})"))
            .unwrap_or_default();
        println!(
            "slot {slot} is new, but this outbox has history: {} PENDING row(s){ids} were committed \
             before it and will not come through its stream. Publish them with \
             `outbox-relay replay --status PENDING` (the janitor leaves them PENDING until then).",
            r.rows
        );
    }
    if let Ok(Some(info)) = crate::slot::query(client, slot).await {
        if info.wal_status.as_deref() == Some("lost") {
            println!(
                "slot {slot} exists but was invalidated (wal_status=lost): drop it with \
                 SELECT pg_drop_replication_slot('{slot}'); then run `outbox-relay init` again \
                 (README: 'Recovering from a lost slot')."
            );
        }
    }
}

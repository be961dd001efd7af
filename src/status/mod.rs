//! `outbox-relay status`: where the relay stands, read from PostgreSQL
//! (works whether or not the relay runs, needs no broker), plus — in
//! exactly-once mode only — the last committed progress record from Kafka,
//! which is where that mode resumes ([`progress`]).
//!
//! What the numbers mean:
//!
//! * **slot** — the relay's row of `pg_replication_slots`: whether it exists,
//!   whether a walsender streams from it (`active`), its `wal_status` and
//!   `confirmed_flush_lsn`.
//! * **checkpoint** — the checkpoint table's LSN for the slot and when it was
//!   last written. The relay writes it only after broker acks (exactly-once:
//!   after the Kafka commit), and only when outbox rows were published (an
//!   idle relay advances the slot, not the table), so an old `updated_at`
//!   with nothing pending is normal.
//! * **progress** (exactly-once only) — the last committed progress record
//!   of this relay's transactional id: commit LSN, index within that
//!   PostgreSQL transaction, epoch, and how far the checkpoint table trails
//!   it. When the broker cannot be reached it says why, in one line, and
//!   everything else is still shown ([`progress`]).
//! * **lag bytes** — `pg_current_wal_lsn()` minus the relay's handled
//!   position ([`Status::handled_lsn`]): the greatest of the positions the
//!   relay has proven — the checkpoint LSN, the slot's
//!   `confirmed_flush_lsn` and, in exactly-once mode, the progress record's
//!   resume position (each means "everything before this was published or
//!   had nothing to publish"). It counts all WAL, not only outbox rows, so it
//!   is small but rarely zero while the relay keeps up.
//! * **lag seconds** — age of the oldest `PENDING` row created after the
//!   checkpoint was last written, 0 when there is none. Such a row cannot be
//!   covered by that checkpoint, so this is a lower bound of how far
//!   publishing is behind; a stopped relay shows how long ago it stopped
//!   keeping up. (Rows whose transaction began before the write but committed
//!   after it are missed; the bound is off by at most that transaction's
//!   duration.)
//! * **lost slot** — after `init` replaced a lost slot: how many PENDING rows
//!   the new slot will never deliver, until `replay --status PENDING`
//!   publishes them ([`crate::recovery`]).
//! * **topic drift** — what the running relay's drift check last recorded
//!   in the checkpoint table: a missing DLQ topic, a topic whose partition
//!   count changed since it was first seen ([`crate::topic_drift`]).
//! * **rows** — outbox rows by the status column (`PENDING`, `PROCESSED`,
//!   `FAILED`), and the age of the oldest `PENDING` row. Rows stay `PENDING`
//!   until the janitor marks them, so this age includes the janitor's delay.
//!   With several outbox tables (`outbox.tables`) each table gets a line of
//!   its own (`tables` in JSON) and these are the sums, the oldest and the
//!   largest lag.
//!
//! The parts, one concept each: this file holds what `status` reports (the
//! types both renderings share) and the command; `gather.rs` reads it from
//! PostgreSQL; [`progress`] reads the exactly-once progress record from
//! Kafka, the only part that touches a broker; `render.rs` is the
//! human-readable table (`--json` is the types' `Serialize`).
//!
//! Nothing printed contains a secret: the connection URL is never shown.

use serde::Serialize;

use crate::config::{Config, Delivery, Overrides};
use crate::error::{RelayError, Result};
use crate::sink::message::parse_lsn;
use crate::slot::SlotInfo;
use crate::source::control;

mod gather;
pub mod progress;
mod render;

pub use gather::{gather, parse_relay};
pub use progress::ProgressStatus;
pub use render::render_table;

/// Everything `status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The slot's name from the configuration.
    pub slot_name: String,
    /// The slot, `None` if it does not exist.
    pub slot: Option<SlotInfo>,
    /// `pg_current_wal_lsn()` (`None` on a standby).
    pub current_wal_lsn: Option<String>,
    /// The checkpoint row, `None` before the first checkpoint.
    pub checkpoint: Option<Checkpoint>,
    /// Exactly-once mode only: the last committed progress record, or why
    /// it could not be read. Absent in at-least-once mode, whose output
    /// stays as it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressStatus>,
    /// Lag; see the module docs for the definitions.
    pub lag: Lag,
    /// Outbox rows by status.
    pub rows: Rows,
    /// The oldest `PENDING` row, `None` if there is none.
    pub oldest_pending: Option<Age>,
    /// After a lost slot: PENDING rows the new slot will never deliver,
    /// awaiting `replay --status PENDING` (`None`: no recovery open).
    pub lost_slot_rows: Option<i64>,
    /// Relays with a leader-election connection for this slot (leader
    /// first), from `pg_stat_activity`.
    pub relays: Vec<RelayInstance>,
    /// Topic drift the running relay last recorded ([`crate::topic_drift`]).
    pub topic_drift: Vec<crate::topic_drift::Finding>,
    /// Per outbox table, with `outbox.tables` (empty with one table: `rows`,
    /// `oldest_pending` and `lag` are then that table's; with several they
    /// are the sums, the oldest and the largest).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableStatus>,
}

impl Status {
    /// The relay's handled position: the greatest position it has proven.
    /// Everything below each of these was published (or had nothing to
    /// publish) — the checkpoint is written only after acks / the Kafka
    /// commit, the slot is confirmed only after the checkpoint or while
    /// nothing is in flight, and a committed progress record commits with
    /// the data it covers — so the greatest of them bounds what is left.
    /// `progress` is the exactly-once resume position, if read.
    pub fn handled_lsn(&self, progress: Option<u64>) -> Option<u64> {
        [
            self.checkpoint.as_ref().and_then(|c| parse_lsn(&c.lsn)),
            self.slot.as_ref().and_then(SlotInfo::confirmed_flush),
            progress,
        ]
        .into_iter()
        .flatten()
        .max()
    }

    /// WAL bytes past [`Self::handled_lsn`]; `None` when either end is
    /// unknown (a standby has no current WAL position).
    pub fn lag_bytes(&self, progress: Option<u64>) -> Option<i64> {
        let current = self.current_wal_lsn.as_deref().and_then(parse_lsn)?;
        let handled = self.handled_lsn(progress)?;
        Some(current.saturating_sub(handled) as i64)
    }
}

/// One outbox table's part of the status.
#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    /// `schema.table`.
    pub table: String,
    /// Rows by status.
    pub rows: Rows,
    /// The oldest `PENDING` row.
    pub oldest_pending: Option<Age>,
    /// Age of the oldest `PENDING` row newer than the checkpoint.
    pub lag_seconds: f64,
}

/// One relay process seen through its leader-election connection.
#[derive(Debug, Clone, Serialize)]
pub struct RelayInstance {
    /// `leader` or `standby`.
    pub role: String,
    /// Host name the relay reports (may be shortened to fit).
    pub host: String,
    /// The relay's process id on that host.
    pub pid: u32,
    /// Since when it leads or stands by (RFC 3339).
    pub since: String,
    /// Where its connection comes from, as PostgreSQL sees it.
    pub client_addr: String,
}

/// The checkpoint table's row for the slot.
#[derive(Debug, Clone, Serialize)]
pub struct Checkpoint {
    /// Durable LSN (`X/Y`).
    pub lsn: String,
    /// When it was last written (RFC 3339, UTC).
    pub updated_at: String,
    /// Seconds since then.
    pub age_seconds: f64,
    /// Row blocking the stream (`relay.on-permanent-error = "block"`).
    pub blocked_row_id: Option<i64>,
    /// Why it blocks.
    pub blocked_reason: Option<String>,
}

/// Replication lag.
#[derive(Debug, Clone, Serialize)]
pub struct Lag {
    /// WAL bytes past the handled position; `None` when unknown.
    pub bytes: Option<i64>,
    /// Age of the oldest pending row newer than the checkpoint, 0 if none.
    pub seconds: f64,
}

/// Row counts by status.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Rows {
    /// Not yet marked processed by the janitor.
    pub pending: i64,
    /// Published and marked.
    pub processed: i64,
    /// Dead-lettered.
    pub failed: i64,
}

/// A timestamp and its age.
#[derive(Debug, Clone, Serialize)]
pub struct Age {
    /// RFC 3339, UTC.
    pub at: String,
    /// Seconds before now.
    pub age_seconds: f64,
}

/// The `kafka.brokers` placeholder [`load_config`] fills in when none is
/// configured; [`progress`] reports the record unavailable instead of
/// dialling it.
const NO_BROKERS: &str = "unused-by-status:9092";

/// Load the configuration for `status`, which needs PostgreSQL only: a
/// missing `kafka.brokers` is not an error here.
pub fn load_config(cli: &crate::cli::Cli) -> Result<Config> {
    let mut overrides = Overrides {
        postgres_url: cli.postgres_url.clone(),
        kafka_brokers: cli.kafka_brokers.clone(),
    };
    match Config::load(cli.config.as_deref(), &overrides) {
        Err(e) if e.key == "kafka.brokers" => {
            overrides.kafka_brokers = Some(NO_BROKERS.into());
            Ok(Config::load(cli.config.as_deref(), &overrides)?)
        }
        other => Ok(other?),
    }
}

/// `outbox-relay status [--json]`. A PostgreSQL failure fails the command
/// (exit 1); a progress record that cannot be read never does — it is
/// reported as unavailable, with the reason.
pub async fn execute(cli: &crate::cli::Cli, json: bool) -> Result<()> {
    let cfg = load_config(cli)?;
    let client = control::connect(&cfg, "status").await?;
    // PostgreSQL first, Kafka second: the checkpoint is written after the
    // Kafka commit, so in this order a checkpoint can never look ahead of
    // the progress record merely because it was read later.
    let mut status = gather(&client, &cfg).await?;
    if cfg.kafka.delivery == Delivery::ExactlyOnce {
        let p = progress::read(&cfg, progress::READ_DEADLINE).await;
        progress::attach(&mut status, p);
    }
    if json {
        let text = serde_json::to_string_pretty(&status)
            .map_err(|e| RelayError::Environment(format!("rendering status as JSON: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", render_table(&status));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(slot: Option<SlotInfo>) -> Status {
        Status {
            slot_name: "outbox_relay".into(),
            slot,
            current_wal_lsn: Some("0/2000000".into()),
            checkpoint: None,
            progress: None,
            lag: Lag {
                bytes: Some(2048),
                seconds: 0.0,
            },
            rows: Rows {
                pending: 3,
                processed: 10,
                failed: 1,
            },
            oldest_pending: None,
            lost_slot_rows: None,
            relays: vec![],
            topic_drift: vec![],
            tables: vec![],
        }
    }

    pub(crate) fn checkpoint(lsn: &str) -> Checkpoint {
        Checkpoint {
            lsn: lsn.into(),
            updated_at: "2026-01-01T00:00:00.000000Z".into(),
            age_seconds: 1.0,
            blocked_row_id: None,
            blocked_reason: None,
        }
    }

    #[test]
    fn json_shape() {
        let v = serde_json::to_value(sample(None)).unwrap();
        assert_eq!(v["rows"]["pending"], 3);
        assert_eq!(v["lag"]["bytes"], 2048);
        assert!(v["slot"].is_null());
        assert!(
            v.get("progress").is_none(),
            "at-least-once JSON has no progress field: {v}"
        );
    }

    #[test]
    fn lag_counts_from_the_greatest_proven_position() {
        let mut s = sample(None);
        s.checkpoint = Some(checkpoint("0/1000000"));
        assert_eq!(s.lag_bytes(None), Some(0x100_0000));
        // A progress record past the checkpoint: the relay resumes there.
        assert_eq!(s.lag_bytes(Some(0x180_0000)), Some(0x80_0000));
        // One behind it (the checkpoint moved past row-free WAL): the
        // checkpoint still counts.
        assert_eq!(s.lag_bytes(Some(0x80_0000)), Some(0x100_0000));
        // Past the current position (read later): no negative lag.
        assert_eq!(s.lag_bytes(Some(0x300_0000)), Some(0));
        s.current_wal_lsn = None;
        assert_eq!(s.lag_bytes(Some(0x180_0000)), None);
    }
}

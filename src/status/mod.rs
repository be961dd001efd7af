//! `outbox-relay status`: where the relay stands, read from PostgreSQL alone
//! (works whether or not the relay runs, needs no broker).
//!
//! What the numbers mean:
//!
//! * **slot** — the relay's row of `pg_replication_slots`: whether it exists,
//!   whether a walsender streams from it (`active`), its `wal_status` and
//!   `confirmed_flush_lsn`.
//! * **checkpoint** — the checkpoint table's LSN for the slot and when it was
//!   last written. The relay writes it only after broker acks, and only when
//!   outbox rows were published (an idle relay advances the slot, not the
//!   table), so an old `updated_at` with nothing pending is normal.
//! * **lag bytes** — `pg_current_wal_lsn()` minus the relay's handled
//!   position, which is the greater of the checkpoint LSN and the slot's
//!   `confirmed_flush_lsn` (both mean "everything before this was published
//!   or had nothing to publish"). It counts all WAL, not only outbox rows, so
//!   it is small but rarely zero while the relay keeps up.
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
//! Nothing printed contains a secret: the connection URL is never shown.

use serde::Serialize;
use tokio_postgres::Client;

use crate::config::{Config, Overrides};
use crate::error::{RelayError, Result};
use crate::sink::message::parse_lsn;
use crate::slot::{self, SlotInfo};
use crate::source::control;

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

/// Rows, oldest pending row and lag seconds of one table's view.
async fn table_status(client: &Client, cfg: &Config) -> Result<TableStatus> {
    let ckpt_table = cfg.checkpoint_table();
    let slot_name = &cfg.postgres.slot;
    let c = &cfg.outbox.columns;
    let table = cfg.outbox.table.clone();
    let (st, ca) = (&c.status, &c.created_at);
    let mut rows = Rows::default();
    for r in client
        .query(
            &format!("SELECT {st}::text, count(*) FROM {table} GROUP BY 1"),
            &[],
        )
        .await
        .map_err(|e| RelayError::postgres(format!("counting outbox rows of {table}"), e))?
    {
        let status: Option<String> = r.get(0);
        let n: i64 = r.get(1);
        match status.as_deref() {
            Some("PENDING") => rows.pending += n,
            Some("PROCESSED") => rows.processed += n,
            Some("FAILED") => rows.failed += n,
            _ => {}
        }
    }
    let oldest_pending = client
        .query_one(
            &format!(
                "SELECT to_char(min({ca}) AT TIME ZONE 'UTC', '{RFC3339}'), \
                        extract(epoch FROM now() - min({ca}))::float8 \
                 FROM {table} WHERE {st} = 'PENDING'"
            ),
            &[],
        )
        .await
        .map_err(|e| RelayError::postgres("reading the oldest pending row", e))
        .map(|r| {
            let at: Option<String> = r.get(0);
            at.map(|at| Age {
                at,
                age_seconds: r.get::<_, Option<f64>>(1).unwrap_or(0.0).max(0.0),
            })
        })?;
    let lag_seconds: Option<f64> = client
        .query_one(
            &format!(
                "SELECT extract(epoch FROM now() - min(o.{ca}))::float8 FROM {table} o \
                 WHERE o.{st} = 'PENDING' AND o.{ca} > coalesce( \
                     (SELECT updated_at FROM {}.{} WHERE slot_name = $1), '-infinity')",
                ckpt_table.schema, ckpt_table.name
            ),
            &[slot_name],
        )
        .await
        .map_err(|e| RelayError::postgres("computing lag seconds", e))?
        .get(0);
    Ok(TableStatus {
        table,
        rows,
        oldest_pending,
        lag_seconds: lag_seconds.unwrap_or(0.0).max(0.0),
    })
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

/// Parse `outbox-relay <role> <slot> <host>:<pid> <since-unix>` (see
/// [`crate::leader::application_name`]) for `slot`.
pub fn parse_relay(app_name: &str, slot: &str, client_addr: &str) -> Option<RelayInstance> {
    let mut parts = app_name.split_whitespace();
    if parts.next()? != "outbox-relay" {
        return None;
    }
    let role = parts.next()?;
    if role != "leader" && role != "standby" {
        return None;
    }
    if parts.next()? != slot {
        return None;
    }
    let (host, pid) = parts.next()?.rsplit_once(':')?;
    let since: u64 = parts.next()?.parse().ok()?;
    let since = std::time::UNIX_EPOCH + std::time::Duration::from_secs(since);
    Some(RelayInstance {
        role: role.into(),
        host: host.into(),
        pid: pid.parse().ok()?,
        since: humantime::format_rfc3339_seconds(since).to_string(),
        client_addr: client_addr.into(),
    })
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

/// `to_char` format giving RFC 3339 in UTC.
const RFC3339: &str = "YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"";

/// Load the configuration for `status`, which needs PostgreSQL only: a
/// missing `kafka.brokers` is not an error here.
pub fn load_config(cli: &crate::cli::Cli) -> Result<Config> {
    let mut overrides = Overrides {
        postgres_url: cli.postgres_url.clone(),
        kafka_brokers: cli.kafka_brokers.clone(),
    };
    match Config::load(cli.config.as_deref(), &overrides) {
        Err(e) if e.key == "kafka.brokers" => {
            overrides.kafka_brokers = Some("unused-by-status:9092".into());
            Ok(Config::load(cli.config.as_deref(), &overrides)?)
        }
        other => Ok(other?),
    }
}

/// Gather the status from PostgreSQL.
pub async fn gather(client: &Client, cfg: &Config) -> Result<Status> {
    let slot_name = cfg.postgres.slot.clone();
    let slot = slot::query(client, &slot_name).await?;
    let current_wal_lsn: Option<String> = client
        .query_one(
            "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END",
            &[],
        )
        .await
        .map_err(|e| RelayError::postgres("reading pg_current_wal_lsn()", e))?
        .get(0);

    let ckpt_table = cfg.checkpoint_table();
    let ckpt_sql = format!(
        "SELECT lsn::text, to_char(updated_at AT TIME ZONE 'UTC', '{RFC3339}'), \
                extract(epoch FROM now() - updated_at)::float8, blocked_row_id, blocked_reason \
         FROM {}.{} WHERE slot_name = $1",
        ckpt_table.schema, ckpt_table.name
    );
    let checkpoint = client
        .query_opt(&ckpt_sql, &[&slot_name])
        .await
        .map_err(|e| {
            RelayError::postgres("reading the checkpoint table (outbox.checkpoint-table)", e)
        })?
        .map(|r| Checkpoint {
            lsn: r.get(0),
            updated_at: r.get(1),
            age_seconds: r.get(2),
            blocked_row_id: r.get(3),
            blocked_reason: r.get(4),
        });

    let handled = [
        checkpoint.as_ref().and_then(|c| parse_lsn(&c.lsn)),
        slot.as_ref().and_then(SlotInfo::confirmed_flush),
    ]
    .into_iter()
    .flatten()
    .max();
    let lag_bytes = match (current_wal_lsn.as_deref().and_then(parse_lsn), handled) {
        (Some(cur), Some(h)) => Some(cur.saturating_sub(h) as i64),
        _ => None,
    };

    let mut rows = Rows::default();
    let mut oldest_pending: Option<Age> = None;
    let mut lag_seconds: f64 = 0.0;
    let mut tables = Vec::new();
    for view in cfg.per_table() {
        let t = table_status(client, &view).await?;
        rows.pending += t.rows.pending;
        rows.processed += t.rows.processed;
        rows.failed += t.rows.failed;
        if let Some(a) = &t.oldest_pending {
            if oldest_pending
                .as_ref()
                .is_none_or(|o| a.age_seconds > o.age_seconds)
            {
                oldest_pending = Some(a.clone());
            }
        }
        lag_seconds = lag_seconds.max(t.lag_seconds);
        tables.push(t);
    }
    if !cfg.multi_table() {
        tables.clear();
    }
    let recovery = crate::recovery::load(client, cfg).await?;
    let lost_slot_rows = if recovery.started {
        Some(
            crate::recovery::lost_range_all(client, cfg, &recovery)
                .await?
                .rows,
        )
    } else {
        None
    };

    let rows_a = client
        .query(
            "SELECT application_name, COALESCE(host(client_addr), 'local') FROM pg_stat_activity \
             WHERE application_name LIKE 'outbox-relay leader %' \
                OR application_name LIKE 'outbox-relay standby %'",
            &[],
        )
        .await
        .map_err(|e| RelayError::postgres("reading pg_stat_activity", e))?;
    let mut relays: Vec<RelayInstance> = rows_a
        .iter()
        .filter_map(|r| parse_relay(r.get(0), &slot_name, r.get(1)))
        .collect();
    relays.sort_by(|a, b| (a.role != "leader", &a.since).cmp(&(b.role != "leader", &b.since)));

    let topic_drift = crate::topic_drift::load(client, cfg)
        .await?
        .map(|r| r.drift)
        .unwrap_or_default();

    Ok(Status {
        tables,
        topic_drift,
        relays,
        slot_name,
        slot,
        current_wal_lsn,
        checkpoint,
        lag: Lag {
            bytes: lag_bytes,
            seconds: lag_seconds,
        },
        rows,
        oldest_pending,
        lost_slot_rows,
    })
}

/// The human-readable table.
pub fn render_table(s: &Status) -> String {
    let mut out = Vec::<(String, String)>::new();
    let mut row = |k: &str, v: String| out.push((k.to_string(), v));
    match &s.slot {
        None => row(
            "slot",
            format!(
                "{} (MISSING: run `outbox-relay init`; see README 'Slot health')",
                s.slot_name
            ),
        ),
        Some(i) => {
            let active = match (i.active, i.active_pid) {
                (true, Some(pid)) => format!("active, walsender pid {pid}"),
                (true, None) => "active".to_string(),
                (false, _) => "inactive: no relay is streaming".to_string(),
            };
            row("slot", format!("{} ({active})", i.name));
            let ws = i.wal_status.as_deref().unwrap_or("none");
            let safe = match i.safe_wal_size {
                Some(b) => format!("{} until at risk", human_bytes(b)),
                None => "max_slot_wal_keep_size unlimited".to_string(),
            };
            let warn = if ws == "lost" {
                "  LOST: see README 'Slot health'"
            } else {
                ""
            };
            row("wal status", format!("{ws} ({safe}){warn}"));
            row(
                "confirmed flush lsn",
                i.confirmed_flush_lsn.clone().unwrap_or_else(|| "-".into()),
            );
        }
    }
    row(
        "current wal lsn",
        s.current_wal_lsn
            .clone()
            .unwrap_or_else(|| "- (standby)".into()),
    );
    row(
        "checkpoint",
        match &s.checkpoint {
            Some(c) => format!(
                "{} written {} ({} ago)",
                c.lsn,
                c.updated_at,
                human_secs(c.age_seconds)
            ),
            None => "none yet".to_string(),
        },
    );
    if let Some((id, reason)) = s.checkpoint.as_ref().and_then(|c| {
        c.blocked_row_id
            .map(|id| (id, c.blocked_reason.clone().unwrap_or_default()))
    }) {
        row("BLOCKED at row", format!("id={id}: {reason}"));
    }
    row(
        "lag bytes",
        s.lag
            .bytes
            .map(|b| format!("{} of WAL not yet handled", human_bytes(b)))
            .unwrap_or_else(|| "unknown".into()),
    );
    row(
        "lag seconds",
        format!(
            "{} (oldest pending row newer than the checkpoint)",
            human_secs(s.lag.seconds)
        ),
    );
    row(
        "rows",
        format!(
            "{} pending, {} processed, {} failed",
            s.rows.pending, s.rows.processed, s.rows.failed
        ),
    );
    row(
        "oldest pending",
        match &s.oldest_pending {
            Some(a) => format!("{} ago ({})", human_secs(a.age_seconds), a.at),
            None => "none".to_string(),
        },
    );
    for t in &s.tables {
        row(
            &format!("rows {}", t.table),
            format!(
                "{} pending, {} processed, {} failed; oldest pending {}",
                t.rows.pending,
                t.rows.processed,
                t.rows.failed,
                match &t.oldest_pending {
                    Some(a) => format!("{} ago", human_secs(a.age_seconds)),
                    None => "none".to_string(),
                }
            ),
        );
    }
    if let Some(n) = s.lost_slot_rows {
        row(
            "LOST SLOT",
            format!("{n} PENDING row(s) committed before the new slot: run `outbox-relay replay --status PENDING`"),
        );
    }
    for f in &s.topic_drift {
        out.push(("TOPIC DRIFT".into(), f.to_string()));
    }
    if s.relays.is_empty() {
        out.push((
            "relays".into(),
            "none with leader election connected".into(),
        ));
    }
    for r in &s.relays {
        out.push((
            r.role.clone(),
            format!(
                "{}:{} since {} (from {})",
                r.host, r.pid, r.since, r.client_addr
            ),
        ));
    }
    let width = out.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    out.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

fn human_bytes(b: i64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v.abs() >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {} ({b} bytes)", UNITS[u])
    }
}

fn human_secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

/// `outbox-relay status [--json]`.
pub async fn execute(cli: &crate::cli::Cli, json: bool) -> Result<()> {
    let cfg = load_config(cli)?;
    let client = control::connect(&cfg, "status").await?;
    let status = gather(&client, &cfg).await?;
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
mod tests {
    use super::*;

    fn sample(slot: Option<SlotInfo>) -> Status {
        Status {
            slot_name: "outbox_relay".into(),
            slot,
            current_wal_lsn: Some("0/2000000".into()),
            checkpoint: None,
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

    #[test]
    fn relay_names_parse() {
        let r = parse_relay(
            "outbox-relay leader outbox_relay db1:4242 1700000000",
            "outbox_relay",
            "10.0.0.1",
        )
        .unwrap();
        assert_eq!(
            (r.role.as_str(), r.host.as_str(), r.pid),
            ("leader", "db1", 4242)
        );
        assert_eq!(r.since, "2023-11-14T22:13:20Z");
        assert!(parse_relay("outbox-relay standby other h:1 1", "outbox_relay", "x").is_none());
        assert!(parse_relay("outbox-relay checkpoint", "outbox_relay", "x").is_none());
    }

    #[test]
    fn table_names_everything() {
        let t = render_table(&sample(None));
        assert!(t.contains("MISSING"), "{t}");
        assert!(t.contains("3 pending, 10 processed, 1 failed"), "{t}");
        assert!(t.contains("2.0 KiB (2048 bytes)"), "{t}");
        assert!(t.contains("checkpoint") && t.contains("none yet"), "{t}");
    }

    #[test]
    fn json_shape() {
        let v = serde_json::to_value(sample(None)).unwrap();
        assert_eq!(v["rows"]["pending"], 3);
        assert_eq!(v["lag"]["bytes"], 2048);
        assert!(v["slot"].is_null());
    }

    #[test]
    fn human_units() {
        assert_eq!(human_secs(5.25), "5.2s");
        assert_eq!(human_secs(125.0), "2m05s");
        assert_eq!(human_bytes(10), "10 B");
    }
}

//! Reading the status from PostgreSQL: the slot, the checkpoint row, row
//! counts per outbox table, the lost-slot range, the relays' election
//! connections and the recorded topic drift. All of it needs only the
//! control connection, so `status` works with the relay stopped and the
//! broker down; the exactly-once progress record is read apart, in
//! [`super::progress`].

use tokio_postgres::Client;

use super::{Age, Checkpoint, Lag, RelayInstance, Rows, Status, TableStatus};
use crate::config::Config;
use crate::error::{RelayError, Result};
use crate::slot;

/// `to_char` format giving RFC 3339 in UTC.
const RFC3339: &str = "YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"";

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

    let mut status = Status {
        tables,
        topic_drift,
        relays,
        slot_name,
        slot,
        current_wal_lsn,
        checkpoint,
        progress: None,
        lag: Lag {
            bytes: None,
            seconds: lag_seconds,
        },
        rows,
        oldest_pending,
        lost_slot_rows,
    };
    status.lag.bytes = status.lag_bytes(None);
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

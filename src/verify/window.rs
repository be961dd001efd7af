//! Which rows `verify` checks, read from PostgreSQL under one snapshot,
//! and the relay position that proves they were all handled.
//!
//! The window is read in a `REPEATABLE READ` transaction whose first
//! statement reads `pg_current_wal_insert_lsn()`: every row the snapshot
//! sees was committed before that position. Once the relay's durable
//! position (the greater of its checkpoint and the slot's
//! `confirmed_flush_lsn`, as in `status`) reaches it, every window row was
//! acknowledged by the broker or dead-lettered — so a row not found then is
//! missing, not late. To make an idle relay confirm promptly, `verify`
//! writes one heartbeat message after reading the window.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use tokio_postgres::Client;

use crate::config::Config;
use crate::error::{RelayError, Result};
use crate::sink::message::parse_lsn;
use crate::sink::route::{validate_topic, RouteFields, TopicTemplate};

use super::ledger::Ledger;

/// Which rows to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Every row in the table.
    All,
    /// Rows created at or after this time.
    Since(SystemTime),
    /// Rows with ids in this inclusive range.
    Ids(i64, i64),
}

/// Parse `--since`: an RFC 3339 time (`2024-05-01T12:00:00Z`, an offset
/// such as `+02:00`, or a space for `T`), or a duration meaning that long
/// ago (`90m`, `2h`, `1day`).
pub fn parse_since(s: &str) -> std::result::Result<SystemTime, String> {
    let s = s.trim();
    if let Ok(d) = humantime::parse_duration(s) {
        return SystemTime::now()
            .checked_sub(d)
            .ok_or_else(|| format!("{s} ago is before the epoch"));
    }
    let bad = || {
        format!(
            "{s:?} is neither an RFC 3339 time (2024-05-01T12:00:00Z, …+02:00) nor a duration (2h, 90m)"
        )
    };
    // humantime reads UTC only: take a numeric offset off and apply it.
    let (base, offset_secs) = match s
        .len()
        .checked_sub(6)
        .and_then(|i| s.get(i..).map(|t| (i, t)))
    {
        Some((i, tail))
            if (tail.starts_with('+') || tail.starts_with('-')) && tail.as_bytes()[3] == b':' =>
        {
            let h: i64 = tail[1..3].parse().map_err(|_| bad())?;
            let m: i64 = tail[4..6].parse().map_err(|_| bad())?;
            let sign = if tail.starts_with('-') { -1 } else { 1 };
            (format!("{}Z", &s[..i]), sign * (h * 3600 + m * 60))
        }
        _ => (s.to_string(), 0),
    };
    let t = humantime::parse_rfc3339_weak(&base).map_err(|_| bad())?;
    let adjusted = if offset_secs >= 0 {
        t.checked_sub(Duration::from_secs(offset_secs as u64))
    } else {
        t.checked_add(Duration::from_secs((-offset_secs) as u64))
    };
    adjusted.ok_or_else(bad)
}

/// Parse `--ids A..B` (inclusive; `A..=B` too).
pub fn parse_ids(s: &str) -> std::result::Result<(i64, i64), String> {
    let bad = || format!("{s:?} is not A..B (two row ids, inclusive)");
    let (a, b) = s.split_once("..").ok_or_else(bad)?;
    let b = b.strip_prefix('=').unwrap_or(b);
    let a: i64 = a.trim().parse().map_err(|_| bad())?;
    let b: i64 = b.trim().parse().map_err(|_| bad())?;
    if a > b {
        return Err(format!("{s:?}: the first id is greater than the second"));
    }
    Ok((a, b))
}

/// What was read about the window.
pub struct Window {
    /// `pg_current_wal_insert_lsn()` when the snapshot was taken.
    pub snapshot_lsn: u64,
    /// The rows' id span, `(1, 0)` when there are none.
    pub lo: i64,
    /// See `lo`.
    pub hi: i64,
    /// Topics the rows were routed to.
    pub topics: BTreeSet<String>,
    /// Earliest `created_at`, Unix ms (`None` without rows).
    pub first_created_ms: Option<i64>,
    /// The ledger, with every window row added.
    pub ledger: Ledger,
}

/// Rows fetched per round trip while streaming the window's ids.
const FETCH: i32 = 10_000;

/// Read the window under one snapshot.
pub async fn read(client: &mut Client, cfg: &Config, sel: Selection) -> Result<Window> {
    let c = &cfg.outbox.columns;
    let table = &cfg.outbox.table;
    let (since, first, last) = match sel {
        Selection::Since(t) => (t, 0, 0),
        Selection::Ids(a, b) => (SystemTime::UNIX_EPOCH, a, b),
        Selection::All => (SystemTime::UNIX_EPOCH, 0, 0),
    };
    let (pred, params): (String, Vec<&(dyn tokio_postgres::types::ToSql + Sync)>) = match sel {
        Selection::All => ("TRUE".into(), vec![]),
        Selection::Since(_) => (format!("{} >= $1", c.created_at), vec![&since]),
        Selection::Ids(..) => (format!("{} BETWEEN $1 AND $2", c.id), vec![&first, &last]),
    };
    let pg = |what: &'static str| move |e| RelayError::postgres(what, e);
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg("starting the verify snapshot"))?;
    // First statement: takes the snapshot, then reads the position.
    let lsn_text: String = tx
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(pg("reading pg_current_wal_insert_lsn()"))?
        .get(0);
    let snapshot_lsn = parse_lsn(&lsn_text)
        .ok_or_else(|| RelayError::Environment(format!("unexpected LSN {lsn_text:?}")))?;
    let span = tx
        .query_one(
            &format!(
                "SELECT min({id}), max({id}), (extract(epoch FROM min({ca})) * 1000)::int8 FROM {table} WHERE {pred}",
                id = c.id,
                ca = c.created_at
            ),
            &params,
        )
        .await
        .map_err(pg("reading the window's id span"))?;
    let (lo, hi) = match (span.get::<_, Option<i64>>(0), span.get::<_, Option<i64>>(1)) {
        (Some(lo), Some(hi)) => (lo, hi),
        _ => (1, 0),
    };
    let first_created_ms: Option<i64> = span.get(2);
    // Rows may be added after the snapshot unless the window has an upper
    // id bound: their messages are looked up, not taken for foreign.
    let open_ended = !matches!(sel, Selection::Ids(..));
    let mut ledger = Ledger::new(lo, hi, open_ended).map_err(RelayError::Environment)?;
    let topic_col = if c.topic.is_empty() {
        "NULL::text".to_string()
    } else {
        c.topic.clone()
    };
    let routes = tx
        .query(
            &format!(
                "SELECT DISTINCT {at}::text, {et}::text, {topic_col}::text FROM {table} WHERE {pred}",
                at = c.aggregate_type,
                et = c.event_type
            ),
            &params,
        )
        .await
        .map_err(pg("reading the window's routes"))?;
    let template = TopicTemplate::parse(&cfg.kafka.topic_template)
        .map_err(|m| crate::error::ConfigError::new("kafka.topic-template", m))?;
    let table_name = cfg.outbox_table().name;
    let mut topics = BTreeSet::new();
    for r in routes {
        let (at, et, topic): (Option<String>, Option<String>, Option<String>) =
            (r.get(0), r.get(1), r.get(2));
        let topic = topic.filter(|t| !t.is_empty()).unwrap_or_else(|| {
            template.render(&RouteFields {
                aggregate_type: at.as_deref().unwrap_or(""),
                event_type: et.as_deref().unwrap_or(""),
                table: &table_name,
            })
        });
        // A row routed to an illegal name was dead-lettered: nothing to read.
        if validate_topic(&topic).is_ok() {
            topics.insert(topic);
        }
    }
    let stmt = tx
        .prepare(&format!("SELECT {} FROM {table} WHERE {pred}", c.id))
        .await
        .map_err(pg("preparing the window's ids"))?;
    let portal = tx
        .bind(&stmt, &params)
        .await
        .map_err(pg("opening the window's ids"))?;
    loop {
        let rows = tx
            .query_portal(&portal, FETCH)
            .await
            .map_err(pg("reading the window's ids"))?;
        for r in &rows {
            ledger.add_row(r.get(0));
        }
        if rows.len() < FETCH as usize {
            break;
        }
    }
    tx.commit()
        .await
        .map_err(pg("ending the verify snapshot"))?;
    Ok(Window {
        snapshot_lsn,
        lo,
        hi,
        topics,
        first_created_ms,
        ledger,
    })
}

/// The relay's durable position: the greater of its checkpoint and the
/// slot's `confirmed_flush_lsn` (0 when neither exists).
pub async fn durable_position(client: &Client, cfg: &Config) -> Result<u64> {
    let ckpt = cfg.checkpoint_table();
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT lsn::text FROM {}.{} WHERE slot_name = $1), \
                        (SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1)",
                ckpt.schema, ckpt.name
            ),
            &[&cfg.postgres.slot],
        )
        .await
        .map_err(|e| RelayError::postgres("reading the relay's position", e))?;
    let lsn = |i: usize| {
        row.get::<_, Option<String>>(i)
            .and_then(|s| parse_lsn(&s))
            .unwrap_or(0)
    };
    Ok(lsn(0).max(lsn(1)))
}

/// Wait up to `wait` for the relay's durable position to reach `target`;
/// returns the last position read. Writes one heartbeat first so an idle
/// relay has something to confirm. `progress` is told each position read.
pub async fn wait_for_relay(
    client: &Client,
    cfg: &Config,
    target: u64,
    wait: Duration,
    mut progress: impl FnMut(u64),
) -> Result<u64> {
    if let Err(e) = client
        .query_one(crate::heartbeat::EMIT_SQL, &[&crate::heartbeat::PREFIX])
        .await
    {
        tracing::warn!(error = %e, "could not write a heartbeat; waiting for the relay's own");
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let pos = durable_position(client, cfg).await?;
        progress(pos);
        if pos >= target || tokio::time::Instant::now() >= deadline {
            return Ok(pos);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_rfc3339_offsets_and_durations() {
        let utc = parse_since("2024-05-01T12:00:00Z").unwrap();
        assert_eq!(parse_since("2024-05-01T14:00:00+02:00").unwrap(), utc);
        assert_eq!(parse_since("2024-05-01T09:30:00-02:30").unwrap(), utc);
        assert_eq!(parse_since("2024-05-01 12:00:00Z").unwrap(), utc);
        assert_eq!(
            parse_since("2024-05-01T12:00:00.250Z").unwrap(),
            utc + Duration::from_millis(250)
        );
        let ago = parse_since("2h").unwrap();
        let expected = SystemTime::now() - Duration::from_secs(7200);
        let diff = expected
            .duration_since(ago)
            .unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_secs(5), "{diff:?}");
        assert!(parse_since("yesterday").is_err());
        assert!(parse_since("2024-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn ids_range() {
        assert_eq!(parse_ids("10..20"), Ok((10, 20)));
        assert_eq!(parse_ids("10..=20"), Ok((10, 20)));
        assert_eq!(parse_ids("7..7"), Ok((7, 7)));
        assert!(parse_ids("20..10").is_err());
        assert!(parse_ids("10-20").is_err());
        assert!(parse_ids("a..b").is_err());
    }
}

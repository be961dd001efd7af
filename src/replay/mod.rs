//! `outbox-relay replay`: re-publish a selected range of outbox rows, and
//! `outbox-relay dlq replay --id N`, its one-row case for a FAILED row.
//!
//! Selectors (combined with AND, at least one required): `--ids A..B`
//! (inclusive; `A..` and `..B` are open), `--since T` / `--until T` on
//! `created_at` (`since <= created_at < until`, any timestamp PostgreSQL
//! accepts), `--status PENDING|PROCESSED|FAILED`.
//!
//! Rows are read from the table, not from a topic, so an operator can fix a
//! row with an UPDATE first. Each goes through the same decoding, routing
//! and checks as the stream (the row's column values are fed to the same
//! mapping) and the same message builder, in id order (so in id order per
//! key), with the stream's headers plus `replay` (the RFC 3339 time the
//! replay run started); `lsn` is `replay`, `commit_timestamp` the time of
//! the replay. `--topic` sends every row to one topic instead of its routed
//! one. `--rate` bounds messages per second (0: unbounded; in flight never
//! more than `kafka.max-in-flight`). `--dry-run` reads, decodes and routes
//! but sends and changes nothing.
//!
//! A row that was FAILED or PENDING is marked PROCESSED once the broker
//! acknowledged it (FAILED rows count one more attempt in `retry_count`); a
//! row that cannot be published (still too large, illegal topic, NULL
//! column) is reported by id and left as it is. A delivery failure stops
//! the run: no further row is sent, what is in flight is awaited, acked rows
//! are marked, and the command exits non-zero with its summary.
//!
//! Safe while the relay runs: replay has a producer of its own and changes
//! only rows it published. Replayed rows are out of commit order by nature
//! and may duplicate what the stream also delivers; consumers dedupe by the
//! `id` header.
//!
//! `--status PENDING` selects only rows past the durable checkpoint: rows
//! the janitor can already prove published (visible in its snapshot, which
//! the durable position has passed) are left to it, except rows of a lost
//! slot's range, which the new slot's position proves nothing about (see
//! [`crate::recovery`]). That is the recovery path after a lost slot:
//! `init` (new slot, lost range recorded), then `replay --status PENDING`;
//! when no PENDING row of the range is left, the recovery is closed.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use crate::config::Config;
use crate::decode::{
    OutboxMapping, OutboxRecord, Relation, RelationColumn, ResolvedRelation, Tuple, Value,
};
use crate::error::{ConfigError, RelayError, Result};
use crate::sink::message::TxnMeta;
use crate::sink::route::{validate_topic, RouteFields, TopicTemplate};
use crate::sink::{Delivery, MsgTag, Publisher, SendError};

/// Header set on every replayed message: when the replay run started.
pub const REPLAY_HEADER: &str = "replay";

/// `--ids`: an inclusive id range, `A..B`, `A..`, `..B` or `N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// Smallest id, if bounded.
    pub from: Option<i64>,
    /// Largest id, if bounded.
    pub to: Option<i64>,
}

impl FromStr for IdRange {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let num = |p: &str| -> std::result::Result<Option<i64>, String> {
            let p = p.trim();
            if p.is_empty() {
                return Ok(None);
            }
            p.parse()
                .map(Some)
                .map_err(|_| format!("{p:?} is not an id (expected A..B, A.., ..B or N)"))
        };
        let r = match s.split_once("..") {
            Some((a, b)) => IdRange {
                from: num(a)?,
                to: num(b.strip_prefix('=').unwrap_or(b))?,
            },
            None => {
                let n = num(s)?.ok_or("empty id range")?;
                IdRange {
                    from: Some(n),
                    to: Some(n),
                }
            }
        };
        if let (Some(a), Some(b)) = (r.from, r.to) {
            if a > b {
                return Err(format!("empty id range {a}..{b}"));
            }
        }
        Ok(r)
    }
}

/// `--status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum StatusFilter {
    /// Not yet marked published; only rows past the durable checkpoint.
    Pending,
    /// Published and marked.
    Processed,
    /// Dead-lettered.
    Failed,
}

impl StatusFilter {
    fn as_sql(self) -> &'static str {
        match self {
            StatusFilter::Pending => "PENDING",
            StatusFilter::Processed => "PROCESSED",
            StatusFilter::Failed => "FAILED",
        }
    }
}

/// `outbox-relay replay` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Ids to replay, inclusive: A..B, A.., ..B or N.
    #[arg(long)]
    pub ids: Option<IdRange>,
    /// Rows created at or after this time (any timestamp PostgreSQL accepts, e.g. 2025-01-31T12:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Rows created before this time.
    #[arg(long)]
    pub until: Option<String>,
    /// Only rows with this status (PENDING: only rows past the durable checkpoint).
    #[arg(long, value_enum, ignore_case = true)]
    pub status: Option<StatusFilter>,
    /// Send every row to this topic instead of its routed one.
    #[arg(long)]
    pub topic: Option<String>,
    /// Read, decode and route, but send and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Messages per second at most; 0: as fast as acknowledgements allow.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Which outbox table (`schema.table`) with `outbox.tables`; default:
    /// the first entry (the only table otherwise). One table per run: ids
    /// repeat across tables.
    #[arg(long)]
    pub table: Option<String>,
}

impl ReplayArgs {
    /// Arguments selecting exactly one FAILED row (what `dlq replay` does).
    pub fn failed_row(id: i64) -> Self {
        ReplayArgs {
            ids: Some(IdRange {
                from: Some(id),
                to: Some(id),
            }),
            since: None,
            until: None,
            status: Some(StatusFilter::Failed),
            topic: None,
            dry_run: false,
            rate: 0,
            table: None,
        }
    }
}

/// The single-table view `--table` selects (default: the first table).
pub fn select_table(cfg: &Config, table: Option<&str>) -> Result<Config> {
    match table {
        None => Ok(cfg.per_table().swap_remove(0)),
        Some(name) => cfg.table_view(name).ok_or_else(|| {
            RelayError::Config(ConfigError::new(
                "--table",
                format!(
                    "{name} is not an outbox table of this configuration (outbox.table, outbox.tables)"
                ),
            ))
        }),
    }
}

/// A row left as it is because it cannot be published.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rejected {
    /// Row id.
    pub id: i64,
    /// Why.
    pub reason: String,
}

/// What a replay run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Nothing was sent or changed.
    pub dry_run: bool,
    /// Rows the selectors matched.
    pub selected: u64,
    /// Smallest and largest selected id.
    pub ids: Option<(i64, i64)>,
    /// Messages handed to the producer (dry run: that would be).
    pub sent: u64,
    /// Messages the broker acknowledged.
    pub acknowledged: u64,
    /// FAILED rows marked PROCESSED.
    pub failed_to_processed: u64,
    /// PENDING rows marked PROCESSED.
    pub pending_to_processed: u64,
    /// Rows that cannot be published as they are.
    pub rejected: Vec<Rejected>,
    /// Messages per topic.
    pub topics: BTreeMap<String, u64>,
    /// A lost slot's recovery was closed (its range is fully replayed).
    pub recovery_closed: bool,
    /// The run was interrupted (SIGINT/SIGTERM) before the end of the range.
    pub interrupted: bool,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids = self
            .ids
            .map(|(a, b)| format!(" (ids {a}..{b})"))
            .unwrap_or_default();
        let topics: Vec<String> = self
            .topics
            .iter()
            .map(|(t, n)| format!("{t}={n}"))
            .collect();
        let topics = if topics.is_empty() {
            "none".to_string()
        } else {
            topics.join(" ")
        };
        if self.dry_run {
            return write!(
                f,
                "replay (dry run): {} rows selected{ids}, {} would be sent, {} rejected; topics: {topics}; nothing sent",
                self.selected,
                self.sent,
                self.rejected.len()
            );
        }
        write!(
            f,
            "replay: {} rows selected{ids}, {} sent, {} acknowledged, {} FAILED and {} PENDING marked PROCESSED, {} rejected; topics: {topics}; {:.1}s{}{}",
            self.selected,
            self.sent,
            self.acknowledged,
            self.failed_to_processed,
            self.pending_to_processed,
            self.rejected.len(),
            self.seconds,
            if self.recovery_closed {
                "; lost-slot recovery closed"
            } else {
                ""
            },
            if self.interrupted { "; interrupted" } else { "" },
        )
    }
}

/// A run's summary and, if it stopped early, why.
#[derive(Debug)]
pub struct Outcome {
    /// What was done.
    pub summary: Summary,
    /// The delivery (or PostgreSQL) failure that stopped the run.
    pub error: Option<RelayError>,
}

/// The rows of a page, decoded.
struct Reader {
    names: Vec<String>,
    resolved: ResolvedRelation,
    sql: String,
    count_sql: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

fn build_reader(cfg: &Config, args: &ReplayArgs, covered: &Coverage) -> Result<Reader> {
    let c = &cfg.outbox.columns;
    let table = cfg.outbox_table();
    let mut names = vec![
        c.id.clone(),
        c.aggregate_type.clone(),
        c.aggregate_id.clone(),
        c.event_type.clone(),
        c.payload.clone(),
    ];
    if !c.headers.is_empty() {
        names.push(c.headers.clone());
    }
    if !c.topic.is_empty() {
        names.push(c.topic.clone());
    }
    if let Some(event_id) = cfg.column_names().event_id {
        names.push(event_id);
    }
    let relation = Arc::new(Relation {
        id: 0,
        namespace: table.schema.clone(),
        name: table.name.clone(),
        replica_identity: b'd',
        columns: names
            .iter()
            .map(|n| RelationColumn {
                flags: 0,
                name: n.clone(),
                type_id: 25,
                type_modifier: -1,
            })
            .collect(),
    });
    let resolved = OutboxMapping::new(table, cfg.column_names())
        .resolve(&relation)
        .map_err(|e| {
            RelayError::Environment(format!("outbox table does not match outbox.columns: {e}"))
        })?
        .ok_or_else(|| RelayError::Environment("outbox table name mismatch".into()))?;

    // $1 = last id read (keyset), $2 = page size; selectors from $3.
    let mut conds = vec![format!("{} > $1", c.id)];
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut param = |v: Box<dyn ToSql + Sync + Send>| {
        params.push(v);
        format!("${}", params.len() + 2)
    };
    if let Some(r) = args.ids {
        if let Some(a) = r.from {
            conds.push(format!("{} >= {}", c.id, param(Box::new(a))));
        }
        if let Some(b) = r.to {
            conds.push(format!("{} <= {}", c.id, param(Box::new(b))));
        }
    }
    if let Some(s) = &args.since {
        conds.push(format!(
            "{} >= {}::text::timestamptz",
            c.created_at,
            param(Box::new(s.clone()))
        ));
    }
    if let Some(u) = &args.until {
        conds.push(format!(
            "{} < {}::text::timestamptz",
            c.created_at,
            param(Box::new(u.clone()))
        ));
    }
    if let Some(st) = args.status {
        conds.push(format!(
            "{} = {}",
            c.status,
            param(Box::new(st.as_sql().to_string()))
        ));
        if st == StatusFilter::Pending && !c.txid.is_empty() {
            // Past the durable checkpoint: not provably published, or in a
            // lost slot's range.
            let cov = param(Box::new(covered.janitor_snapshot.clone()));
            let snap = param(Box::new(covered.recovery.snapshot.clone()));
            let base = param(Box::new(covered.recovery.base.clone()));
            conds.push(format!(
                "NOT (coalesce(pg_visible_in_snapshot({tx}, {cov}::text::pg_snapshot), false) \
                      AND NOT coalesce({lost}, false))",
                tx = c.txid,
                lost = crate::recovery::in_lost_range(
                    &c.txid,
                    &format!("{snap}::text"),
                    &format!("{base}::text")
                ),
            ));
        }
    }
    // Aliased: a bare `ORDER BY id` would sort by an output column `id::text`.
    let select: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n}::text AS c{i}"))
        .collect();
    let sql = format!(
        "SELECT {}, {}::text AS st FROM {} WHERE {} ORDER BY {} LIMIT $2",
        select.join(", "),
        c.status,
        cfg.outbox.table,
        conds.join(" AND "),
        c.id
    );
    let count_sql = format!(
        "SELECT count(*) FROM {} WHERE $1::bigint IS NOT NULL AND $2::bigint IS NOT NULL AND {}",
        cfg.outbox.table,
        conds.join(" AND ")
    );
    Ok(Reader {
        names,
        resolved,
        sql,
        count_sql,
        params,
    })
}

impl Reader {
    async fn page(&self, client: &Client, after: i64, limit: i64) -> Result<Vec<Row>> {
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![&after, &limit];
        p.extend(
            self.params
                .iter()
                .map(|b| b.as_ref() as &(dyn ToSql + Sync)),
        );
        client
            .query(&self.sql, &p)
            .await
            .map_err(|e| RelayError::postgres("reading the rows to replay", e))
    }

    async fn count(&self, client: &Client) -> Result<i64> {
        let (after, limit) = (i64::MIN, 0i64);
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![&after, &limit];
        p.extend(
            self.params
                .iter()
                .map(|b| b.as_ref() as &(dyn ToSql + Sync)),
        );
        Ok(client
            .query_one(&self.count_sql, &p)
            .await
            .map_err(|e| RelayError::postgres("counting the rows to replay", e))?
            .get(0))
    }

    /// (id, status, the record or why it cannot be decoded).
    fn decode(&self, row: &Row) -> (i64, String, std::result::Result<OutboxRecord, String>) {
        let id = row
            .get::<_, Option<String>>(0)
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        let status: String = row.get(self.names.len());
        let tuple = Tuple(
            (0..self.names.len())
                .map(|i| match row.get::<_, Option<String>>(i) {
                    Some(s) => Value::Text(Bytes::from(s)),
                    None => Value::Null,
                })
                .collect(),
        );
        let rec = self.resolved.record(&tuple).map_err(|e| e.to_string());
        (id, status, rec)
    }
}

/// What the durable position proves published (for `--status PENDING`).
#[derive(Debug, Default)]
struct Coverage {
    /// The janitor's snapshot, when the durable position has passed it.
    janitor_snapshot: Option<String>,
    recovery: crate::recovery::RecoveryState,
}

async fn coverage(client: &Client, cfg: &Config) -> Result<Coverage> {
    let ck = cfg.checkpoint_table();
    let row = client
        .query_opt(
            &format!(
                "SELECT CASE WHEN GREATEST(k.lsn, s.confirmed_flush_lsn) >= k.janitor_lsn \
                        THEN k.janitor_snapshot::text END \
                 FROM {}.{} k LEFT JOIN pg_replication_slots s ON s.slot_name = k.slot_name \
                 WHERE k.slot_name = $1",
                ck.schema, ck.name
            ),
            &[&cfg.postgres.slot],
        )
        .await
        .map_err(|e| RelayError::postgres("reading the durable position", e))?;
    let recovery = crate::recovery::load(client, cfg).await?;
    let janitor_snapshot = if recovery.incomplete() {
        None
    } else {
        row.and_then(|r| r.get(0))
    };
    Ok(Coverage {
        janitor_snapshot,
        recovery,
    })
}

/// Check `--since`/`--until` with PostgreSQL's own timestamp parser, so the
/// error names the flag.
async fn check_times(client: &Client, args: &ReplayArgs) -> Result<()> {
    for (flag, v) in [("--since", &args.since), ("--until", &args.until)] {
        if let Some(v) = v {
            client
                .query_one("SELECT $1::text::timestamptz", &[v])
                .await
                .map_err(|_| {
                    RelayError::Config(ConfigError::new(
                        flag,
                        format!("{v:?} is not a timestamp PostgreSQL accepts (e.g. 2025-01-31T12:00:00Z)"),
                    ))
                })?;
        }
    }
    Ok(())
}

fn now_text() -> (i64, String) {
    let now = SystemTime::now();
    let millis = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    (millis, humantime::format_rfc3339_micros(now).to_string())
}

/// Progress on a terminal.
struct Progress {
    total: Option<i64>,
    last: Instant,
    start: Instant,
}

impl Progress {
    fn show(&mut self, s: &Summary, force: bool) {
        if !force && self.last.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last = Instant::now();
        let rate = s.acknowledged as f64 / self.start.elapsed().as_secs_f64().max(0.001);
        let line = match self.total {
            Some(t) if t > 0 => {
                let done = (s.selected as f64 / t as f64).min(1.0);
                let filled = (done * 30.0) as usize;
                format!(
                    "\rreplay [{}{}] {}/{t} read, {} acked, {rate:.0}/s ",
                    "#".repeat(filled),
                    " ".repeat(30 - filled),
                    s.selected,
                    s.acknowledged
                )
            }
            _ => format!(
                "\rreplay: {} read, {} acked, {rate:.0}/s ",
                s.selected, s.acknowledged
            ),
        };
        let mut err = std::io::stderr();
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
    }
}

/// Mark acknowledged FAILED and PENDING rows PROCESSED.
async fn mark(client: &Client, cfg: &Config, ids: &mut Vec<i64>, s: &mut Summary) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let c = &cfg.outbox.columns;
    let sql = format!(
        "WITH old AS (SELECT {id}, {st} AS was FROM {t} WHERE {id} = ANY($1) AND {st} IN ('FAILED', 'PENDING') FOR UPDATE) \
         UPDATE {t} o SET {st} = 'PROCESSED', {pa} = now(), \
             {rc} = o.{rc} + CASE WHEN old.was = 'FAILED' THEN 1 ELSE 0 END \
         FROM old WHERE o.{id} = old.{id} RETURNING old.was",
        id = c.id,
        st = c.status,
        t = cfg.outbox.table,
        pa = c.processed_at,
        rc = c.retry_count,
    );
    let rows = client
        .query(&sql, &[&*ids])
        .await
        .map_err(|e| RelayError::postgres("marking replayed rows PROCESSED", e))?;
    for r in rows {
        if r.get::<_, String>(0) == "FAILED" {
            s.failed_to_processed += 1;
        } else {
            s.pending_to_processed += 1;
        }
    }
    ids.clear();
    Ok(())
}

/// Replay what `args` selects. `stop` becoming true ends the run early
/// (what is in flight is still awaited and marked).
pub async fn run(
    client: &Client,
    cfg: &Config,
    args: &ReplayArgs,
    mut stop: watch::Receiver<bool>,
) -> Result<Outcome> {
    // `full` covers every table (the slot recovery spans them all); `cfg`
    // is the selected table's view from here on.
    let full = cfg;
    let view = select_table(cfg, args.table.as_deref())?;
    let cfg = &view;
    if args.ids.is_none() && args.since.is_none() && args.until.is_none() && args.status.is_none() {
        return Err(RelayError::Config(ConfigError::new(
            "replay",
            "select rows with at least one of --ids, --since, --until, --status",
        )));
    }
    if let Some(t) = &args.topic {
        validate_topic(t).map_err(|m| RelayError::Config(ConfigError::new("--topic", m)))?;
    }
    check_times(client, args).await?;
    let started = Instant::now();
    let template = TopicTemplate::parse(&cfg.kafka.topic_template)
        .map_err(|m| ConfigError::new("kafka.topic-template", m))?;
    let covered = coverage(client, cfg).await?;
    let reader = build_reader(cfg, args, &covered)?;
    let mut progress = if std::io::stderr().is_terminal() {
        Some(Progress {
            total: Some(reader.count(client).await?),
            last: Instant::now(),
            start: Instant::now(),
        })
    } else {
        None
    };
    let mut s = Summary {
        dry_run: args.dry_run,
        ..Default::default()
    };
    let mut producer = if args.dry_run {
        None
    } else {
        Some(Publisher::new(cfg)?)
    };
    let (_, run_text) = now_text();
    // The message shape of `kafka.format` (raw, or CloudEvents), as the stream builds it.
    let cloudevents = crate::sink::cloudevents::CloudEvents::new(
        cfg.kafka.format,
        &cfg.kafka.cloudevents,
        &cfg.outbox_table().name,
    )?;
    let max_in_flight = cfg.kafka.max_in_flight.max(1);
    let page_size = i64::from(cfg.relay.batch_size);
    let mut in_flight = 0usize;
    let mut acked: Vec<i64> = Vec::new();
    let mut error: Option<RelayError> = None;
    let mut after = i64::MIN;

    // Handle one delivery report.
    fn on_report(
        d: Delivery,
        in_flight: &mut usize,
        acked: &mut Vec<i64>,
        s: &mut Summary,
        error: &mut Option<RelayError>,
    ) {
        *in_flight -= 1;
        match d.result {
            Ok(_) => {
                s.acknowledged += 1;
                acked.push(d.tag.row_id);
            }
            Err(failed) => {
                if error.is_none() {
                    *error = Some(RelayError::sink(
                        format!("replaying outbox row id={}", d.tag.row_id),
                        failed.error,
                    ));
                }
            }
        }
    }

    'pages: loop {
        let rows = match reader.page(client, after, page_size).await {
            Ok(r) => r,
            Err(e) => {
                error = Some(e);
                break;
            }
        };
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let (id, _status, rec) = reader.decode(row);
            after = id;
            s.selected += 1;
            s.ids = Some(s.ids.map_or((id, id), |(a, _)| (a, id)));
            let routed = rec.and_then(|mut rec| {
                let topic = args
                    .topic
                    .clone()
                    .or_else(|| rec.topic.clone())
                    .unwrap_or_else(|| {
                        template.render(&RouteFields {
                            aggregate_type: &rec.aggregate_type,
                            event_type: &rec.event_type,
                            table: &cfg.outbox_table().name,
                        })
                    });
                validate_topic(&topic)?;
                if rec.payload.len() > cfg.relay.max_payload_bytes {
                    return Err(format!(
                        "event_data is over relay.max-payload-bytes = {}",
                        cfg.relay.max_payload_bytes
                    ));
                }
                rec.headers
                    .push((REPLAY_HEADER.to_string(), Bytes::from(run_text.clone())));
                Ok((rec, topic))
            });
            let (rec, topic) = match routed {
                Ok(r) => r,
                Err(reason) => {
                    s.rejected.push(Rejected { id, reason });
                    continue;
                }
            };
            let Some((publisher, reports)) = producer.as_mut() else {
                // Dry run: what would be sent.
                *s.topics.entry(topic).or_default() += 1;
                s.sent += 1;
                continue;
            };
            // Wait for room in the window and for the rate's schedule.
            let due = (args.rate > 0).then(|| {
                tokio::time::Instant::from_std(started)
                    + Duration::from_secs_f64(s.sent as f64 / f64::from(args.rate))
            });
            loop {
                while let Ok(d) = reports.try_recv() {
                    on_report(d, &mut in_flight, &mut acked, &mut s, &mut error);
                }
                if error.is_some() || *stop.borrow() {
                    s.interrupted = error.is_none();
                    break 'pages;
                }
                let on_time = due.is_none_or(|d| tokio::time::Instant::now() >= d);
                if in_flight < max_in_flight && on_time {
                    break;
                }
                tokio::select! {
                    Some(d) = reports.recv(), if in_flight > 0 => {
                        on_report(d, &mut in_flight, &mut acked, &mut s, &mut error);
                    }
                    _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if !on_time => {}
                    _ = stop.changed() => {}
                }
            }
            if let Err(e) = publisher.ensure_topic(&topic).await {
                error = Some(e);
                break 'pages;
            }
            let (millis, commit_text) = now_text();
            let mut meta = TxnMeta::new(0, 0).with_cloudevents(cloudevents.clone());
            meta.lsn_text = "replay".into();
            meta.commit_unix_millis = millis;
            meta.commit_text = commit_text;
            let mut tag = MsgTag::first(0, id, millis);
            loop {
                match publisher.send(&rec, &meta, &topic, tag) {
                    Ok(()) => break,
                    Err((SendError::QueueFull, t)) => {
                        tag = t;
                        if let Some(d) = reports.recv().await {
                            on_report(d, &mut in_flight, &mut acked, &mut s, &mut error);
                        }
                    }
                    Err((SendError::Refused(k), _)) => {
                        error = Some(RelayError::sink(format!("producing outbox row id={id}"), k));
                        break 'pages;
                    }
                }
            }
            in_flight += 1;
            s.sent += 1;
            *s.topics.entry(topic).or_default() += 1;
            if let Some(p) = progress.as_mut() {
                p.show(&s, false);
            }
            if acked.len() >= page_size as usize {
                if let Err(e) = mark(client, cfg, &mut acked, &mut s).await {
                    error = Some(e);
                    break 'pages;
                }
            }
        }
        if let Some(p) = progress.as_mut() {
            p.show(&s, false);
        }
    }
    // Await what is in flight (librdkafka fails a message after
    // message.timeout.ms, so this ends).
    if let Some((_, reports)) = producer.as_mut() {
        while in_flight > 0 {
            match reports.recv().await {
                Some(d) => on_report(d, &mut in_flight, &mut acked, &mut s, &mut error),
                None => break,
            }
        }
    }
    if let Err(e) = mark(client, cfg, &mut acked, &mut s).await {
        error.get_or_insert(e);
    }
    if let Some(p) = progress.as_mut() {
        p.show(&s, true);
        eprintln!();
    }
    if !args.dry_run && error.is_none() && !s.interrupted {
        s.recovery_closed = crate::recovery::close_if_done(client, full).await?;
    }
    s.seconds = started.elapsed().as_secs_f64();
    Ok(Outcome { summary: s, error })
}

/// `outbox-relay replay`: run, print the summary line (JSON with `json`),
/// fail when anything was left undone.
pub async fn execute(cfg: &Config, args: &ReplayArgs, json: bool) -> Result<()> {
    let client = crate::source::control::connect(cfg, "replay").await?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                let _ = tx.send(true);
            }
            // Keep the sender: a dropped one would wake the run's waits at once.
            Err(_) => std::future::pending::<()>().await,
        }
    });
    let out = run(&client, cfg, args, rx).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&out.summary).unwrap_or_default()
        );
    } else {
        for r in &out.summary.rejected {
            eprintln!("outbox row id={} not replayed: {}", r.id, r.reason);
        }
        println!("{}", out.summary);
    }
    if let Some(e) = out.error {
        return Err(e);
    }
    if !out.summary.rejected.is_empty() {
        return Err(RelayError::Environment(format!(
            "{} row(s) could not be replayed (listed above); fix them and replay again",
            out.summary.rejected.len()
        )));
    }
    if out.summary.interrupted {
        return Err(RelayError::Environment(
            "replay interrupted; run it again to send the rest".into(),
        ));
    }
    Ok(())
}

/// `dlq replay --id N`: re-publish FAILED row `id`; returns the topic it
/// went to. The row must exist and be FAILED.
pub async fn replay(client: &Client, cfg: &Config, id: i64, table: Option<&str>) -> Result<String> {
    let full = cfg;
    let view = select_table(cfg, table)?;
    let cfg = &view;
    let c = &cfg.outbox.columns;
    let row = client
        .query_opt(
            &format!(
                "SELECT {st} FROM {t} WHERE {idc} = $1",
                st = c.status,
                t = cfg.outbox.table,
                idc = c.id
            ),
            &[&id],
        )
        .await
        .map_err(|e| RelayError::postgres("reading the row to replay", e))?
        .ok_or_else(|| RelayError::Environment(format!("outbox row id={id} does not exist")))?;
    let status: String = row.get(0);
    if status != "FAILED" {
        return Err(RelayError::Environment(format!(
            "outbox row id={id} is {status}, not FAILED: only dead-lettered rows are replayed"
        )));
    }
    let (_tx, rx) = watch::channel(false);
    let mut args = ReplayArgs::failed_row(id);
    args.table = table.map(str::to_string);
    let out = run(client, full, &args, rx).await?;
    if let Some(e) = out.error {
        return Err(e);
    }
    if let Some(r) = out.summary.rejected.into_iter().next() {
        return Err(RelayError::RowRejected {
            row_id: id,
            reason: r.reason,
        });
    }
    out.summary.topics.into_keys().next().ok_or_else(|| {
        RelayError::Environment(format!("outbox row id={id} changed while replaying"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_ranges() {
        let r = |s: &str| s.parse::<IdRange>();
        assert_eq!(
            r("5..9"),
            Ok(IdRange {
                from: Some(5),
                to: Some(9)
            })
        );
        assert_eq!(
            r("5..=9"),
            Ok(IdRange {
                from: Some(5),
                to: Some(9)
            })
        );
        assert_eq!(
            r("5.."),
            Ok(IdRange {
                from: Some(5),
                to: None
            })
        );
        assert_eq!(
            r("..9"),
            Ok(IdRange {
                from: None,
                to: Some(9)
            })
        );
        assert_eq!(
            r("7"),
            Ok(IdRange {
                from: Some(7),
                to: Some(7)
            })
        );
        assert!(r("9..5").is_err());
        assert!(r("a..b").is_err());
        assert!(r("").is_err());
    }

    #[test]
    fn summary_line() {
        let mut s = Summary {
            selected: 3,
            ids: Some((4, 9)),
            sent: 3,
            acknowledged: 3,
            failed_to_processed: 1,
            pending_to_processed: 2,
            seconds: 0.5,
            ..Default::default()
        };
        s.topics.insert("outbox.order".into(), 3);
        assert_eq!(
            s.to_string(),
            "replay: 3 rows selected (ids 4..9), 3 sent, 3 acknowledged, 1 FAILED and 2 PENDING marked PROCESSED, 0 rejected; topics: outbox.order=3; 0.5s"
        );
        s.dry_run = true;
        assert_eq!(
            s.to_string(),
            "replay (dry run): 3 rows selected (ids 4..9), 3 would be sent, 0 rejected; topics: outbox.order=3; nothing sent"
        );
    }
}

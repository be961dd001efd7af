//! Selecting the rows: the keyset-paged query the selectors turn into,
//! decoding each row through the stream's own outbox mapping (so a replayed
//! row is checked exactly as a streamed one), what the durable position
//! proves published (for `--status PENDING`), and the check of
//! `--since`/`--until` by PostgreSQL's own timestamp parser.

use std::sync::Arc;

use bytes::Bytes;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::{ReplayArgs, StatusFilter};
use crate::config::Config;
use crate::decode::{
    OutboxMapping, OutboxRecord, Relation, RelationColumn, ResolvedRelation, Tuple, Value,
};
use crate::error::{ConfigError, RelayError, Result};

/// The rows of a page, decoded.
pub(super) struct Reader {
    names: Vec<String>,
    resolved: ResolvedRelation,
    sql: String,
    count_sql: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

pub(super) fn build_reader(cfg: &Config, args: &ReplayArgs, covered: &Coverage) -> Result<Reader> {
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
    pub(super) async fn page(&self, client: &Client, after: i64, limit: i64) -> Result<Vec<Row>> {
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

    pub(super) async fn count(&self, client: &Client) -> Result<i64> {
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
    pub(super) fn decode(
        &self,
        row: &Row,
    ) -> (i64, String, std::result::Result<OutboxRecord, String>) {
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
pub(super) struct Coverage {
    /// The janitor's snapshot, when the durable position has passed it.
    janitor_snapshot: Option<String>,
    recovery: crate::recovery::RecoveryState,
}

pub(super) async fn coverage(client: &Client, cfg: &Config) -> Result<Coverage> {
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
pub(super) async fn check_times(client: &Client, args: &ReplayArgs) -> Result<()> {
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

//! `outbox-relay dlq replay --id N`: re-publish one FAILED row once its
//! cause is fixed (topic created, limit raised, row corrected in place).
//!
//! The row is read from the table, not from the DLQ topic, so an operator can
//! fix it with an UPDATE first. It goes through the same decoding, routing
//! and checks as the stream (the row's column values are fed to the same
//! mapping), is produced with the same headers (`lsn` = `replay`), and is
//! marked PROCESSED only after the broker acknowledged it. Replayed rows are
//! out of commit order by nature.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio_postgres::Client;

use crate::config::Config;
use crate::decode::{OutboxMapping, OutboxRecord, Relation, RelationColumn, Tuple, Value};
use crate::error::{RelayError, Result};
use crate::sink::message::TxnMeta;
use crate::sink::route::{validate_topic, RouteFields, TopicTemplate};
use crate::sink::{MsgTag, Publisher, SendError};

/// Read FAILED row `id` as the stream would have decoded it.
pub async fn load_failed_row(client: &Client, cfg: &Config, id: i64) -> Result<OutboxRecord> {
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
    let select: Vec<String> = names.iter().map(|n| format!("{n}::text")).collect();
    let sql = format!(
        "SELECT {}, {st} FROM {t} WHERE {idc} = $1",
        select.join(", "),
        st = c.status,
        t = cfg.outbox.table,
        idc = c.id
    );
    let row = client
        .query_opt(&sql, &[&id])
        .await
        .map_err(|e| RelayError::postgres("reading the row to replay", e))?
        .ok_or_else(|| RelayError::Environment(format!("outbox row id={id} does not exist")))?;
    let status: String = row.get(names.len());
    if status != "FAILED" {
        return Err(RelayError::Environment(format!(
            "outbox row id={id} is {status}, not FAILED: only dead-lettered rows are replayed"
        )));
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
    let tuple = Tuple(
        (0..names.len())
            .map(|i| match row.get::<_, Option<String>>(i) {
                Some(s) => Value::Text(Bytes::from(s)),
                None => Value::Null,
            })
            .collect(),
    );
    let resolved = OutboxMapping::new(table, cfg.column_names())
        .resolve(&relation)
        .map_err(|e| {
            RelayError::Environment(format!("outbox table does not match outbox.columns: {e}"))
        })?
        .ok_or_else(|| RelayError::Environment("outbox table name mismatch".into()))?;
    Ok(resolved.record(&tuple)?)
}

/// Re-publish FAILED row `id`; returns the topic it went to.
pub async fn replay(client: &Client, cfg: &Config, id: i64) -> Result<String> {
    let rec = load_failed_row(client, cfg, id).await?;
    let template = TopicTemplate::parse(&cfg.kafka.topic_template)
        .map_err(|m| crate::error::ConfigError::new("kafka.topic-template", m))?;
    let topic = rec.topic.clone().unwrap_or_else(|| {
        template.render(&RouteFields {
            aggregate_type: &rec.aggregate_type,
            event_type: &rec.event_type,
            table: &cfg.outbox_table().name,
        })
    });
    validate_topic(&topic).map_err(|reason| RelayError::RowRejected { row_id: id, reason })?;
    if rec.payload.len() > cfg.relay.max_payload_bytes {
        return Err(RelayError::RowRejected {
            row_id: id,
            reason: format!(
                "event_data is still over relay.max-payload-bytes = {}",
                cfg.relay.max_payload_bytes
            ),
        });
    }
    let (mut publisher, mut reports) = Publisher::new(cfg)?;
    publisher.ensure_topic(&topic).await?;
    let cloudevents = crate::sink::cloudevents::CloudEvents::new(
        cfg.kafka.format,
        &cfg.kafka.cloudevents,
        &cfg.outbox_table().name,
    )?;
    let mut meta = TxnMeta::new(0, 0).with_cloudevents(cloudevents);
    meta.lsn_text = "replay".into();
    meta.commit_unix_millis = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    meta.commit_text = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    let tag = MsgTag::first(0, id, meta.commit_unix_millis);
    publisher
        .send(&rec, &meta, &topic, tag)
        .map_err(|(e, _)| match e {
            SendError::QueueFull => RelayError::Timeout("producer queue full".into()),
            SendError::Refused(k) => RelayError::sink(format!("producing outbox row id={id}"), k),
        })?;
    let report = tokio::time::timeout(Duration::from_secs(60), reports.recv())
        .await
        .map_err(|_| {
            RelayError::Timeout(format!("no broker ack for outbox row id={id} within 60 s"))
        })?
        .ok_or_else(|| RelayError::Timeout("producer closed".into()))?;
    if let Err(failed) = report.result {
        return Err(RelayError::sink(
            format!("replaying outbox row id={id}"),
            failed.error,
        ));
    }
    let c = &cfg.outbox.columns;
    let sql = format!(
        "UPDATE {t} SET {st} = 'PROCESSED', {pa} = now(), {rc} = {rc} + 1 WHERE {idc} = $1",
        t = cfg.outbox.table,
        st = c.status,
        pa = c.processed_at,
        rc = c.retry_count,
        idc = c.id
    );
    client
        .execute(&sql, &[&id])
        .await
        .map_err(|e| RelayError::postgres("marking the replayed row PROCESSED", e))?;
    Ok(topic)
}

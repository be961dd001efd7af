//! The PostgreSQL side of the configuration: the connection and
//! replication objects (`[postgres]`), and the outbox table(s) with their
//! column names (`[outbox]`, `[[outbox.tables]]`). Kept apart from
//! [`super::Config`]'s loading so each section struct sits with its defaults,
//! the one place a default is written.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// PostgreSQL connection and replication objects.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct PostgresConfig {
    /// libpq-style URL or key=value string; used for SQL and replication.
    /// TLS as in libpq: `sslmode` (disable, prefer, require, verify-ca,
    /// verify-full), `sslrootcert` (a PEM file or `system`), `sslcert` +
    /// `sslkey` — see [`crate::source::tls`].
    pub url: Option<String>,
    /// Logical replication slot (pgoutput) the relay owns.
    pub slot: String,
    /// Publication carrying inserts of the outbox table only.
    pub publication: String,
    /// How long one connection attempt may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: None,
            slot: "outbox_relay".into(),
            publication: "outbox_relay_pub".into(),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Outbox table and its columns.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct OutboxConfig {
    /// `schema.table` of the outbox.
    pub table: String,
    /// `schema.table` where the relay stores its durable LSN.
    pub checkpoint_table: String,
    /// SQL function created by `init` that applications may call to emit.
    pub emit_function: String,
    /// Column names.
    pub columns: ColumnsConfig,
    /// Several outbox tables in one relay (`[[outbox.tables]]`), all in one
    /// publication, one slot, one commit order. Empty: the single table
    /// above. When set it is the whole list, and `outbox.table` stays unset.
    pub tables: Vec<OutboxTableConfig>,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            table: "public.outbox".into(),
            checkpoint_table: "public.outbox_relay_checkpoint".into(),
            emit_function: "public.outbox_emit".into(),
            columns: ColumnsConfig::default(),
            tables: Vec::new(),
        }
    }
}

/// One entry of `[[outbox.tables]]`: a table and what differs from the
/// shared settings. [`Config::per_table`](super::Config::per_table) turns each into the single-table
/// view the janitor, archive, table health, replay and `init` work with.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OutboxTableConfig {
    /// `schema.table` of this outbox.
    pub table: String,
    /// Its column names; absent: `[outbox.columns]`. A present table is a
    /// whole mapping: keys it leaves out take the built-in defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<ColumnsConfig>,
    /// Its topic template; absent: `kafka.topic-template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_template: Option<String>,
    /// The emit function `init` creates for it; absent:
    /// `<schema>.<table>_emit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emit_function: Option<String>,
    /// Its archive table (see `cleanup.archive-table`); absent: rows are
    /// deleted. Retention: `cleanup.archive-retention-days`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_table: Option<String>,
}

/// Column names of the outbox table. An empty `headers` or `topic` means the
/// table has no such column.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ColumnsConfig {
    /// Primary key, bigint.
    pub id: String,
    /// Routes to the topic through the template.
    pub aggregate_type: String,
    /// Kafka message key: keeps one aggregate's events in one partition.
    pub aggregate_id: String,
    /// Copied into the `event_type` header.
    pub event_type: String,
    /// jsonb payload, sent unchanged as the message value.
    pub payload: String,
    /// Optional jsonb object whose entries become Kafka headers.
    pub headers: String,
    /// Optional per-row topic override.
    pub topic: String,
    /// PENDING | PROCESSED | FAILED, maintained by the janitor.
    pub status: String,
    /// Insert time.
    pub created_at: String,
    /// When the janitor marked the row processed.
    pub processed_at: String,
    /// Publish attempts for rows that failed.
    pub retry_count: String,
    /// Schema version of the event, for consumers.
    pub version: String,
    /// `xid8` of the inserting transaction (`DEFAULT pg_current_xact_id()`):
    /// lets the janitor tell which rows the checkpoint covers. Empty: the
    /// janitor does not mark rows.
    pub txid: String,
}

impl Default for ColumnsConfig {
    fn default() -> Self {
        Self {
            id: "id".into(),
            aggregate_type: "aggregate_type".into(),
            aggregate_id: "aggregate_id".into(),
            event_type: "event_type".into(),
            payload: "event_data".into(),
            headers: "headers".into(),
            topic: "topic".into(),
            status: "status".into(),
            created_at: "created_at".into(),
            processed_at: "processed_at".into(),
            retry_count: "retry_count".into(),
            version: "version".into(),
            txid: "txid".into(),
        }
    }
}

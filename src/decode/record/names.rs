//! The outbox table's configured names. Configuration (`crate::config`) and
//! the archive use them too, so these plain values stand apart from the
//! decoding logic.

use std::fmt;
/// Schema-qualified table name, e.g. `public.outbox`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    /// Schema, e.g. `public`.
    pub schema: String,
    /// Table name, e.g. `outbox`.
    pub name: String,
}

impl TableName {
    /// Build a table name.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }
}

impl Default for TableName {
    /// `public.outbox`.
    fn default() -> Self {
        Self::new("public", "outbox")
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Names of the outbox table's columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnNames {
    /// Row id (`bigint`), required.
    pub id: String,
    /// Aggregate type, required.
    pub aggregate_type: String,
    /// Aggregate id (the Kafka key), required.
    pub aggregate_id: String,
    /// Event type, required.
    pub event_type: String,
    /// Event payload (the Kafka value), required.
    pub payload: String,
    /// Optional `jsonb` object of Kafka headers; `None` disables headers.
    pub headers: Option<String>,
    /// Optional per-row topic override; `None` disables it.
    pub topic: Option<String>,
    /// Column holding the event id (CloudEvents `id`); `None`: not read.
    /// When set, the column is required and must not be NULL.
    pub event_id: Option<String>,
}

impl Default for ColumnNames {
    /// `id`, `aggregate_type`, `aggregate_id`, `event_type`, `event_data`,
    /// `headers`, `topic`.
    fn default() -> Self {
        Self {
            id: "id".to_owned(),
            aggregate_type: "aggregate_type".to_owned(),
            aggregate_id: "aggregate_id".to_owned(),
            event_type: "event_type".to_owned(),
            payload: "event_data".to_owned(),
            headers: Some("headers".to_owned()),
            topic: Some("topic".to_owned()),
            event_id: None,
        }
    }
}

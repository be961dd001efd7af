//! Emitting events from Rust applications on tokio-postgres.
//!
//! The whole point of the outbox: the event row is inserted by the same
//! transaction as the business change, so either both commit or neither.
//!
//! ```no_run
//! # async fn demo(client: &mut tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
//! use outbox_relay::emit::{Emitter, OutboxEvent};
//! use serde_json::json;
//!
//! let emitter = Emitter::default(); // or Emitter::from_config(&cfg)
//! let tx = client.transaction().await?;
//! tx.execute("INSERT INTO orders (id, total) VALUES ($1, $2)", &[&"o-1", &42i32]).await?;
//! let id = emitter
//!     .emit(&tx, &OutboxEvent::new("order", "o-1", "OrderCreated", json!({"total": 42}))
//!         .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
//!     .await?;
//! tx.commit().await?; // the relay publishes the event only now
//! # let _ = id; Ok(()) }
//! ```

use serde_json::{Map, Value};
use tokio_postgres::GenericClient;

use crate::config::{ColumnsConfig, Config};

/// One event to emit.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    /// Routes to the topic (`outbox.{aggregate_type}` by default).
    pub aggregate_type: String,
    /// Becomes the Kafka key: events of one aggregate stay in order.
    pub aggregate_id: String,
    /// Copied to the `event_type` header.
    pub event_type: String,
    /// The message value, sent unchanged.
    pub payload: Value,
    /// Extra Kafka headers (e.g. `traceparent`).
    pub headers: Map<String, Value>,
    /// Overrides the topic for this event.
    pub topic: Option<String>,
}

impl OutboxEvent {
    /// An event with no extra headers and the default topic.
    pub fn new(
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
        payload: Value,
    ) -> Self {
        Self {
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            event_type: event_type.into(),
            payload,
            headers: Map::new(),
            topic: None,
        }
    }

    /// Add a header that the relay passes through to Kafka.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .insert(name.into(), Value::String(value.into()));
        self
    }

    /// Send this event to `topic` instead of the template's.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }
}

/// Inserts outbox rows; holds the INSERT for the configured table layout.
#[derive(Debug, Clone)]
pub struct Emitter {
    sql: String,
    has_headers: bool,
    has_topic: bool,
}

impl Default for Emitter {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

impl Emitter {
    /// For the table and columns of `cfg.outbox` (with `outbox.tables`: the
    /// first entry; [`Emitter::for_table`] for the others).
    pub fn from_config(cfg: &Config) -> Self {
        let view = cfg.per_table().swap_remove(0);
        Self::new(&view.outbox.table, &view.outbox.columns)
    }

    /// For the outbox table `table` (`schema.table`) of `cfg`, `None` if it
    /// is not one.
    pub fn for_table(cfg: &Config, table: &str) -> Option<Self> {
        let view = cfg.table_view(table)?;
        Some(Self::new(&view.outbox.table, &view.outbox.columns))
    }

    /// For an explicit table and column layout.
    pub fn new(table: &str, c: &ColumnsConfig) -> Self {
        let mut cols = vec![
            &c.aggregate_type,
            &c.aggregate_id,
            &c.event_type,
            &c.payload,
        ];
        let has_headers = !c.headers.is_empty();
        let has_topic = !c.topic.is_empty();
        if has_headers {
            cols.push(&c.headers);
        }
        if has_topic {
            cols.push(&c.topic);
        }
        let params: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
        let cols: Vec<&str> = cols.iter().map(|s| s.as_str()).collect();
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES ({}) RETURNING {}",
            cols.join(", "),
            params.join(", "),
            c.id
        );
        Self {
            sql,
            has_headers,
            has_topic,
        }
    }

    /// Insert `event` with `client` — pass the caller's open transaction so
    /// the event commits or rolls back with the business change. Returns the
    /// new row's id.
    pub async fn emit<C: GenericClient + Sync>(
        &self,
        client: &C,
        event: &OutboxEvent,
    ) -> Result<i64, tokio_postgres::Error> {
        let headers = (!event.headers.is_empty()).then(|| Value::Object(event.headers.clone()));
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
            &event.aggregate_type,
            &event.aggregate_id,
            &event.event_type,
            &event.payload,
        ];
        if self.has_headers {
            params.push(&headers);
        }
        if self.has_topic {
            params.push(&event.topic);
        }
        let row = client.query_one(self.sql.as_str(), &params).await?;
        Ok(row.get(0))
    }
}

//! The checkpoint table in PostgreSQL, one row per slot.
//!
//! Monotonic at the storage layer: the upsert only replaces a lower LSN, so
//! two relays racing on one slot, or a delayed write, can never move the
//! durable position backwards.

use tokio_postgres::Client;

use super::CheckpointStore;
use crate::decode::TableName;
use crate::error::{RelayError, Result};
use crate::sink::message::{format_lsn, parse_lsn};

/// Checkpoint rows keyed by slot name.
pub struct PgCheckpointStore {
    client: Client,
    slot: String,
    load_sql: String,
    save_sql: String,
}

impl PgCheckpointStore {
    /// Use `client` (a dedicated control-plane connection) for `slot`.
    pub fn new(client: Client, table: &TableName, slot: &str) -> Self {
        let t = format!("{}.{}", table.schema, table.name);
        Self {
            client,
            slot: slot.to_string(),
            load_sql: format!("SELECT lsn::text FROM {t} WHERE slot_name = $1"),
            save_sql: format!(
                "INSERT INTO {t} AS c (slot_name, lsn, updated_at) VALUES ($1, $2::text::pg_lsn, now()) \
                 ON CONFLICT (slot_name) DO UPDATE SET lsn = EXCLUDED.lsn, updated_at = now() \
                 WHERE c.lsn < EXCLUDED.lsn"
            ),
        }
    }
}

impl PgCheckpointStore {
    /// The control-plane connection, shared with failure bookkeeping.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl CheckpointStore for PgCheckpointStore {
    async fn load(&self) -> Result<Option<u64>> {
        let row = self
            .client
            .query_opt(&self.load_sql, &[&self.slot])
            .await
            .map_err(|e| RelayError::postgres("loading checkpoint", e))?;
        match row {
            None => Ok(None),
            Some(r) => {
                let text: String = r.get(0);
                parse_lsn(&text).map(Some).ok_or_else(|| {
                    RelayError::Environment(format!(
                        "checkpoint table holds an invalid LSN {text:?}"
                    ))
                })
            }
        }
    }

    async fn save(&self, lsn: u64) -> Result<()> {
        self.client
            .execute(&self.save_sql, &[&self.slot, &format_lsn(lsn)])
            .await
            .map_err(|e| RelayError::postgres("saving checkpoint", e))?;
        Ok(())
    }
}

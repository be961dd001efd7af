//! The checkpoint table in PostgreSQL, one row per slot.
//!
//! Monotonic at the storage layer: the upsert only replaces a lower LSN, so
//! two relays racing on one slot, or a delayed write, can never move the
//! durable position backwards.
//!
//! The row is read by relays of other releases too (a rolling upgrade, a
//! standby of the previous release taking over): its meaning is versioned by
//! the `format` column ([`FORMAT`]). A relay loads every format up to its own
//! — a table without the column (created by an older `init`) is format 1 —
//! and refuses a newer one with an error naming it, instead of misreading a
//! position. A release that changes what a column means raises [`FORMAT`]
//! and writes it; adding a column others may ignore does not.

use tokio_postgres::Client;

use super::CheckpointStore;
use crate::decode::TableName;
use crate::error::{RelayError, Result};
use crate::sink::message::{format_lsn, parse_lsn};

/// The checkpoint row format this release writes and the newest it reads:
/// `lsn` is the end LSN of the last durable commit (invariant 2).
pub const FORMAT: i32 = 1;

/// Checkpoint rows keyed by slot name.
pub struct PgCheckpointStore {
    client: Client,
    slot: String,
    /// `schema.name`, for errors.
    table: String,
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
            // `to_jsonb` reads the format whether or not an older `init`
            // created the column.
            load_sql: format!(
                "SELECT c.lsn::text, (to_jsonb(c) ->> 'format')::int FROM {t} c WHERE c.slot_name = $1"
            ),
            table: t.clone(),
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
                let format: Option<i32> = r.get(1);
                check_format(format.unwrap_or(1), &self.table, &self.slot)?;
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

/// Refuse a row written in a format newer than this release reads.
pub fn check_format(format: i32, table: &str, slot: &str) -> Result<()> {
    if format > FORMAT {
        return Err(RelayError::Environment(format!(
            "the checkpoint row of slot {slot:?} in {table} has format {format}, newer than this \
             relay reads (up to {FORMAT}): a newer release wrote it; run that release or a later \
             one ({table}.format)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_formats_are_refused_by_name() {
        assert!(check_format(1, "public.ck", "s").is_ok());
        let e = check_format(2, "public.ck", "s").unwrap_err().to_string();
        assert!(
            e.contains("format 2") && e.contains("public.ck.format"),
            "{e}"
        );
    }
}

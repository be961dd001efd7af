//! `outbox-relay dlq replay --id N`: the one-row case of a replay, for a
//! dead-lettered row. It checks first that the row exists and is FAILED
//! (so an operator cannot re-send a healthy row by mistake), then runs the
//! ordinary replay on exactly that row and reports the topic it went to.

use tokio::sync::watch;
use tokio_postgres::Client;

use super::{run, select_table, ReplayArgs};
use crate::config::Config;
use crate::error::{RelayError, Result};

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

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
//!
//! Files: `args` (the selectors as parsed), `select` (the query, decoding,
//! what the checkpoint covers), `publish` (the run: send, wait, mark),
//! `report` (summary, outcome, progress) and `dlq` (`dlq replay --id N`).
//! This file is the `replay` command's entry point; every public item is
//! re-exported here, so paths stay `crate::replay::X`.

mod args;
mod dlq;
mod publish;
mod report;
mod select;

use tokio::sync::watch;

use crate::config::Config;
use crate::error::{RelayError, Result};

pub use args::{select_table, IdRange, ReplayArgs, StatusFilter};
pub use dlq::replay;
pub use publish::run;
pub use report::{Outcome, Rejected, Summary};

/// Header set on every replayed message: when the replay run started.
pub const REPLAY_HEADER: &str = "replay";

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

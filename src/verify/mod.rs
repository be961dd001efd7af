//! `outbox-relay verify`: proof from the broker that nothing was lost,
//! doubled or reordered.
//!
//! 1. [`window`]: read the selected rows (`--since T`, `--ids A..B`, or the
//!    whole table) under one snapshot, with the WAL position that snapshot
//!    covers; the rows go into the [`ledger`] as bits, their routes give the
//!    topics to read.
//! 2. Wait (`--wait`) until the relay's durable position passes that WAL
//!    position: from then on every window row was acknowledged or
//!    dead-lettered, so one that is not on the broker is missing, not late.
//!    If it does not get there, rows not found are reported all the same,
//!    marked unconfirmed.
//! 3. [`broker`]: stream every partition of those topics, from the first
//!    offset at the window's start time (`read_committed`), then the DLQ
//!    topic, into the ledger; ids it cannot place are looked up in the
//!    table in batches.
//! 4. Report: missing rows (not counting FAILED rows found in the DLQ),
//!    duplicates with counts, per-partition order violations, foreign
//!    messages. Success (exit 0) means nothing missing or reordered;
//!    duplicates are reported but allowed (at-least-once).
//!
//! Memory does not grow with the number of messages: see [`ledger`] and
//! [`broker`].

pub mod broker;
pub mod ledger;
mod report;
pub mod window;

pub use report::{render, verdict, RelayInfo, Report, TopicInfo, WindowInfo};

use std::collections::HashSet;
use std::io::IsTerminal;
use std::time::{Duration, SystemTime};

use tokio_postgres::Client;

use crate::config::Config;
use crate::error::{RelayError, Result};
use crate::sink::message::format_lsn;

use ledger::{Ledger, Position, Seen};
use window::Selection;

/// `verify`'s command line.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Check rows created at or after T: an RFC 3339 time
    /// (2024-05-01T12:00:00Z) or a duration meaning that long ago (2h).
    #[arg(long, value_name = "T", value_parser = window::parse_since)]
    pub since: Option<SystemTime>,
    /// Check rows with ids from A to B, inclusive.
    #[arg(long, value_name = "A..B", value_parser = window::parse_ids, conflicts_with = "since")]
    pub ids: Option<(i64, i64)>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the relay to confirm it handled every row of
    /// the window.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
}

impl VerifyArgs {
    fn selection(&self) -> Selection {
        match (self.since, self.ids) {
            (Some(t), _) => Selection::Since(t),
            (None, Some((a, b))) => Selection::Ids(a, b),
            (None, None) => Selection::All,
        }
    }
}

/// Messages read earlier than the window's start time, in case the topic
/// stamps messages with the broker's clock (`LogAppendTime`) or the
/// application set `created_at` itself.
pub const TIME_SLACK: Duration = Duration::from_secs(300);

/// Nothing at all from the broker for this long is an error.
const IDLE: Duration = Duration::from_secs(30);

/// Ids looked up in the table per statement.
const LOOKUP_BATCH: usize = 5000;

/// Run `verify` from the command line: print the report, fail (exit 1)
/// when something is missing or reordered.
///
/// With `outbox.tables` it checks the first table (verifying several at
/// once would need a table on every ledger entry; run one relay config per
/// table to verify the others).
pub async fn execute(cfg: &Config, args: &VerifyArgs) -> Result<()> {
    let view = cfg.per_table().swap_remove(0);
    let report = run(&view, args).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", render(&report));
    }
    if report.ok {
        Ok(())
    } else {
        Err(RelayError::Environment(format!(
            "verify: {}",
            verdict(&report)
        )))
    }
}

/// Compare the window's rows with the broker.
pub async fn run(cfg: &Config, args: &VerifyArgs) -> Result<Report> {
    let progress = progress_bar(args.json);
    let report = compare(cfg, args, &progress).await;
    // Also on an error, so its one line is not glued to a spinner.
    progress.finish_and_clear();
    report
}

async fn compare(
    cfg: &Config,
    args: &VerifyArgs,
    progress: &indicatif::ProgressBar,
) -> Result<Report> {
    let sel = args.selection();
    let mut client = crate::source::control::connect(cfg, "verify").await?;
    progress.set_message("reading the window's rows");
    let w = window::read(&mut client, cfg, sel).await?;
    let required = format_lsn(w.snapshot_lsn);
    let durable = window::wait_for_relay(&client, cfg, w.snapshot_lsn, args.wait, |pos| {
        progress.set_message(format!(
            "waiting for the relay's durable position to pass {required} (now {})",
            format_lsn(pos)
        ));
    })
    .await?;
    let confirmed = durable >= w.snapshot_lsn;
    if !confirmed {
        progress.suspend(|| {
            tracing::warn!(
                required = %format_lsn(w.snapshot_lsn),
                durable = %format_lsn(durable),
                "the relay has not confirmed the window within --wait: rows not found may still be in flight"
            )
        });
    }
    let start_ms = match sel {
        Selection::All => None,
        Selection::Since(t) => Some(unix_ms(t)),
        Selection::Ids(..) => w.first_created_ms,
    }
    .map(|ms| ms - TIME_SLACK.as_millis() as i64);
    let consumer = broker::consumer(cfg)?;
    let mut plans = Vec::new();
    for t in &w.topics {
        plans.push(broker::plan(&consumer, t, start_ms)?);
    }
    let has_rows = w.lo <= w.hi;
    let mut dlq_plan = broker::plan(&consumer, &cfg.kafka.dlq_topic, start_ms)?;
    if !has_rows {
        dlq_plan.ranges.clear(); // nothing in it could concern the window
    }
    let total: u64 = plans.iter().map(broker::Plan::messages).sum::<u64>() + dlq_plan.messages();
    progress.set_message("");
    progress.set_length(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "verify [{bar:40}] {human_pos}/{human_len} messages, {per_sec}, eta {eta}",
    ) {
        progress.set_style(style.progress_chars("=> "));
    }
    let mut ledger = w.ledger;
    let mut topics = Vec::new();
    for plan in &plans {
        let messages = read_main(plan, &mut ledger, &client, cfg, progress).await?;
        topics.push(topic_info(plan, messages));
    }
    let mut dlq_messages = 0;
    drop(consumer);
    let mut reader = broker::Reader::start(cfg, &dlq_plan)?;
    while let Some(m) = reader.next(IDLE).await? {
        ledger.observe_dlq(m.relay.id);
        dlq_messages += 1;
        progress.inc(1);
    }
    let findings = ledger.finish();
    let ok = findings.missing.count == 0 && findings.reordered.count == 0;
    Ok(Report {
        window: WindowInfo {
            selection: match sel {
                Selection::All => "all".into(),
                Selection::Since(t) => format!("since {}", humantime::format_rfc3339_millis(t)),
                Selection::Ids(a, b) => format!("ids {a}..{b}"),
            },
            rows: findings.rows,
            first_id: has_rows.then_some(w.lo),
            last_id: has_rows.then_some(w.hi),
        },
        relay: RelayInfo {
            required: format_lsn(w.snapshot_lsn),
            durable: format_lsn(durable),
            confirmed,
        },
        topics,
        dlq: topic_info(&dlq_plan, dlq_messages),
        findings,
        ok,
    })
}

/// Stream one main topic into the ledger, looking up unplaced ids.
async fn read_main(
    plan: &broker::Plan,
    ledger: &mut Ledger,
    client: &Client,
    cfg: &Config,
    progress: &indicatif::ProgressBar,
) -> Result<u64> {
    let mut reader = broker::Reader::start(cfg, plan)?;
    let mut pending: Vec<(Position, i64)> = Vec::new();
    let mut n = 0;
    while let Some(m) = reader.next(IDLE).await? {
        n += 1;
        progress.inc(1);
        let at = Position {
            topic: plan.topic.clone(),
            partition: m.partition,
            offset: m.offset,
        };
        if let Seen::Lookup(id) = ledger.observe(&at, m.relay) {
            pending.push((at, id));
            if pending.len() >= LOOKUP_BATCH {
                settle(&mut pending, ledger, client, cfg).await?;
            }
        }
    }
    settle(&mut pending, ledger, client, cfg).await?;
    Ok(n)
}

/// Look the pending ids up; those without a row are foreign.
async fn settle(
    pending: &mut Vec<(Position, i64)>,
    ledger: &mut Ledger,
    client: &Client,
    cfg: &Config,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = pending.iter().map(|(_, id)| *id).collect();
    let sql = format!(
        "SELECT {id} FROM {t} WHERE {id} = ANY($1)",
        id = cfg.outbox.columns.id,
        t = cfg.outbox.table
    );
    let found: HashSet<i64> = client
        .query(&sql, &[&ids])
        .await
        .map_err(|e| RelayError::postgres("looking up message ids", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (at, id) in pending.drain(..) {
        if !found.contains(&id) {
            ledger.unmatched(&at, id);
        }
    }
    Ok(())
}

fn topic_info(plan: &broker::Plan, messages: u64) -> TopicInfo {
    TopicInfo {
        topic: plan.topic.to_string(),
        exists: plan.exists,
        partitions: plan.partitions,
        messages,
    }
}

/// Progress on stderr when it is a terminal (and the report is not JSON
/// for a script), hidden otherwise: a spinner with a message while the
/// window is read and the relay awaited, then a bar over the messages.
fn progress_bar(json: bool) -> indicatif::ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("verify {spinner} {msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: VerifyArgs,
    }

    #[test]
    fn arguments() {
        let a = Cmd::try_parse_from(["x", "--ids", "5..9", "--json"])
            .unwrap()
            .args;
        assert_eq!(a.selection(), Selection::Ids(5, 9));
        assert!(a.json);
        assert_eq!(a.wait, Duration::from_secs(30));
        let a = Cmd::try_parse_from(["x", "--since", "2024-05-01T12:00:00Z", "--wait", "2s"])
            .unwrap()
            .args;
        assert!(matches!(a.selection(), Selection::Since(_)));
        assert_eq!(a.wait, Duration::from_secs(2));
        assert_eq!(
            Cmd::try_parse_from(["x"]).unwrap().args.selection(),
            Selection::All
        );
        assert!(Cmd::try_parse_from(["x", "--since", "1h", "--ids", "1..2"]).is_err());
        assert!(Cmd::try_parse_from(["x", "--ids", "9..5"]).is_err());
    }
}

//! The human-readable `status` table: one `key  value` line per fact,
//! aligned. Pure (a [`Status`] in, text out) so every line can be tested
//! without servers; `--json` needs no code here (the types serialize).

use super::progress::ProgressStatus;
use super::Status;

/// The human-readable table.
pub fn render_table(s: &Status) -> String {
    let mut out = Vec::<(String, String)>::new();
    let mut row = |k: &str, v: String| out.push((k.to_string(), v));
    match &s.slot {
        None => row(
            "slot",
            format!(
                "{} (MISSING: run `outbox-relay init`; see README 'Slot health')",
                s.slot_name
            ),
        ),
        Some(i) => {
            let active = match (i.active, i.active_pid) {
                (true, Some(pid)) => format!("active, walsender pid {pid}"),
                (true, None) => "active".to_string(),
                (false, _) => "inactive: no relay is streaming".to_string(),
            };
            row("slot", format!("{} ({active})", i.name));
            let ws = i.wal_status.as_deref().unwrap_or("none");
            let safe = match i.safe_wal_size {
                Some(b) => format!("{} until at risk", human_bytes(b)),
                None => "max_slot_wal_keep_size unlimited".to_string(),
            };
            let warn = if ws == "lost" {
                "  LOST: see README 'Slot health'"
            } else {
                ""
            };
            row("wal status", format!("{ws} ({safe}){warn}"));
            row(
                "confirmed flush lsn",
                i.confirmed_flush_lsn.clone().unwrap_or_else(|| "-".into()),
            );
        }
    }
    row(
        "current wal lsn",
        s.current_wal_lsn
            .clone()
            .unwrap_or_else(|| "- (standby)".into()),
    );
    row(
        "checkpoint",
        match &s.checkpoint {
            Some(c) => format!(
                "{} written {} ({} ago)",
                c.lsn,
                c.updated_at,
                human_secs(c.age_seconds)
            ),
            None => "none yet".to_string(),
        },
    );
    if let Some((id, reason)) = s.checkpoint.as_ref().and_then(|c| {
        c.blocked_row_id
            .map(|id| (id, c.blocked_reason.clone().unwrap_or_default()))
    }) {
        row("BLOCKED at row", format!("id={id}: {reason}"));
    }
    if let Some(p) = &s.progress {
        for (k, v) in progress_lines(p) {
            row(k, v);
        }
    }
    row(
        "lag bytes",
        s.lag
            .bytes
            .map(|b| format!("{} of WAL not yet handled", human_bytes(b)))
            .unwrap_or_else(|| "unknown".into()),
    );
    row(
        "lag seconds",
        format!(
            "{} (oldest pending row newer than the checkpoint)",
            human_secs(s.lag.seconds)
        ),
    );
    row(
        "rows",
        format!(
            "{} pending, {} processed, {} failed",
            s.rows.pending, s.rows.processed, s.rows.failed
        ),
    );
    row(
        "oldest pending",
        match &s.oldest_pending {
            Some(a) => format!("{} ago ({})", human_secs(a.age_seconds), a.at),
            None => "none".to_string(),
        },
    );
    for t in &s.tables {
        row(
            &format!("rows {}", t.table),
            format!(
                "{} pending, {} processed, {} failed; oldest pending {}",
                t.rows.pending,
                t.rows.processed,
                t.rows.failed,
                match &t.oldest_pending {
                    Some(a) => format!("{} ago", human_secs(a.age_seconds)),
                    None => "none".to_string(),
                }
            ),
        );
    }
    if let Some(n) = s.lost_slot_rows {
        row(
            "LOST SLOT",
            format!("{n} PENDING row(s) committed before the new slot: run `outbox-relay replay --status PENDING`"),
        );
    }
    for f in &s.topic_drift {
        out.push(("TOPIC DRIFT".into(), f.to_string()));
    }
    if s.relays.is_empty() {
        out.push((
            "relays".into(),
            "none with leader election connected".into(),
        ));
    }
    for r in &s.relays {
        out.push((
            r.role.clone(),
            format!(
                "{}:{} since {} (from {})",
                r.host, r.pid, r.since, r.client_addr
            ),
        ));
    }
    let width = out.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    out.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

/// The exactly-once lines: the record (or why it is missing) and how far
/// the checkpoint table trails it.
fn progress_lines(p: &ProgressStatus) -> Vec<(&'static str, String)> {
    if let Some(reason) = &p.unavailable_reason {
        return vec![("progress", format!("unavailable ({reason})"))];
    }
    let Some(r) = &p.record else {
        return vec![(
            "progress",
            format!(
                "none yet for key {} on topic {} (the first session starts from the checkpoint table)",
                p.key, p.topic
            ),
        )];
    };
    let how = match &r.end_lsn {
        Some(_) => "whole".to_string(),
        None => format!("split: {} inserts published", r.index),
    };
    let mut out = vec![(
        "progress",
        format!(
            "commit lsn {}, index {}, epoch {} (resumes at {}, {how}; key {} on topic {})",
            r.commit_lsn, r.index, r.epoch, r.resume_lsn, p.key, p.topic
        ),
    )];
    if let Some(s) = &p.stopped_at {
        out.push((
            "progress held",
            format!(
                "read to offset {} of {}: a Kafka transaction is still open there (a relay killed \
                 mid-transaction leaves one until the next session starts or the transaction \
                 times out); the record above is the newest committed before it",
                s.offset, s.high_watermark
            ),
        ));
    }
    if r.unmarked_failed_rows > 0 {
        out.push((
            "progress failed",
            format!(
                "{} dead-lettered row(s) not yet marked FAILED (the next session marks them)",
                r.unmarked_failed_rows
            ),
        ));
    }
    out.push((
        "checkpoint trails",
        match r.checkpoint_trails_bytes {
            None => "- (no checkpoint row yet)".to_string(),
            Some(0) => "0 (checkpoint ahead/equal)".to_string(),
            Some(b) => format!(
                "{} behind the progress record",
                human_bytes(i64::try_from(b).unwrap_or(i64::MAX))
            ),
        },
    ));
    out
}

fn human_bytes(b: i64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v.abs() >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {} ({b} bytes)", UNITS[u])
    }
}

fn human_secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;

    #[test]
    fn table_names_everything() {
        let t = render_table(&sample(None));
        assert!(t.contains("MISSING"), "{t}");
        assert!(t.contains("3 pending, 10 processed, 1 failed"), "{t}");
        assert!(t.contains("2.0 KiB (2048 bytes)"), "{t}");
        assert!(t.contains("checkpoint") && t.contains("none yet"), "{t}");
        assert!(
            !t.contains("progress"),
            "at-least-once: no progress line\n{t}"
        );
    }

    #[test]
    fn progress_lines_say_where_the_relay_resumes_or_why_not() {
        use crate::sink::progress_topic::ProgressRecord;
        let mut s = sample(None);
        s.checkpoint = Some(super::super::tests::checkpoint("0/1000000"));
        use super::super::progress::tests::part;
        let rec = ProgressRecord::new(0x100_0400, 3, Some(0x100_0800), 7);
        let mut with = s.clone();
        super::super::progress::attach(&mut with, part().read_as(Some(&rec)));
        let t = render_table(&with);
        assert!(
            t.contains("commit lsn 0/1000400, index 3, epoch 7 (resumes at 0/1000800, whole;"),
            "{t}"
        );
        assert!(
            t.contains("checkpoint trails") && t.contains("2.0 KiB (2048 bytes) behind"),
            "{t}"
        );
        assert!(!t.contains("progress held"), "{t}");

        let mut down = s.clone();
        super::super::progress::attach(&mut down, part().unavailable("broker down"));
        let t = render_table(&down);
        assert!(
            t.contains("progress") && t.contains("unavailable (broker down)"),
            "{t}"
        );
        assert!(!t.contains("checkpoint trails"), "{t}");

        assert!(!t.contains("progress held"), "{t}");

        let mut held = s.clone();
        let stopped = crate::sink::progress_topic::Stopped {
            offset: 41,
            high_watermark: 45,
        };
        super::super::progress::attach(&mut held, part().read_until(Some(&rec), stopped));
        let t = render_table(&held);
        assert!(
            t.contains("commit lsn 0/1000400") && t.contains("read to offset 41 of 45"),
            "{t}"
        );

        let mut none = s;
        super::super::progress::attach(&mut none, part().read_as(None));
        assert!(render_table(&none).contains("none yet"));
    }

    #[test]
    fn human_units() {
        assert_eq!(human_secs(5.25), "5.2s");
        assert_eq!(human_secs(125.0), "2m05s");
        assert_eq!(human_bytes(10), "10 B");
    }
}

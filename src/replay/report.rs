//! What a run reports: the summary (printed as one line, or as JSON with
//! `--json`), the rows rejected with their reason, the outcome handed to
//! the CLI, and the progress bar shown while stderr is a terminal.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::RelayError;

/// A row left as it is because it cannot be published.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rejected {
    /// Row id.
    pub id: i64,
    /// Why.
    pub reason: String,
}

/// What a replay run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Nothing was sent or changed.
    pub dry_run: bool,
    /// Rows the selectors matched.
    pub selected: u64,
    /// Smallest and largest selected id.
    pub ids: Option<(i64, i64)>,
    /// Messages handed to the producer (dry run: that would be).
    pub sent: u64,
    /// Messages the broker acknowledged.
    pub acknowledged: u64,
    /// FAILED rows marked PROCESSED.
    pub failed_to_processed: u64,
    /// PENDING rows marked PROCESSED.
    pub pending_to_processed: u64,
    /// Rows that cannot be published as they are.
    pub rejected: Vec<Rejected>,
    /// Messages per topic.
    pub topics: BTreeMap<String, u64>,
    /// A lost slot's recovery was closed (its range is fully replayed).
    pub recovery_closed: bool,
    /// The run was interrupted (SIGINT/SIGTERM) before the end of the range.
    pub interrupted: bool,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids = self
            .ids
            .map(|(a, b)| format!(" (ids {a}..{b})"))
            .unwrap_or_default();
        let topics: Vec<String> = self
            .topics
            .iter()
            .map(|(t, n)| format!("{t}={n}"))
            .collect();
        let topics = if topics.is_empty() {
            "none".to_string()
        } else {
            topics.join(" ")
        };
        if self.dry_run {
            return write!(
                f,
                "replay (dry run): {} rows selected{ids}, {} would be sent, {} rejected; topics: {topics}; nothing sent",
                self.selected,
                self.sent,
                self.rejected.len()
            );
        }
        write!(
            f,
            "replay: {} rows selected{ids}, {} sent, {} acknowledged, {} FAILED and {} PENDING marked PROCESSED, {} rejected; topics: {topics}; {:.1}s{}{}",
            self.selected,
            self.sent,
            self.acknowledged,
            self.failed_to_processed,
            self.pending_to_processed,
            self.rejected.len(),
            self.seconds,
            if self.recovery_closed {
                "; lost-slot recovery closed"
            } else {
                ""
            },
            if self.interrupted { "; interrupted" } else { "" },
        )
    }
}

/// A run's summary and, if it stopped early, why.
#[derive(Debug)]
pub struct Outcome {
    /// What was done.
    pub summary: Summary,
    /// The delivery (or PostgreSQL) failure that stopped the run.
    pub error: Option<RelayError>,
}

/// Progress on a terminal.
pub(super) struct Progress {
    pub(super) total: Option<i64>,
    pub(super) last: Instant,
    pub(super) start: Instant,
}

impl Progress {
    pub(super) fn show(&mut self, s: &Summary, force: bool) {
        if !force && self.last.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last = Instant::now();
        let rate = s.acknowledged as f64 / self.start.elapsed().as_secs_f64().max(0.001);
        let line = match self.total {
            Some(t) if t > 0 => {
                let done = (s.selected as f64 / t as f64).min(1.0);
                let filled = (done * 30.0) as usize;
                format!(
                    "\rreplay [{}{}] {}/{t} read, {} acked, {rate:.0}/s ",
                    "#".repeat(filled),
                    " ".repeat(30 - filled),
                    s.selected,
                    s.acknowledged
                )
            }
            _ => format!(
                "\rreplay: {} read, {} acked, {rate:.0}/s ",
                s.selected, s.acknowledged
            ),
        };
        let mut err = std::io::stderr();
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn summary_line() {
        let mut s = Summary {
            selected: 3,
            ids: Some((4, 9)),
            sent: 3,
            acknowledged: 3,
            failed_to_processed: 1,
            pending_to_processed: 2,
            seconds: 0.5,
            ..Default::default()
        };
        s.topics.insert("outbox.order".into(), 3);
        assert_eq!(
            s.to_string(),
            "replay: 3 rows selected (ids 4..9), 3 sent, 3 acknowledged, 1 FAILED and 2 PENDING marked PROCESSED, 0 rejected; topics: outbox.order=3; 0.5s"
        );
        s.dry_run = true;
        assert_eq!(
            s.to_string(),
            "replay (dry run): 3 rows selected (ids 4..9), 3 would be sent, 0 rejected; topics: outbox.order=3; nothing sent"
        );
    }
}

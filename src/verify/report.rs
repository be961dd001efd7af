//! What `verify` found, as a value ([`Report`], serialised for `--json`)
//! and as the text an operator reads ([`render`], [`verdict`]). Kept apart
//! from the reading in [`super`] so the wording can change without
//! touching how the broker and the table are read.

use serde::Serialize;

use super::ledger::{self, Findings};

/// What `verify` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The rows checked.
    pub window: WindowInfo,
    /// Whether the relay's position proves it handled the window.
    pub relay: RelayInfo,
    /// Main topics read.
    pub topics: Vec<TopicInfo>,
    /// The DLQ topic.
    pub dlq: TopicInfo,
    /// What the comparison found.
    #[serde(flatten)]
    pub findings: Findings,
    /// Nothing missing, nothing reordered.
    pub ok: bool,
}

/// The selected rows.
#[derive(Debug, Clone, Serialize)]
pub struct WindowInfo {
    /// `all`, `since <RFC 3339>` or `ids A..B`.
    pub selection: String,
    /// Rows in it.
    pub rows: u64,
    /// Lowest row id (`None` without rows).
    pub first_id: Option<i64>,
    /// Highest row id.
    pub last_id: Option<i64>,
}

/// The relay position against the window.
#[derive(Debug, Clone, Serialize)]
pub struct RelayInfo {
    /// WAL position the window's snapshot covers.
    pub required: String,
    /// The relay's durable position when reading began.
    pub durable: String,
    /// `durable >= required`.
    pub confirmed: bool,
}

/// One topic read.
#[derive(Debug, Clone, Serialize)]
pub struct TopicInfo {
    /// Name.
    pub topic: String,
    /// Whether it exists on the broker.
    pub exists: bool,
    /// Partitions.
    pub partitions: usize,
    /// Messages read.
    pub messages: u64,
}

/// One line: what failed.
pub fn verdict(r: &Report) -> String {
    let f = &r.findings;
    let mut parts = Vec::new();
    if f.missing.count > 0 {
        parts.push(format!("{} missing", f.missing.count));
    }
    if f.reordered.count > 0 {
        parts.push(format!("{} reordered", f.reordered.count));
    }
    if f.missing.count > 0 && !r.relay.confirmed {
        parts.push(format!(
            "unconfirmed: the relay's durable position {} has not reached the window's end {}",
            r.relay.durable, r.relay.required
        ));
    }
    if parts.is_empty() {
        "nothing missing or reordered".into()
    } else {
        parts.join(", ")
    }
}

/// The human-readable report.
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let f = &r.findings;
    let mut o = String::new();
    let ids = match (r.window.first_id, r.window.last_id) {
        (Some(a), Some(b)) => format!(", ids {a}..{b}"),
        _ => String::new(),
    };
    let _ = writeln!(
        o,
        "window: {} — {} rows{ids}",
        r.window.selection, r.window.rows
    );
    let _ = writeln!(
        o,
        "relay position: durable {} {} window end {}",
        r.relay.durable,
        if r.relay.confirmed {
            "covers the"
        } else {
            "is BEHIND the"
        },
        r.relay.required
    );
    for t in r.topics.iter().chain(std::iter::once(&r.dlq)) {
        if t.exists {
            let _ = writeln!(
                o,
                "read: {} ({} partitions): {} messages",
                t.topic, t.partitions, t.messages
            );
        } else {
            let _ = writeln!(o, "read: {} does not exist", t.topic);
        }
    }
    let label = if r.relay.confirmed {
        "missing"
    } else {
        "not found (unconfirmed)"
    };
    let _ = write!(o, "{label}: {}", f.missing.count);
    write_list(&mut o, &f.missing.items, f.missing.truncated, |[a, b]| {
        if a == b {
            a.to_string()
        } else {
            format!("{a}..{b}")
        }
    });
    let _ = writeln!(
        o,
        "dead-lettered (found in {}): {}",
        r.dlq.topic, f.dead_lettered
    );
    let _ = write!(
        o,
        "duplicated: {} rows, {} extra messages",
        f.duplicates.count, f.duplicate_messages
    );
    write_list(&mut o, &f.duplicates.items, f.duplicates.truncated, |d| {
        format!("{}×{}", d.id, d.count)
    });
    let _ = write!(o, "reordered: {}", f.reordered.count);
    write_list(&mut o, &f.reordered.items, f.reordered.truncated, |v| {
        format!(
            "id {} (lsn {}) at {}[{}]@{} after id {} (lsn {})",
            v.id, v.lsn, v.at.topic, v.at.partition, v.at.offset, v.after_id, v.after_lsn
        )
    });
    let _ = write!(o, "foreign: {}", f.foreign.count);
    write_list(&mut o, &f.foreign.items, f.foreign.truncated, |x| {
        let id = x.id.map(|i| format!(" id {i}")).unwrap_or_default();
        format!(
            "{}[{}]@{}{id} ({})",
            x.at.topic, x.at.partition, x.at.offset, x.reason
        )
    });
    if f.replays > 0 {
        let _ = writeln!(o, "replays (not order-checked): {}", f.replays);
    }
    let _ = writeln!(
        o,
        "result: {}",
        if r.ok {
            "OK — nothing missing or reordered".to_string()
        } else {
            format!("FAILED — {}", verdict(r))
        }
    );
    o
}

fn write_list<T>(o: &mut String, items: &[T], truncated: bool, show: impl Fn(&T) -> String) {
    use std::fmt::Write as _;
    if items.is_empty() {
        o.push('\n');
        return;
    }
    o.push_str(":\n");
    for i in items {
        let _ = writeln!(o, "  {}", show(i));
    }
    if truncated {
        let _ = writeln!(o, "  … (first {} listed)", ledger::LIST_LIMIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::ledger::{Ledger, Position};

    fn report(findings: Findings, confirmed: bool) -> Report {
        let t = |name: &str| TopicInfo {
            topic: name.into(),
            exists: true,
            partitions: 4,
            messages: 10,
        };
        let ok = findings.missing.count == 0 && findings.reordered.count == 0;
        Report {
            window: WindowInfo {
                selection: "ids 1..10".into(),
                rows: findings.rows,
                first_id: Some(1),
                last_id: Some(10),
            },
            relay: RelayInfo {
                required: "0/100".into(),
                durable: if confirmed { "0/200" } else { "0/50" }.into(),
                confirmed,
            },
            topics: vec![t("outbox.order")],
            dlq: t("outbox.dlq"),
            findings,
            ok,
        }
    }

    #[test]
    fn rendering_lists_every_finding() {
        let mut l = Ledger::new(1, 10, false).unwrap();
        for id in 1..=10 {
            l.add_row(id);
        }
        let at = |offset| Position {
            topic: std::sync::Arc::from("outbox.order"),
            partition: 2,
            offset,
        };
        let m = |id: i64| ledger::Relay {
            id: Some(id),
            lsn: Some(ledger::LsnTag::Commit(id as u64 * 16)),
        };
        for (o, id) in [1, 2, 5, 3, 6, 6, 7].iter().enumerate() {
            l.observe(&at(o as i64), m(*id));
        }
        l.observe(
            &at(7),
            ledger::Relay {
                id: None,
                lsn: None,
            },
        );
        l.observe_dlq(Some(9));
        let r = report(l.finish(), true);
        assert!(!r.ok);
        let text = render(&r);
        for want in [
            "missing: 3:\n  4\n  8\n  10\n",
            "dead-lettered (found in outbox.dlq): 1",
            "duplicated: 1 rows, 1 extra messages:\n  6×2\n",
            "reordered: 1:\n  id 3 (lsn 0/30) at outbox.order[2]@3 after id 5 (lsn 0/50)\n",
            "foreign: 1:\n  outbox.order[2]@7 (no relay id and lsn headers)\n",
            "result: FAILED — 3 missing, 1 reordered",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["missing"]["items"],
            serde_json::json!([[4, 4], [8, 8], [10, 10]])
        );
        assert_eq!(
            json["duplicates"]["items"][0],
            serde_json::json!({"id": 6, "count": 2})
        );
        assert_eq!(json["reordered"]["items"][0]["partition"], 2);
        assert_eq!(json["ok"], false);
    }

    #[test]
    fn rows_not_found_before_the_relay_confirmed_are_unconfirmed() {
        let mut l = Ledger::new(1, 1, false).unwrap();
        l.add_row(1);
        let r = report(l.finish(), false);
        assert!(!r.ok);
        assert!(
            verdict(&r).contains("1 missing, unconfirmed"),
            "{}",
            verdict(&r)
        );
        assert!(
            render(&r).contains("not found (unconfirmed): 1:\n  1\n"),
            "{}",
            render(&r)
        );
        // Everything found: the relay's position does not matter.
        let r = report(Ledger::new(1, 0, true).unwrap().finish(), false);
        assert!(r.ok);
        assert!(render(&r).contains("result: OK"));
    }
}

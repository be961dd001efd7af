//! The comparison's rules, each with hand-made fixtures (no I/O).

use super::*;

fn at(partition: i32, offset: i64) -> Position {
    Position {
        topic: Arc::from("outbox.order"),
        partition,
        offset,
    }
}

fn msg(id: i64, lsn: u64) -> Relay {
    Relay {
        id: Some(id),
        lsn: Some(LsnTag::Commit(lsn)),
    }
}

/// Rows 1..=10; every row in its own transaction, LSN = id * 16.
fn window() -> Ledger {
    let mut l = Ledger::new(1, 10, false).unwrap();
    for id in 1..=10 {
        l.add_row(id);
    }
    l
}

fn deliver(l: &mut Ledger, partition: i32, ids: &[i64]) {
    for (offset, id) in ids.iter().enumerate() {
        assert_eq!(
            l.observe(&at(partition, offset as i64), msg(*id, *id as u64 * 16)),
            Seen::Counted
        );
    }
}

#[test]
fn clean_run_finds_nothing() {
    let mut l = window();
    deliver(&mut l, 0, &[1, 3, 5, 7, 9]);
    deliver(&mut l, 1, &[2, 4, 6, 8, 10]);
    let f = l.finish();
    assert_eq!(f.rows, 10);
    assert_eq!(f.messages, 10);
    assert_eq!(f.missing, Capped::default());
    assert_eq!(f.duplicates, Capped::default());
    assert_eq!(f.reordered, Capped::default());
    assert_eq!(f.foreign, Capped::default());
}

#[test]
fn missing_rows_come_as_ranges_and_dlq_rows_are_not_missing() {
    let mut l = window();
    deliver(&mut l, 0, &[1, 2, 6, 9]);
    l.observe_dlq(Some(5));
    l.observe_dlq(Some(99)); // not in the window: ignored
    let f = l.finish();
    assert_eq!(f.missing.count, 5);
    assert_eq!(f.missing.items, vec![[3, 4], [7, 8], [10, 10]]);
    assert_eq!(f.dead_lettered, 1);
}

#[test]
fn ranges_hold_only_missing_rows() {
    let mut l = Ledger::new(1, 6, false).unwrap();
    for id in [1, 2, 4, 5, 6] {
        l.add_row(id); // 3 is not a row (a gap in the sequence)
    }
    deliver(&mut l, 0, &[1]);
    let f = l.finish();
    assert_eq!(f.missing.count, 4);
    assert_eq!(f.missing.items, vec![[2, 2], [4, 6]]);
}

#[test]
fn duplicates_are_counted_and_crash_resends_are_not_reorders() {
    let mut l = window();
    // A crash replay: 3, 4, 5 delivered again after 5.
    deliver(&mut l, 0, &[1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10, 4]);
    let f = l.finish();
    assert_eq!(f.reordered.count, 0, "{:?}", f.reordered);
    assert_eq!(
        f.duplicates.items,
        vec![
            Duplicate { id: 3, count: 2 },
            Duplicate { id: 4, count: 3 },
            Duplicate { id: 5, count: 2 }
        ]
    );
    assert_eq!(f.duplicates.count, 3);
    assert_eq!(f.duplicate_messages, 4);
    assert_eq!(f.missing.count, 0);
}

#[test]
fn a_late_first_delivery_is_one_violation_per_late_message() {
    let mut l = window();
    // 4 arrives after 7 in partition 0; partition 1 is in order.
    deliver(&mut l, 0, &[1, 2, 3, 7, 4, 8]);
    deliver(&mut l, 1, &[5, 6, 9, 10]);
    let f = l.finish();
    assert_eq!(f.reordered.count, 1);
    let v = &f.reordered.items[0];
    assert_eq!(
        (v.at.partition, v.at.offset, v.id, v.after_id),
        (0, 4, 4, 7)
    );
    assert_eq!((v.lsn.as_str(), v.after_lsn.as_str()), ("0/40", "0/70"));
}

#[test]
fn order_is_by_commit_lsn_then_id() {
    let mut l = window();
    // One transaction (LSN 0x100) with rows 2 and 3, then row 1 in a
    // later transaction: in order although its id is lower.
    for (offset, (id, lsn)) in [(2, 0x100), (3, 0x100), (1, 0x200)].iter().enumerate() {
        l.observe(&at(0, offset as i64), msg(*id, *lsn));
    }
    // Within one transaction ids must increase.
    l.observe(&at(1, 0), msg(5, 0x300));
    l.observe(&at(1, 1), msg(4, 0x300));
    let f = l.finish();
    assert_eq!(f.reordered.count, 1);
    assert_eq!(f.reordered.items[0].id, 4);
}

#[test]
fn replays_are_not_order_checked() {
    let mut l = window();
    deliver(&mut l, 0, &[1, 2, 3, 5]);
    let replay = Relay {
        id: Some(4),
        lsn: Some(LsnTag::Replay),
    };
    assert_eq!(l.observe(&at(0, 4), replay), Seen::Counted);
    let f = l.finish();
    assert_eq!(f.reordered.count, 0);
    assert_eq!(f.replays, 1);
    assert_eq!(f.missing.items, vec![[6, 10]]);
}

#[test]
fn foreign_messages_and_lookups() {
    let mut l = Ledger::new(1, 10, true).unwrap();
    for id in [1, 2, 3, 5] {
        l.add_row(id);
    }
    let none = Relay {
        id: None,
        lsn: None,
    };
    assert_eq!(l.observe(&at(0, 0), none), Seen::Foreign);
    let no_lsn = Relay {
        id: Some(2),
        lsn: None,
    };
    assert_eq!(l.observe(&at(0, 1), no_lsn), Seen::Foreign);
    // In the span but not a window row; above the span (open-ended):
    // the caller looks them up.
    assert_eq!(l.observe(&at(0, 2), msg(4, 1)), Seen::Lookup(4));
    assert_eq!(l.observe(&at(0, 3), msg(11, 1)), Seen::Lookup(11));
    l.unmatched(&at(0, 3), 11);
    // Below the span: older than the window, not judged.
    assert_eq!(l.observe(&at(0, 4), msg(0, 1)), Seen::Outside);
    let f = l.finish();
    assert_eq!(f.foreign.count, 3);
    let reasons: Vec<_> = f
        .foreign
        .items
        .iter()
        .map(|x| (x.at.offset, x.id, x.reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (0, None, "no relay id and lsn headers"),
            (1, Some(2), "no relay id and lsn headers"),
            (3, Some(11), "no row with this id")
        ]
    );
    // Closed window (--ids): above the span is outside.
    let mut closed = Ledger::new(1, 10, false).unwrap();
    assert_eq!(closed.observe(&at(0, 0), msg(11, 1)), Seen::Outside);
}

#[test]
fn lists_are_capped_counts_are_not() {
    let n = LIST_LIMIT as i64 + 5;
    let mut l = Ledger::new(1, 2 * n, false).unwrap();
    for id in 1..=2 * n {
        l.add_row(id);
    }
    // Every other row arrives: n missing single-id ranges.
    for id in (2..=2 * n).step_by(2) {
        l.observe(&at(0, id), msg(id, id as u64));
    }
    let f = l.finish();
    assert_eq!(f.missing.count, n as u64);
    assert_eq!(f.missing.items.len(), LIST_LIMIT);
    assert!(f.missing.truncated);
}

#[test]
fn empty_window_and_span_limit() {
    let f = Ledger::new(1, 0, true).unwrap().finish();
    assert_eq!((f.rows, f.missing.count), (0, 0));
    assert!(Ledger::new(0, MAX_SPAN as i64, false).is_err());
    assert!(Ledger::new(i64::MIN, i64::MAX, false).is_err());
}

#[test]
fn lsn_header() {
    assert_eq!(
        LsnTag::parse(b"0/16B3748"),
        Some(LsnTag::Commit(0x16B_3748))
    );
    assert_eq!(LsnTag::parse(b"replay"), Some(LsnTag::Replay));
    assert_eq!(LsnTag::parse(b"x"), None);
}

//! One test per bug of issue 14, against the in-memory fakes with paused
//! time: each failed before the fix.

use super::*;

fn block_cfg(max_retry: u32) -> Config {
    let mut c = config();
    c.relay.on_permanent_error = OnPermanentError::Block;
    c.relay.max_retry = max_retry;
    c
}

/// A row earlier refused inside a batch: the next session sends it alone.
fn suspect(stats: &mut SessionStats, id: i64, attempts: u32) {
    stats.refusals.insert(
        id,
        Refusal {
            attempts,
            first_failure: SystemTime::now(),
            error: "refused".into(),
            too_large: true,
        },
    );
}

fn rows(rig: &Rig) -> Vec<i64> {
    rig.sent().iter().map(|s| s.tag.row_id).collect()
}

fn logged(rig: &Rig, line: &str) -> usize {
    rig.book
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| *l == line)
        .count()
}

const TOO_LARGE: RDKafkaErrorCode = RDKafkaErrorCode::MessageSizeTooLarge;

/// Bug 1: in block mode a broker refusal kept the session going, so rows
/// after the refused one were delivered ahead of it.
#[tokio::test(start_paused = true)]
async fn block_mode_refusal_keeps_later_rows_behind_the_refused_row() {
    let cfg = block_cfg(2);
    let mut stats = SessionStats::default();
    let book = FakeBook::default();
    let res = with_session_stats(cfg.clone(), 0, &mut stats, book.clone(), |rig| async move {
        rig.relation();
        rig.txn(100, &[7]);
        rig.txn(200, &[8]);
        rig.until("two sends", |r| r.sent().len() == 2).await;
        rig.refuse(0, TOO_LARGE);
        tokio::time::sleep(Duration::from_millis(100)).await;
    })
    .await;
    assert!(res.is_err(), "row 8 is in flight behind 7: replay");
    with_session_stats(cfg, 0, &mut stats, book, |rig| async move {
        rig.relation();
        rig.txn(100, &[7]);
        rig.txn(200, &[8]);
        rig.until("row 7 sent", |r| !r.sent().is_empty()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(rows(&rig), vec![7], "sent alone, nothing after it");
        rig.refuse(0, TOO_LARGE); // attempt 1 of 2
        rig.until("retried", |r| r.sent().len() == 2).await;
        rig.refuse(1, TOO_LARGE); // spent: blocks
        rig.until("blocked recorded", |r| logged(r, "blocked Some(7)") == 1)
            .await;
        rig.until("re-checked", |r| r.sent().len() == 3).await;
        assert_eq!(rows(&rig), vec![7, 7, 7], "row 8 still behind row 7");
        rig.ack(2); // the limit was raised
        rig.until("row 8 after it", |r| r.sent().len() == 4).await;
        assert_eq!(rows(&rig), vec![7, 7, 7, 8]);
        rig.ack(3);
        rig.until("durable", |r| r.saved() == 208).await;
        rig.until("unblock recorded", |r| logged(r, "blocked None") == 1)
            .await;
        stop(rig).await;
    })
    .await
    .unwrap();
}

/// Bug 2: each re-check of a blocked row built a fresh backoff, so a
/// still-broken row was re-sent every `backoff-initial` and the blocked row
/// rewritten to the table each time.
#[tokio::test(start_paused = true)]
async fn a_blocked_row_is_rechecked_with_growing_backoff() {
    let mut cfg = block_cfg(1);
    cfg.relay.backoff_initial = Duration::from_millis(10);
    cfg.relay.backoff_max = Duration::from_secs(10);
    let mut stats = SessionStats::default();
    suspect(&mut stats, 7, 0);
    with_session_stats(cfg, 0, &mut stats, FakeBook::default(), |rig| async move {
        rig.relation();
        rig.txn(100, &[7]);
        rig.until("row 7 sent", |r| !r.sent().is_empty()).await;
        let end = tokio::time::Instant::now() + Duration::from_millis(1500);
        while tokio::time::Instant::now() < end {
            for i in rig.pending() {
                rig.refuse(i, TOO_LARGE);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let resends = rig.sent().len() - 1;
        assert!(
            (3..=12).contains(&resends),
            "10 ms doubling for 1.5 s is about 8 re-sends, got {resends}"
        );
        assert_eq!(logged(&rig, "blocked Some(7)"), 1, "recorded once");
        stop(rig).await;
    })
    .await
    .unwrap();
}

/// Bug 3: a second spent row while one was blocked replaced the first; the
/// first row's message was never released and the durable position stopped.
#[tokio::test(start_paused = true)]
async fn a_second_refusal_while_blocked_loses_nothing() {
    let cfg = block_cfg(1);
    let mut stats = SessionStats::default();
    suspect(&mut stats, 7, 0);
    suspect(&mut stats, 8, 0);
    with_session_stats(cfg, 0, &mut stats, FakeBook::default(), |rig| async move {
        rig.relation();
        rig.txn(100, &[7]);
        rig.txn(200, &[8]);
        rig.until("a send", |r| !r.sent().is_empty()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        for i in rig.pending() {
            rig.refuse(i, TOO_LARGE);
        }
        // The cause is fixed: the broker accepts everything from now on.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while rig.saved() != 208 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "durable position stuck at {}; sent {:?}",
                rig.saved(),
                rows(&rig)
            );
            for i in rig.pending() {
                rig.ack(i);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stop(rig).await;
    })
    .await
    .unwrap();
}

/// Bug 4: a row routed to a missing topic was transient forever; now it is
/// a refusal of that row, dead-lettered after `relay.max-retry`, while the
/// rows around it flow.
#[tokio::test(start_paused = true)]
async fn a_row_for_a_missing_topic_is_dead_lettered_and_marked_failed() {
    let mut cfg = config();
    cfg.relay.max_retry = 2;
    with_session(cfg, 0, |rig| async move {
        rig.sink
            .missing
            .lock()
            .unwrap()
            .insert("missing.topic".into());
        rig.relation();
        rig.begin(100);
        rig.insert(1, None);
        rig.insert(2, Some("missing.topic"));
        rig.insert(3, None);
        rig.commit(100, 108);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while rig.saved() != 108 {
            assert!(tokio::time::Instant::now() < deadline, "not durable");
            for i in rig.pending() {
                if rig.sent()[i].topic == "missing.topic" {
                    rig.refuse(i, RDKafkaErrorCode::UnknownTopicOrPartition);
                } else {
                    rig.ack(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let s = rig.sent();
        let main: Vec<i64> = s
            .iter()
            .filter(|m| m.topic == "outbox.order")
            .map(|m| m.tag.row_id)
            .collect();
        assert_eq!(main, vec![1, 3]);
        let dlq = s.iter().find(|m| m.tag.is_dlq).expect("a DLQ copy");
        assert_eq!(dlq.tag.row_id, 2);
        let header = |k: &str| {
            dlq.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| String::from_utf8_lossy(v).to_string())
        };
        assert_eq!(
            header("dlq.original.topic").as_deref(),
            Some("missing.topic")
        );
        assert_eq!(header("dlq.attempts").as_deref(), Some("2"));
        assert!(header("traceparent").is_some(), "the row's headers kept");
        assert_eq!(logged(&rig, "failed [(2, 2)]"), 1);
        stop(rig).await;
    })
    .await
    .unwrap();
}

/// Bug 5: the broker refuses a whole batch when one record is too large;
/// the innocent rows of that batch were counted and dead-lettered too.
#[tokio::test(start_paused = true)]
async fn only_the_row_the_broker_refuses_is_counted() {
    let mut cfg = config();
    cfg.relay.max_retry = 2;
    let mut stats = SessionStats::default();
    let book = FakeBook::default();
    let dead = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..8 {
        let dead = dead.clone();
        let _ = with_session_stats(cfg.clone(), 0, &mut stats, book.clone(), |rig| async move {
            rig.relation();
            rig.txn(100, &[5, 6, 7]);
            rig.txn(200, &[8]);
            // A fake broker: a batch holding row 7 is refused whole.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while rig.saved() != 208 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let batch = rig.pending();
                let s = rig.sent();
                let poisoned = batch
                    .iter()
                    .any(|i| s[*i].tag.row_id == 7 && !s[*i].tag.is_dlq);
                for i in batch {
                    if s[i].tag.is_dlq {
                        dead.lock().unwrap().push(s[i].tag.row_id);
                    }
                    if poisoned {
                        rig.refuse(i, TOO_LARGE);
                    } else {
                        rig.ack(i);
                    }
                }
            }
            stop(rig).await;
        })
        .await;
        if book.store.get() == 208 {
            break;
        }
    }
    assert_eq!(book.store.get(), 208, "never got through");
    assert_eq!(*dead.lock().unwrap(), vec![7], "only row 7 dead-lettered");
    assert!(book
        .log
        .lock()
        .unwrap()
        .contains(&"failed [(7, 2)]".to_string()));
}

/// Bug 7: bookkeeping calls had no deadline; a hung `mark_failed` hung the
/// session.
#[tokio::test(start_paused = true)]
async fn a_hung_mark_failed_times_out() {
    let book = FakeBook::default();
    book.mark_failed_faults
        .lock()
        .unwrap()
        .push_back(Fault::Hang);
    let mut stats = SessionStats::default();
    let run = with_session_stats(config(), 0, &mut stats, book.clone(), |rig| async move {
        rig.relation();
        rig.begin(100);
        rig.insert(1, Some("bad topic!"));
        rig.commit(100, 108);
        rig.until("the DLQ copy", |r| r.sent().len() == 1).await;
        rig.ack(0);
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
    let res = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("the session hung on mark_failed");
    let err = res.expect_err("a timed-out mark_failed ends the session");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(book.store.get(), 0, "no checkpoint past an unmarked row");
}

#[tokio::test(start_paused = true)]
async fn a_failed_mark_failed_ends_the_session_before_the_checkpoint() {
    let book = FakeBook::default();
    book.mark_failed_faults
        .lock()
        .unwrap()
        .push_back(Fault::Fail);
    let mut stats = SessionStats::default();
    let res = with_session_stats(config(), 0, &mut stats, book.clone(), |rig| async move {
        rig.relation();
        rig.begin(100);
        rig.insert(1, Some("bad topic!"));
        rig.commit(100, 108);
        rig.until("the DLQ copy", |r| r.sent().len() == 1).await;
        rig.ack(0);
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    assert!(res.is_err());
    assert_eq!(book.store.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_or_hung_checkpoint_save_ends_the_session_unconfirmed() {
    for fault in [Fault::Fail, Fault::Hang] {
        let book = FakeBook::default();
        book.save_faults.lock().unwrap().push_back(fault);
        let mut stats = SessionStats::default();
        let confirmed = Arc::new(AtomicU64::new(0));
        let c2 = confirmed.clone();
        let res = with_session_stats(config(), 0, &mut stats, book.clone(), |rig| async move {
            rig.relation();
            rig.txn(100, &[1]);
            rig.until("a send", |r| r.sent().len() == 1).await;
            rig.ack(0);
            tokio::time::sleep(Duration::from_secs(60)).await;
            c2.store(rig.confirmed.load(Ordering::SeqCst), Ordering::SeqCst);
        })
        .await;
        let err = res.expect_err("a failed save ends the session");
        if matches!(fault, Fault::Hang) {
            assert!(err.to_string().contains("timed out"), "{err}");
        }
        assert_eq!(book.store.get(), 0);
        assert_eq!(confirmed.load(Ordering::SeqCst), 0, "never confirm unsaved");
    }
}

/// Bug 7: a graceful stop skipped the drain while a row was blocked, so
/// acknowledged rows before it were sent again after the restart.
#[tokio::test(start_paused = true)]
async fn a_stop_while_blocked_still_drains() {
    let book = FakeBook::default();
    let mut stats = SessionStats::default();
    with_session_stats(
        block_cfg(3),
        0,
        &mut stats,
        book.clone(),
        |rig| async move {
            rig.relation();
            rig.txn(100, &[7]);
            rig.begin(200);
            rig.insert(8, Some("bad topic!"));
            rig.commit(200, 208);
            rig.until("row 7 sent", |r| r.sent().len() == 1).await;
            rig.until("row 8 blocked", |r| logged(r, "blocked Some(8)") == 1)
                .await;
            rig.stop.send(true).unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            rig.ack(0);
            tokio::time::sleep(Duration::from_millis(20)).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(book.store.get(), 108, "row 7's ack drained and persisted");
}

/// Bug 7: the refusal ledger kept rows the broker later accepted.
#[tokio::test(start_paused = true)]
async fn the_ledger_forgets_a_row_the_broker_accepted() {
    let mut stats = SessionStats::default();
    suspect(&mut stats, 7, 1);
    with_session_stats(
        config(),
        0,
        &mut stats,
        FakeBook::default(),
        |rig| async move {
            rig.relation();
            rig.txn(100, &[7]);
            rig.until("a send", |r| r.sent().len() == 1).await;
            rig.ack(0);
            rig.until("durable", |r| r.saved() == 108).await;
            stop(rig).await;
        },
    )
    .await
    .unwrap();
    assert!(stats.refusals.is_empty(), "{:?}", stats.refusals.keys());
}

/// Bug 7 (docs): a restart skips commit LSNs strictly below the stored
/// end-LSN; a commit starting exactly there is new.
#[tokio::test(start_paused = true)]
async fn a_commit_at_the_checkpoint_is_not_skipped() {
    with_session(config(), 208, |rig| async move {
        rig.relation();
        rig.txn(200, &[3]); // committed before the checkpoint's end LSN
        rig.txn(208, &[4]); // its commit record starts exactly there
        rig.until("one send", |r| !r.sent().is_empty()).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(rows(&rig), vec![4]);
        stop(rig).await;
    })
    .await
    .unwrap();
}

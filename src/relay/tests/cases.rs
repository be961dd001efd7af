//! The loop's cases, each a script against the fakes and the rig of
//! [`super`] (paused tokio time throughout). Apart from them so the fakes
//! read as one piece.

use super::*;
#[tokio::test(start_paused = true)]
async fn checkpoint_waits_for_the_acked_prefix_then_confirms() {
    with_session(config(), 0, |rig| async move {
        rig.relation();
        rig.txn(100, &[1, 2]);
        rig.txn(200, &[3]);
        rig.until("three sends", |r| r.sent().len() == 3).await;
        let s = rig.sent();
        assert_eq!(s[0].tag.txn, s[1].tag.txn);
        assert_ne!(s[0].tag.txn, s[2].tag.txn);
        let lsn_header = s[2].headers.iter().find(|(k, _)| k == "lsn").unwrap();
        assert_eq!(lsn_header.1, b"0/C8");
        rig.ack(2); // the later transaction first
        rig.ack(0);
        tokio::time::sleep(Duration::from_millis(50)).await; // several ticks
        assert_eq!(
            rig.saved(),
            0,
            "first transaction not fully acked: nothing durable"
        );
        assert_eq!(rig.confirmed.load(Ordering::SeqCst), 0);
        rig.ack(1);
        rig.until("both durable", |r| r.saved() == 208).await;
        rig.until("slot confirmed after the save", |r| {
            r.confirmed.load(Ordering::SeqCst) == 208
        })
        .await;
        stop(rig).await;
    })
    .await
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn transactions_below_the_resume_point_are_skipped() {
    with_session(config(), 150, |rig| async move {
        rig.relation();
        rig.txn(100, &[1, 2]); // commit 100 < checkpoint 150: already published
        rig.txn(200, &[3]);
        rig.until("one send", |r| !r.sent().is_empty()).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let ids: Vec<i64> = rig.sent().iter().map(|s| s.tag.row_id).collect();
        assert_eq!(ids, vec![3]);
        stop(rig).await;
    })
    .await
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_bad_topic_is_dead_lettered_marked_failed_before_the_checkpoint() {
    with_session(config(), 0, |rig| async move {
        rig.relation();
        rig.begin(100);
        rig.insert(1, None);
        rig.insert(2, Some("bad topic!"));
        rig.insert(3, None);
        rig.commit(100, 108);
        rig.until("three sends", |r| r.sent().len() == 3).await;
        let s = rig.sent();
        assert_eq!(s[0].topic, "outbox.order");
        assert_eq!(s[2].topic, "outbox.order");
        let dlq = s.iter().find(|x| x.tag.is_dlq).expect("a DLQ copy");
        assert_eq!(dlq.topic, "outbox.dlq");
        assert_eq!(dlq.tag.row_id, 2);
        assert!(dlq.headers.iter().any(|(k, v)| k == "dlq.error.message"
            && String::from_utf8_lossy(v).contains("illegal character")));
        for i in 0..3 {
            rig.ack(i);
        }
        rig.until("durable", |r| r.saved() == 108).await;
        let log = rig.book.log.lock().unwrap().clone();
        let failed = log
            .iter()
            .position(|l| l == "failed [(2, 1)]")
            .expect("row 2 marked FAILED");
        let saved = log.iter().position(|l| l == "save 108").unwrap();
        assert!(
            failed < saved,
            "FAILED before the checkpoint covering it: {log:?}"
        );
        stop(rig).await;
    })
    .await
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn broker_refusals_replay_in_order_then_dead_letter() {
    let mut cfg = config();
    cfg.relay.max_retry = 3;
    let mut stats = SessionStats::default();
    let book = FakeBook::default();
    // A refusal of a pipelined message ends the session; the row becomes a
    // suspect. It was the only row refused (row 8 was not), so the refusal
    // was its own and counts as its first attempt.
    let res = with_session_stats(cfg.clone(), 0, &mut stats, book.clone(), |rig| async move {
        rig.relation();
        rig.txn(100, &[7, 8]);
        rig.until("two sends", |r| r.sent().len() == 2).await;
        rig.refuse(0, RDKafkaErrorCode::TopicAuthorizationFailed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    })
    .await;
    let err = res.expect_err("a refusal in a batch ends the session");
    assert_eq!(err.class(), crate::error::ErrorClass::Permanent);
    assert_eq!(stats.refusals[&7].attempts, 1);
    // Replay: row 7 alone, refused twice more in place, then its DLQ copy;
    // row 8 only after that.
    with_session_stats(cfg, 0, &mut stats, book.clone(), |rig| async move {
        rig.relation();
        rig.txn(100, &[7, 8]);
        for n in 1..=2 {
            rig.until("row 7 alone", |r| r.sent().len() == n).await;
            assert!(rig.sent().iter().all(|s| s.tag.row_id == 7));
            rig.refuse(n - 1, RDKafkaErrorCode::TopicAuthorizationFailed);
        }
        rig.until("the DLQ copy, then row 8", |r| r.sent().len() == 4)
            .await;
        let dlq = &rig.sent()[2];
        assert!(dlq.tag.is_dlq);
        assert_eq!(dlq.tag.row_id, 7);
        assert!(dlq
            .headers
            .iter()
            .any(|(k, v)| k == "dlq.attempts" && v == b"3"));
        assert_eq!(rig.sent()[3].tag.row_id, 8);
        rig.ack(3);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(rig.saved(), 0, "not durable until the DLQ copy is acked");
        rig.ack(2);
        rig.until("durable", |r| r.saved() == 108).await;
        stop(rig).await;
    })
    .await
    .unwrap();
    assert!(
        stats.refusals.is_empty(),
        "the ledger forgets a row once it is marked FAILED"
    );
    assert!(book
        .log
        .lock()
        .unwrap()
        .contains(&"failed [(7, 3)]".to_string()));
}

#[tokio::test(start_paused = true)]
async fn reading_pauses_at_the_in_flight_bytes_bound() {
    let mut cfg = config();
    // Each fixture row is about 50 bytes: the window shuts at 100.
    cfg.kafka.max_in_flight_bytes = 100;
    with_session(cfg, 0, |rig| async move {
        rig.relation();
        for i in 0..5 {
            rig.txn(100 * (i + 1), &[i as i64 + 1]);
        }
        rig.until("a send", |r| !r.sent().is_empty()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = rig.sent().len();
        assert!(n < 5, "bytes bound the window: {n} in flight");
        rig.ack(0);
        rig.until("one more", |r| r.sent().len() == n + 1).await;
        stop(rig).await;
    })
    .await
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_full_producer_queue_waits_for_a_report_then_retries() {
    with_session(config(), 0, |rig| async move {
        rig.sink
            .send_faults
            .lock()
            .unwrap()
            .push_back(SendError::QueueFull);
        rig.relation();
        rig.txn(100, &[1]);
        rig.txn(200, &[2]);
        rig.until("both", |r| r.sent().len() == 2).await;
        let ids: Vec<i64> = rig.sent().iter().map(|s| s.tag.row_id).collect();
        assert_eq!(ids, vec![1, 2], "the refused enqueue was retried in order");
        rig.ack(0);
        rig.ack(1);
        rig.until("durable", |r| r.saved() == 208).await;
        stop(rig).await;
    })
    .await
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_transient_refusal_ends_the_session_for_a_replay() {
    let res = with_session(config(), 0, |rig| async move {
        rig.relation();
        rig.txn(100, &[1]);
        rig.until("a send", |r| r.sent().len() == 1).await;
        rig.refuse(0, RDKafkaErrorCode::MessageTimedOut);
        // The session ends by itself; keep the rig alive until then.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(rig.saved(), 0);
    })
    .await;
    let err = res.expect_err("a transient delivery failure restarts the session");
    assert_eq!(err.class(), crate::error::ErrorClass::Transient);
}

#[tokio::test(start_paused = true)]
async fn reading_pauses_at_the_in_flight_window() {
    let mut cfg = config();
    cfg.kafka.max_in_flight = 4;
    with_session(cfg, 0, |rig| async move {
        rig.relation();
        for i in 0..10 {
            rig.txn(100 * (i + 1), &[i as i64 + 1]);
        }
        rig.until("four in flight", |r| r.sent().len() == 4).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            rig.sent().len(),
            4,
            "no more than the window unacknowledged"
        );
        rig.ack(0);
        rig.until("one more", |r| r.sent().len() == 5).await;
        stop(rig).await;
    })
    .await
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn idle_keepalives_confirm_the_slot_without_writing_the_checkpoint() {
    with_session(config(), 0, |rig| async move {
        rig.events
            .send(SourceEvent::KeepAlive { wal_end: 5000 })
            .unwrap();
        rig.until("confirmed", |r| r.confirmed.load(Ordering::SeqCst) == 5000)
            .await;
        assert_eq!(rig.saved(), 0);
        assert!(
            rig.book.log.lock().unwrap().is_empty(),
            "no table write for idle positions"
        );
        assert!(rig.reads.load(Ordering::SeqCst) >= 1);
        stop(rig).await;
    })
    .await
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_row_spent_in_an_earlier_session_is_dead_lettered_without_another_send() {
    let mut cfg = config();
    cfg.relay.max_retry = 1;
    let mut stats = SessionStats::default();
    let book = FakeBook::default();
    // The only row refused: its own refusal, attempt 1 of 1.
    let res = with_session_stats(cfg.clone(), 0, &mut stats, book.clone(), |rig| async move {
        rig.relation();
        rig.txn(100, &[7, 8]);
        rig.until("two sends", |r| r.sent().len() == 2).await;
        rig.refuse(0, RDKafkaErrorCode::MessageSizeTooLarge);
        tokio::time::sleep(Duration::from_millis(50)).await;
    })
    .await;
    res.expect_err("a refusal in a batch ends the session");
    assert_eq!(stats.refusals[&7].attempts, 1);
    with_session_stats(cfg, 0, &mut stats, book.clone(), |rig| async move {
        rig.relation();
        rig.txn(100, &[7, 8]);
        rig.until("the DLQ copy and row 8", |r| r.sent().len() == 2)
            .await;
        let s = rig.sent();
        assert!(s[0].tag.is_dlq, "row 7 goes straight to the DLQ: {s:?}");
        assert_eq!(s[0].tag.row_id, 7);
        assert_eq!(s[1].tag.row_id, 8);
        assert!(!s[1].tag.is_dlq);
        rig.ack(0);
        rig.ack(1);
        rig.until("durable", |r| r.saved() == 108).await;
        stop(rig).await;
    })
    .await
    .unwrap();
}

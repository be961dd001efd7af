//! The relay loop against in-memory fakes: no PostgreSQL, no broker. These
//! pin the loop's bookkeeping (checkpoint only after the acked prefix, skip
//! below the resume point, the DLQ path, retries, the window, idle
//! confirmations) independently of the servers the integration suite uses.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pgwire_replication::{Lsn, PgWireError, ReplicationEvent};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::{mpsc, watch};

use super::*;
use crate::checkpoint::MemoryStore;
use crate::decode::fixtures::{outbox_insert_message, outbox_relation, relation_message};
use crate::ports::Enqueued;

// ---- fakes ---------------------------------------------------------------

struct FakeStream {
    rx: mpsc::UnboundedReceiver<ReplicationEvent>,
    confirmed: Arc<AtomicU64>,
    reads: Arc<AtomicUsize>,
}

impl EventStream for FakeStream {
    async fn recv(&mut self) -> std::result::Result<Option<ReplicationEvent>, PgWireError> {
        let ev = self.rx.recv().await;
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(ev)
    }
    fn confirm(&self, lsn: u64) {
        self.confirmed.fetch_max(lsn, Ordering::SeqCst);
    }
    async fn close(&mut self, _graceful: bool) {}
}

#[derive(Debug, Clone)]
struct Sent {
    topic: String,
    headers: Vec<(String, Vec<u8>)>,
    tag: MsgTag,
}

#[derive(Clone, Default)]
struct FakeSink {
    sent: Arc<Mutex<Vec<Sent>>>,
}

impl MessageSink for FakeSink {
    fn send_record(
        &self,
        rec: &OutboxRecord,
        meta: &TxnMeta,
        topic: &str,
        tag: Box<MsgTag>,
    ) -> Enqueued {
        let headers = crate::sink::message::header_pairs(rec, meta);
        self.sent.lock().unwrap().push(Sent {
            topic: topic.into(),
            headers,
            tag: *tag,
        });
        Ok(())
    }
    fn send_raw(
        &self,
        topic: &str,
        _key: Option<&[u8]>,
        _payload: Option<&[u8]>,
        headers: &[(String, Vec<u8>)],
        _ts: i64,
        tag: Box<MsgTag>,
    ) -> Enqueued {
        self.sent.lock().unwrap().push(Sent {
            topic: topic.into(),
            headers: headers.to_vec(),
            tag: *tag,
        });
        Ok(())
    }
    async fn ensure_topic(&mut self, _topic: &str) -> Result<()> {
        Ok(())
    }
    fn purge(&self) {}
}

#[derive(Clone, Default)]
struct FakeBook {
    store: MemoryStore,
    /// Every call, in order: "save X", "failed [..]".
    log: Arc<Mutex<Vec<String>>>,
}

impl CheckpointStore for FakeBook {
    async fn load(&self) -> Result<Option<u64>> {
        self.store.load().await
    }
    async fn save(&self, lsn: u64) -> Result<()> {
        self.log.lock().unwrap().push(format!("save {lsn}"));
        self.store.save(lsn).await
    }
}

impl Bookkeeping for FakeBook {
    async fn mark_failed(&self, _cfg: &Config, rows: &[(i64, i32)]) -> Result<()> {
        self.log.lock().unwrap().push(format!("failed {rows:?}"));
        Ok(())
    }
    async fn record_blocked(&self, _cfg: &Config, b: Option<(i64, &str)>) -> Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(format!("blocked {:?}", b.map(|b| b.0)));
        Ok(())
    }
    async fn row_exists(&self, _cfg: &Config, _id: i64) -> Result<bool> {
        Ok(true)
    }
}

// ---- harness ---------------------------------------------------------------

fn config() -> Config {
    let mut c = Config::default();
    c.postgres.url = Some("postgres://u@localhost/db".into());
    c.kafka.brokers = Some("localhost:1".into());
    c.relay.checkpoint_interval = Duration::from_millis(10);
    c.relay.backoff_initial = Duration::from_millis(5);
    c.relay.backoff_max = Duration::from_millis(20);
    c
}

struct Rig {
    events: mpsc::UnboundedSender<ReplicationEvent>,
    reports: mpsc::UnboundedSender<Delivery>,
    sink: FakeSink,
    book: FakeBook,
    confirmed: Arc<AtomicU64>,
    reads: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
}

impl Rig {
    fn begin(&self, commit_lsn: u64) {
        self.events
            .send(ReplicationEvent::Begin {
                final_lsn: Lsn::from_u64(commit_lsn),
                xid: 1,
                commit_time_micros: 0,
            })
            .unwrap();
    }
    fn commit(&self, commit_lsn: u64, end_lsn: u64) {
        self.events
            .send(ReplicationEvent::Commit {
                lsn: Lsn::from_u64(commit_lsn),
                end_lsn: Lsn::from_u64(end_lsn),
                commit_time_micros: 0,
            })
            .unwrap();
    }
    fn data(&self, bytes: Vec<u8>) {
        self.events
            .send(ReplicationEvent::XLogData {
                wal_start: Lsn::ZERO,
                wal_end: Lsn::ZERO,
                server_time_micros: 0,
                data: Bytes::from(bytes),
            })
            .unwrap();
    }
    fn relation(&self) {
        self.data(relation_message(&outbox_relation(16384)));
    }
    fn insert(&self, id: i64, topic: Option<&str>) {
        self.data(outbox_insert_message(
            16384,
            id,
            Some(r#"{"traceparent": "t"}"#),
            topic,
        ));
    }
    /// One transaction with `ids`, committed at `lsn` (end `lsn + 8`).
    fn txn(&self, lsn: u64, ids: &[i64]) {
        self.begin(lsn);
        for id in ids {
            self.insert(*id, None);
        }
        self.commit(lsn, lsn + 8);
    }
    fn sent(&self) -> Vec<Sent> {
        self.sink.sent.lock().unwrap().clone()
    }
    fn ack(&self, i: usize) {
        let s = self.sent()[i].clone();
        self.reports
            .send(Delivery {
                tag: Box::new(s.tag),
                result: Ok(s.topic),
            })
            .unwrap();
    }
    fn refuse(&self, i: usize, code: RDKafkaErrorCode) {
        let s = self.sent()[i].clone();
        let failed = crate::sink::FailedMessage {
            error: KafkaError::MessageProduction(code),
            topic: s.topic.clone(),
            key: Some(b"o-1".to_vec()),
            payload: Some(b"{}".to_vec()),
            headers: s.headers.clone(),
        };
        self.reports
            .send(Delivery {
                tag: Box::new(s.tag),
                result: Err(Box::new(failed)),
            })
            .unwrap();
    }
    fn saved(&self) -> u64 {
        self.book.store.get()
    }
    async fn until(&self, what: &str, mut cond: impl FnMut(&Rig) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Run a session with `cfg` and `resume` while `script` drives it; the
/// session stops when the script returns. Returns the session's result.
async fn with_session<F, Fut>(cfg: Config, resume: u64, script: F) -> Result<SessionEnd>
where
    F: FnOnce(Rig) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut stats = SessionStats::default();
    with_session_stats(cfg, resume, &mut stats, FakeBook::default(), script).await
}

/// [`with_session`] continuing `stats` (the supervisor's state across
/// sessions) and `book` (the database).
async fn with_session_stats<F, Fut>(
    cfg: Config,
    resume: u64,
    stats: &mut SessionStats,
    book: FakeBook,
    script: F,
) -> Result<SessionEnd>
where
    F: FnOnce(Rig) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (rep_tx, rep_rx) = mpsc::unbounded_channel();
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let confirmed = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let sink = FakeSink::default();
    if resume > 0 {
        book.store.save(resume).await.unwrap();
    }
    let stream = FakeStream {
        rx: ev_rx,
        confirmed: confirmed.clone(),
        reads: reads.clone(),
    };
    let rig = Rig {
        events: ev_tx,
        reports: rep_tx,
        sink: sink.clone(),
        book: book.clone(),
        confirmed,
        reads,
        stop: stop_tx,
    };
    let mut session = Session::new(&cfg, crate::health::Health::shared(), resume, stats).unwrap();
    let run = session.run(stream, sink, rep_rx, &book, &mut stop_rx);
    let drive = async move {
        script(rig).await;
    };
    let (res, ()) = tokio::join!(run, drive);
    res
}

async fn stop(rig: Rig) {
    rig.stop.send(true).unwrap();
}

// ---- tests -----------------------------------------------------------------

#[tokio::test]
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

#[tokio::test]
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

#[tokio::test]
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

#[tokio::test]
async fn broker_refusals_replay_in_order_then_dead_letter() {
    let mut cfg = config();
    cfg.relay.max_retry = 3;
    let mut stats = SessionStats::default();
    let book = FakeBook::default();
    // Attempts 1 and 2: the refusal ends the session; the next one replays
    // the transaction from the checkpoint, row 7 first, row 8 after it.
    for attempt in 1..=2u32 {
        let res = with_session_stats(cfg.clone(), 0, &mut stats, book.clone(), |rig| async move {
            rig.relation();
            rig.txn(100, &[7, 8]);
            rig.until("two sends", |r| r.sent().len() == 2).await;
            let ids: Vec<i64> = rig.sent().iter().map(|s| s.tag.row_id).collect();
            assert_eq!(ids, vec![7, 8], "replayed in order");
            rig.refuse(0, RDKafkaErrorCode::TopicAuthorizationFailed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        })
        .await;
        let err = res.expect_err("a refusal with attempts left ends the session");
        assert_eq!(err.class(), crate::error::ErrorClass::Permanent);
        assert_eq!(stats.refusals[&7].attempts, attempt);
    }
    // Attempt 3: spent, dead-lettered; row 8 still goes to its topic.
    with_session_stats(cfg, 0, &mut stats, book.clone(), |rig| async move {
        rig.relation();
        rig.txn(100, &[7, 8]);
        rig.until("two sends", |r| r.sent().len() == 2).await;
        rig.refuse(0, RDKafkaErrorCode::TopicAuthorizationFailed);
        rig.until("the DLQ copy", |r| r.sent().len() == 3).await;
        let dlq = &rig.sent()[2];
        assert!(dlq.tag.is_dlq);
        assert_eq!(dlq.tag.row_id, 7);
        assert!(dlq
            .headers
            .iter()
            .any(|(k, v)| k == "dlq.attempts" && v == b"3"));
        rig.ack(1);
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
        "the ledger forgets a row once its DLQ copy is acked"
    );
    assert!(book
        .log
        .lock()
        .unwrap()
        .contains(&"failed [(7, 3)]".to_string()));
}

#[tokio::test]
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

#[tokio::test]
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

#[tokio::test]
async fn idle_keepalives_confirm_the_slot_without_writing_the_checkpoint() {
    with_session(config(), 0, |rig| async move {
        rig.events
            .send(ReplicationEvent::KeepAlive {
                wal_end: Lsn::from_u64(5000),
                reply_requested: false,
                server_time_micros: 0,
            })
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

//! The relay loop against in-memory fakes: no PostgreSQL, no broker, no
//! wall clock (every test runs with paused tokio time). These pin the loop's
//! bookkeeping (checkpoint only after the acked prefix, skip below the resume
//! point, the DLQ path, retries, blocking, the window, idle confirmations)
//! independently of the servers the integration suite uses. Faults are
//! injected through FIFO queues per operation.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::{mpsc, watch};

use super::*;
use crate::checkpoint::MemoryStore;
use crate::config::OnPermanentError;
use crate::decode::fixtures::{outbox_insert_message, outbox_relation, relation_message};
use crate::decode::OutboxRecord;
use crate::ports::{Enqueued, SourceEvent, TopicState};
use crate::sink::classify::SinkError;
use crate::sink::message::TxnMeta;
use crate::sink::{Delivery, FailedMessage, MsgTag, SendError};

// ---- fakes ---------------------------------------------------------------

/// What an operation does instead of succeeding, once (FIFO per operation).
#[derive(Clone, Copy, Debug)]
enum Fault {
    Fail,
    Hang,
}

type Faults = Arc<Mutex<VecDeque<Fault>>>;

async fn apply(q: &Faults) -> Result<()> {
    let f = q.lock().unwrap().pop_front();
    match f {
        None => Ok(()),
        Some(Fault::Fail) => Err(RelayError::Environment("injected fault".into())),
        Some(Fault::Hang) => std::future::pending().await,
    }
}

struct FakeStream {
    rx: mpsc::UnboundedReceiver<SourceEvent>,
    confirmed: Arc<AtomicU64>,
    reads: Arc<AtomicUsize>,
}

impl EventStream for FakeStream {
    async fn recv(&mut self) -> Result<Option<SourceEvent>> {
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

/// The producer's shared state: what was enqueued, which topics are
/// missing, and a FIFO of enqueue faults.
#[derive(Clone, Default)]
struct FakeSink {
    sent: Arc<Mutex<Vec<Sent>>>,
    missing: Arc<Mutex<HashSet<String>>>,
    send_faults: Arc<Mutex<VecDeque<SendError>>>,
}

/// The port: the shared state plus the delivery reports the test writes.
struct FakeSinkPort {
    shared: FakeSink,
    reports: mpsc::UnboundedReceiver<Delivery>,
}

impl FakeSinkPort {
    fn take(&self, topic: &str, headers: Vec<(String, Vec<u8>)>, tag: Box<MsgTag>) -> Enqueued {
        if let Some(e) = self.shared.send_faults.lock().unwrap().pop_front() {
            return Err((e, tag));
        }
        self.shared.sent.lock().unwrap().push(Sent {
            topic: topic.into(),
            headers,
            tag: *tag,
        });
        Ok(())
    }
}

impl MessageSink for FakeSinkPort {
    fn send_record(
        &self,
        rec: &OutboxRecord,
        meta: &TxnMeta,
        topic: &str,
        tag: Box<MsgTag>,
    ) -> Enqueued {
        self.take(topic, crate::sink::message::header_pairs(rec, meta), tag)
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
        self.take(topic, headers.to_vec(), tag)
    }
    async fn next_delivery(&mut self) -> Option<Delivery> {
        self.reports.recv().await
    }
    async fn check_topic(&mut self, topic: &str) -> Result<TopicState> {
        Ok(if self.shared.missing.lock().unwrap().contains(topic) {
            TopicState::Refused(crate::sink::classify::SinkError::missing_topic(topic))
        } else {
            TopicState::Ready
        })
    }
    fn purge(&self) {}
}

#[derive(Clone, Default)]
struct FakeBook {
    store: MemoryStore,
    /// Every call, in order: "save X", "failed [..]", "blocked ..".
    log: Arc<Mutex<Vec<String>>>,
    save_faults: Faults,
    mark_failed_faults: Faults,
}

impl CheckpointStore for FakeBook {
    async fn load(&self) -> Result<Option<u64>> {
        self.store.load().await
    }
    async fn save(&self, lsn: u64) -> Result<()> {
        apply(&self.save_faults).await?;
        self.log.lock().unwrap().push(format!("save {lsn}"));
        self.store.save(lsn).await
    }
}

impl Bookkeeping for FakeBook {
    async fn mark_failed(&self, rows: &[(i64, i32)]) -> Result<()> {
        apply(&self.mark_failed_faults).await?;
        self.log.lock().unwrap().push(format!("failed {rows:?}"));
        Ok(())
    }
    async fn record_blocked(&self, b: Option<(i64, &str)>) -> Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(format!("blocked {:?}", b.map(|b| b.0)));
        Ok(())
    }
    async fn row_exists(&self, _id: i64) -> Result<bool> {
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
    events: mpsc::UnboundedSender<SourceEvent>,
    reports: mpsc::UnboundedSender<Delivery>,
    sink: FakeSink,
    book: FakeBook,
    confirmed: Arc<AtomicU64>,
    reads: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    /// Sent messages already answered by `ack`/`refuse`.
    reported: Arc<Mutex<Vec<bool>>>,
}

impl Rig {
    fn begin(&self, commit_lsn: u64) {
        let _ = self.events.send(SourceEvent::Begin {
            commit_lsn,
            commit_time_micros: 0,
        });
    }
    fn commit(&self, _commit_lsn: u64, end_lsn: u64) {
        let _ = self.events.send(SourceEvent::Commit { end_lsn });
    }
    fn data(&self, bytes: Vec<u8>) {
        let _ = self.events.send(SourceEvent::Data {
            data: Bytes::from(bytes),
            wal_end: 0,
        });
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
    fn mark(&self, i: usize) {
        let mut r = self.reported.lock().unwrap();
        if r.len() <= i {
            r.resize(i + 1, false);
        }
        r[i] = true;
    }
    /// Sent messages not yet answered, in send order.
    fn pending(&self) -> Vec<usize> {
        let r = self.reported.lock().unwrap().clone();
        (0..self.sent().len())
            .filter(|i| !r.get(*i).copied().unwrap_or(false))
            .collect()
    }
    fn ack(&self, i: usize) {
        self.mark(i);
        let s = self.sent()[i].clone();
        let _ = self.reports.send(Delivery {
            tag: Box::new(s.tag),
            result: Ok(s.topic.as_str().into()),
        });
    }
    fn refuse(&self, i: usize, code: RDKafkaErrorCode) {
        self.mark(i);
        let s = self.sent()[i].clone();
        let failed = FailedMessage {
            error: SinkError::from_kafka(&KafkaError::MessageProduction(code)),
            topic: s.topic.clone(),
            key: Some(b"o-1".to_vec()),
            payload: Some(b"{}".to_vec()),
            headers: s.headers.clone(),
        };
        let _ = self.reports.send(Delivery {
            tag: Box::new(s.tag),
            result: Err(Box::new(failed)),
        });
    }
    fn saved(&self) -> u64 {
        self.book.store.get()
    }
    async fn until(&self, what: &str, mut cond: impl FnMut(&Rig) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; sent {:?}",
                self.sent()
                    .iter()
                    .map(|s| (s.tag.row_id, s.tag.is_dlq))
                    .collect::<Vec<_>>()
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
    let port = FakeSinkPort {
        shared: sink.clone(),
        reports: rep_rx,
    };
    let rig = Rig {
        events: ev_tx,
        reports: rep_tx,
        sink,
        book: book.clone(),
        confirmed,
        reads,
        stop: stop_tx,
        reported: Arc::default(),
    };
    let mut session = Session::new(&cfg, crate::health::Health::shared(), resume, stats).unwrap();
    let run = session.run(stream, port, &book, &mut stop_rx);
    let drive = async move {
        script(rig).await;
    };
    let (res, ()) = tokio::join!(run, drive);
    res
}

async fn stop(rig: Rig) {
    let _ = rig.stop.send(true);
}

// ---- tests -----------------------------------------------------------------

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

#[path = "bug_tests.rs"]
mod bugs;

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

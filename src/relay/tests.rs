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

mod cases;

#[path = "bug_tests.rs"]
mod bugs;

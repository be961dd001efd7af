//! Exactly-once mode (issue 11): Kafka transactions carrying the resume
//! position. Every check reads the topics as a `read_committed` consumer —
//! what the mode promises to — and compares with what the writers committed:
//! every row exactly once, 0 duplicates, 0 lost, commit order per partition.
//!
//! Crashes are real: `kill -9`, or the test-only fault hook
//! (`OUTBOX_RELAY_TEST_FAULT=<point>:<n>` makes the relay `abort()` at the
//! `n`th pass through `point`, see `src/fault.rs`) for the dangerous moments
//! no timing can hit reliably.
//!
//! The loops under load are in `exactly_once_load`. `OUTBOX_LONG_TESTS=1`
//! runs them at full size (8 writers, 50,000 events, 50 kills; 200,000 rows
//! in one transaction; the rolling restart of a three-broker cluster);
//! figures are printed (`-- --nocapture`). (Not `OUTBOX_RELAY_*`: those
//! must be config keys.)

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::faults::{WriterSpec, Writers};
use crate::fixture::{Arrival, Env, RelayProc, DLQ_TOPIC};
use crate::support::kafka::{self, Received};

pub(crate) const TOPIC: &str = "outbox.order";

pub(crate) fn long() -> bool {
    std::env::var("OUTBOX_LONG_TESTS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// An env whose relay runs in exactly-once mode with its own transactional
/// id and progress topic (the broker is shared), the topic created by `init`.
pub(crate) struct Eo {
    pub(crate) env: Env,
    vars: Vec<(String, String)>,
}

impl Eo {
    pub(crate) async fn start(max_messages: usize) -> Eo {
        Self::on(Env::start_with(&[TOPIC], "", 1000).await, max_messages)
    }

    pub(crate) fn on(env: Env, max_messages: usize) -> Eo {
        let vars = vec![
            ("OUTBOX_RELAY_KAFKA_DELIVERY".into(), "exactly-once".into()),
            (
                "OUTBOX_RELAY_KAFKA_TRANSACTIONAL_ID".into(),
                format!("{}relay", env.prefix), // Eo::transactional_id
            ),
            (
                "OUTBOX_RELAY_KAFKA_PROGRESS_TOPIC".into(),
                progress_topic_of(&env),
            ),
            (
                "OUTBOX_RELAY_KAFKA_TRANSACTION_MAX_MESSAGES".into(),
                max_messages.to_string(),
            ),
        ];
        let out = env
            .relay_command(&["init"])
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run init");
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("progress topic"),
            "init reports the progress topic"
        );
        Eo { env, vars }
    }

    /// `outbox-relay <args>` with this env's config and the exactly-once
    /// settings (e.g. `status`).
    pub(crate) fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = self.env.relay_command(args);
        c.envs(self.vars.iter().map(|(k, v)| (k, v)));
        c
    }

    /// This env's progress topic (`kafka.progress-topic`).
    pub(crate) fn progress_topic(&self) -> String {
        progress_topic_of(&self.env)
    }

    /// The relay's transactional id: the key of its progress records.
    pub(crate) fn transactional_id(&self) -> String {
        format!("{}relay", self.env.prefix)
    }

    pub(crate) fn spawn(&self, extra: &[(&str, &str)]) -> RelayProc {
        let mut all: Vec<(&str, &str)> = self
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        all.extend_from_slice(extra);
        self.env.spawn_relay_with(&all)
    }

    /// Read `topic` as `read_committed` until every id of `ids` arrived,
    /// then `quiet` longer (duplicates would come right behind).
    /// Until the relay streams: 50 messages of `TOPIC` visible to a
    /// `read_committed` consumer (60 s at most).
    pub(crate) async fn wait_streaming(&self) {
        kafka::read_committed_until_async(
            &self.env.bootstrap(),
            &self.env.topic(TOPIC),
            Duration::from_secs(60),
            |got, _| got.len() >= 50,
        )
        .await;
    }

    pub(crate) async fn read_committed(
        &self,
        topic: &str,
        ids: &HashSet<i64>,
        deadline: Duration,
    ) -> Vec<Received> {
        read_committed_ids(&self.env, topic, ids, deadline).await
    }
}

fn progress_topic_of(env: &Env) -> String {
    env.topic("outbox-relay.progress")
}

pub(crate) async fn read_committed_ids(
    env: &Env,
    topic: &str,
    ids: &HashSet<i64>,
    deadline: Duration,
) -> Vec<Received> {
    let mut want = ids.clone();
    let mut seen = 0;
    let mut complete: Option<Instant> = None;
    kafka::read_committed_until_async(
        &env.bootstrap(),
        &env.topic(topic),
        deadline,
        move |got, _| {
            for m in &got[seen..] {
                if let Some(id) = m.header_str("id").and_then(|s| s.parse::<i64>().ok()) {
                    want.remove(&id);
                }
            }
            seen = got.len();
            if want.is_empty() && complete.is_none() {
                complete = Some(Instant::now());
            }
            complete.is_some_and(|t| t.elapsed() >= Duration::from_millis(1500))
        },
    )
    .await
}

/// Insert `txns` transactions of `rows` rows each; returns the ids.
pub(crate) async fn insert(env: &Env, txns: usize, rows: usize) -> Vec<i64> {
    let mut c = env.client().await;
    let mut ids = Vec::new();
    for _ in 0..txns {
        let tx = c.transaction().await.unwrap();
        let r = tx
            .query(
                "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) \
                 SELECT 'order', 'k' || (g % 7), 'OrderCreated', jsonb_build_object('g', g) \
                 FROM generate_series(1, $1::int) g RETURNING id",
                &[&(rows as i32)],
            )
            .await
            .unwrap();
        ids.extend(r.iter().map(|r| r.get::<_, i64>(0)));
        tx.commit().await.unwrap();
    }
    ids
}

/// Wait until the relay exits; its status.
pub(crate) async fn exit_of(relay: &mut RelayProc, deadline: Duration) -> ExitStatus {
    let end = Instant::now() + deadline;
    loop {
        if let Some(st) = relay.try_exit() {
            return st;
        }
        assert!(
            Instant::now() < end,
            "relay still running after {deadline:?}:\n{}",
            relay.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn assert_exactly_once(msgs: &[Received], ids: &HashSet<i64>, what: &str) -> Arrival {
    let arrival = Arrival::of(msgs);
    arrival.assert_complete(ids);
    arrival.assert_commit_order();
    let dups = arrival.duplicates();
    assert_eq!(dups, 0, "{what}: {dups} duplicates seen by read_committed");
    arrival
}

/// Deterministic crashes at each dangerous point, one after another on one
/// database: before the Kafka commit, between it and the checkpoint write,
/// between the checkpoint write and the slot confirm, and after the second
/// part of a split PostgreSQL transaction (350 rows with
/// `transaction-max-messages = 100`). Each phase writes new rows (small
/// transactions and one that splits) and runs a relay that must reach its
/// fault point and abort; a last clean relay finishes. A `read_committed`
/// consumer sees every row exactly once, in commit order, and the slot and
/// checkpoint table catch up behind the progress topic.
#[tokio::test(flavor = "multi_thread")]
async fn crash_at_each_dangerous_point_delivers_exactly_once() {
    let eo = Eo::start(100).await;
    let mut ids: HashSet<i64> = HashSet::new();
    for fault in [
        "before-kafka-commit:2",
        "after-kafka-commit:2",
        "before-slot-confirm:1",
        "mid-split:2",
    ] {
        ids.extend(insert(&eo.env, 5, 10).await);
        ids.extend(insert(&eo.env, 1, 350).await);
        let mut relay = eo.spawn(&[("OUTBOX_RELAY_TEST_FAULT", fault)]);
        let st = exit_of(&mut relay, Duration::from_secs(60)).await;
        assert_eq!(
            st.signal(),
            Some(libc::SIGABRT),
            "{fault}: the relay should abort at its fault point, got {st:?}:\n{}",
            relay.log_text()
        );
        assert!(
            relay.log_text().contains(&format!("test fault {fault}")),
            "{fault}: aborted elsewhere:\n{}",
            relay.log_text()
        );
    }
    ids.extend(insert(&eo.env, 3, 10).await);
    let relay = eo.spawn(&[]);
    let msgs = eo
        .read_committed(TOPIC, &ids, Duration::from_secs(120))
        .await;
    assert_exactly_once(&msgs, &ids, "after four crashes");
    // The PostgreSQL echoes follow the Kafka commit.
    let end: u64 = {
        let c = eo.env.client().await;
        let r = c
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap();
        outbox_relay::sink::message::parse_lsn(&r.get::<_, String>(0)).unwrap()
    };
    crate::support::wait_until_msg(
        "the slot to confirm past the last commit",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { eo.env.confirmed_flush().await >= end && eo.env.checkpoint().await.is_some() },
    )
    .await;
    let progress = kafka::read_committed_until_async(
        &eo.env.bootstrap(),
        &eo.progress_topic(),
        Duration::from_secs(10),
        |got, last| !got.is_empty() && last.elapsed() >= Duration::from_secs(1),
    )
    .await;
    let last = progress.last().expect("a progress record");
    let json = last.payload_str().unwrap();
    assert!(
        json.contains("\"v\":1") && json.contains("\"epoch\":5"),
        "{json}"
    );
    // `init` made it compacted with short segments (a restart scans it).
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        kafka::client_config(&eo.env.bootstrap()).create().unwrap();
    let progress_topic = eo.progress_topic();
    let configs = admin
        .describe_configs(
            [&rdkafka::admin::ResourceSpecifier::Topic(&progress_topic)],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap();
    let resource = configs.into_iter().next().unwrap().unwrap();
    let value = |k: &str| resource.get(k).and_then(|e| e.value.clone());
    assert_eq!(value("cleanup.policy").as_deref(), Some("compact"));
    assert_eq!(value("segment.ms").as_deref(), Some("3600000"));
    assert_eq!(value("segment.bytes").as_deref(), Some("16777216"));
    eprintln!(
        "exactly-once fault points: {} rows, 4 crashes, 0 duplicates; last progress {json}",
        ids.len()
    );
    drop(relay);
}

/// A row the relay's own checks refuse (an illegal topic name) is
/// dead-lettered inside the Kafka transaction: with a crash right after the
/// commit (before it is marked FAILED), the DLQ still holds it once, the
/// data topic holds every other row once, and the row ends FAILED.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_lettered_row_appears_once_in_the_dlq() {
    let eo = Eo::start(1000).await;
    let mut ids: HashSet<i64> = insert(&eo.env, 2, 5).await.into_iter().collect();
    let bad: i64 = eo
        .env
        .client()
        .await
        .query_one(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, topic) \
             VALUES ('order', 'k1', 'OrderCreated', '{}', 'bad topic!') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    ids.extend(insert(&eo.env, 2, 5).await);
    let mut relay = eo.spawn(&[("OUTBOX_RELAY_TEST_FAULT", "after-kafka-commit:1")]);
    let st = exit_of(&mut relay, Duration::from_secs(60)).await;
    assert_eq!(st.signal(), Some(libc::SIGABRT), "{}", relay.log_text());
    let _relay = eo.spawn(&[]);
    let msgs = eo
        .read_committed(TOPIC, &ids, Duration::from_secs(60))
        .await;
    assert_exactly_once(&msgs, &ids, "data topic");
    let dlq = eo
        .read_committed(DLQ_TOPIC, &HashSet::from([bad]), Duration::from_secs(30))
        .await;
    let copies = dlq
        .iter()
        .filter(|m| m.header_str("id").as_deref() == Some(bad.to_string().as_str()))
        .count();
    assert_eq!(copies, 1, "the DLQ holds the row once: {dlq:?}");
    crate::support::wait_until_msg(
        "the dead-lettered row to be FAILED",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async { eo.env.row_status(bad).await.0 == "FAILED" },
    )
    .await;
}

/// The progress topic is shared by every relay's transactional id. Another
/// id's transaction left open on it (a relay killed mid-transaction, until
/// the broker aborts it at `transaction.timeout.ms`) hides the records
/// committed after it from a `read_committed` reader. A relay that crashed
/// after such a commit but before confirming it to the slot, restarting
/// then, must wait for the open transaction to end — here the other producer
/// aborts it after 3 s — not resume from the older record it can see: that
/// would publish the crashed commit's rows again.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_open_transaction_on_the_progress_topic_is_waited_out() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let eo = Eo::start(1000).await;
    // One PostgreSQL transaction, one Kafka commit; the second commit is the
    // one the fault stops right after.
    let mut a = eo.spawn(&[("OUTBOX_RELAY_TEST_FAULT", "after-kafka-commit:2")]);
    let mut ids: HashSet<i64> = insert(&eo.env, 1, 5).await.into_iter().collect();
    eo.read_committed(TOPIC, &ids, Duration::from_secs(60))
        .await;
    let (bootstrap, topic) = (eo.env.bootstrap(), eo.progress_topic());
    let other = tokio::task::spawn_blocking(move || {
        let p: BaseProducer = kafka::client_config(&bootstrap)
            .set("transactional.id", "another-relay")
            .create()
            .expect("another transactional producer");
        p.init_transactions(Duration::from_secs(30)).unwrap();
        p.begin_transaction().unwrap();
        p.send(
            BaseRecord::to(&topic)
                .key("another-relay")
                .payload("{}")
                .partition(0),
        )
        .map_err(|(e, _)| e)
        .unwrap();
        p.flush(Duration::from_secs(10)).unwrap();
        p
    })
    .await
    .unwrap();
    // The relay's second commit lands behind the open transaction's first
    // offset, and the relay dies before the checkpoint and the slot hear of it.
    ids.extend(insert(&eo.env, 1, 5).await);
    let st = exit_of(&mut a, Duration::from_secs(60)).await;
    assert_eq!(st.signal(), Some(libc::SIGABRT), "{}", a.log_text());
    let _b = eo.spawn(&[]);
    tokio::time::sleep(Duration::from_secs(3)).await; // the open transaction itself
    tokio::task::spawn_blocking(move || other.abort_transaction(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("abort the other transaction");
    ids.extend(insert(&eo.env, 1, 5).await);
    let msgs = eo
        .read_committed(TOPIC, &ids, Duration::from_secs(60))
        .await;
    assert_exactly_once(
        &msgs,
        &ids,
        "after a start behind another id's open transaction",
    );
}

/// A newer producer with the relay's transactional id — here a bare
/// librdkafka producer calling `init_transactions`, exactly what a second
/// relay does first — fences the running relay at the broker: its next
/// commit (or produce) is refused, it logs one clear line and exits with
/// code 3. A relay started afterwards resumes from the last committed
/// progress record: every row once, nothing of the fenced transaction.
#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_relay_exits_with_code_3_and_nothing_is_duplicated() {
    use rdkafka::producer::{BaseProducer, Producer};
    let eo = Eo::start(10_000).await;
    let writers = Writers::start(
        &eo.env.url(),
        &WriterSpec {
            writers: 2,
            per_writer: 1500,
            max_txn: 10,
            pace: Duration::from_millis(15),
            sync_commit: false,
            seed: 11,
        },
    );
    let mut a = eo.spawn(&[]);
    eo.wait_streaming().await;
    let (bootstrap, id) = (eo.env.bootstrap(), format!("{}relay", eo.env.prefix));
    tokio::task::spawn_blocking(move || {
        let p: BaseProducer = kafka::client_config(&bootstrap)
            .set("transactional.id", &id)
            .create()
            .expect("a second transactional producer");
        p.init_transactions(Duration::from_secs(30))
            .expect("init_transactions of the newer producer");
    })
    .await
    .unwrap();
    let st = exit_of(&mut a, Duration::from_secs(30)).await;
    let log = a.log_text();
    assert_eq!(st.code(), Some(3), "fenced relay's exit: {st:?}\n{log}");
    assert!(
        log.contains("fenced by a newer producer with transactional id"),
        "the one clear line:\n{log}"
    );
    let ledger = writers.join().await;
    let ids: HashSet<i64> = ledger.committed.iter().copied().collect();
    let _b = eo.spawn(&[]);
    let msgs = eo
        .read_committed(TOPIC, &ids, Duration::from_secs(120))
        .await;
    assert_exactly_once(&msgs, &ids, "after a fence");
}

/// Zombie: relay A leads, reaching PostgreSQL through a TCP proxy that stops
/// forwarding (A still reaches Kafka) while writers keep writing; relay B,
/// direct, takes over (HA: the lock frees, B waits out the grace period,
/// ends A's walsender, and its `init_transactions` fences A's producer and
/// aborts A's open transaction at the broker). Either defence may stop A
/// first — its lease lapses (it steps down) or the broker refuses it (exit
/// 3, the fenced line) — and which one is printed; what is asserted is that
/// a `read_committed` consumer sees every row exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_zombie_cut_off_from_postgres_is_fenced_and_nothing_is_duplicated() {
    let eo = Eo::start(10_000).await;
    let proxy = crate::support::proxy::TcpProxy::start(eo.env.pg.addr()).await;
    let via_proxy = format!("postgres://postgres@127.0.0.1:{}/app", proxy.port());
    let writers = Writers::start(
        &eo.env.url(),
        &WriterSpec {
            writers: 2,
            per_writer: 1500,
            max_txn: 10,
            pace: Duration::from_millis(15),
            sync_commit: false,
            seed: 13,
        },
    );
    let mut a = eo.spawn(&[("OUTBOX_RELAY_POSTGRES_URL", &via_proxy)]);
    eo.wait_streaming().await;
    proxy.pause();
    let t = Instant::now();
    let b = eo.spawn(&[("OUTBOX_RELAY_METRICS_LISTEN", "127.0.0.1:0")]);
    crate::support::wait_until_msg(
        "relay B streaming",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            b.log_text()
                .contains("exactly-once replication session started")
        },
    )
    .await;
    let takeover = t.elapsed();
    let ledger = writers.join().await;
    let ids: HashSet<i64> = ledger.committed.iter().copied().collect();
    let msgs = eo
        .read_committed(TOPIC, &ids, Duration::from_secs(120))
        .await;
    assert_exactly_once(&msgs, &ids, "after a zombie");
    let log = a.log_text();
    let outcome = match a.try_exit() {
        Some(st) => {
            assert_eq!(st.code(), Some(3), "zombie's exit: {st:?}\n{log}");
            assert!(log.contains("fenced by a newer producer"), "{log}");
            "fenced by the broker, exit 3"
        }
        None => {
            assert!(
                log.contains("stepped down"),
                "zombie neither fenced nor stepped down:\n{log}"
            );
            "lease lapsed first, stepped down"
        }
    };
    eprintln!(
        "zombie: B streaming {:.1}s after A was cut off; A: {outcome}; {} rows exactly once",
        takeover.as_secs_f64(),
        ids.len()
    );
    proxy.resume();
}

/// A row the *broker* refuses (over the topic's `max.message.bytes`): its
/// refusal aborts the whole Kafka transaction; the row is then sent in a
/// transaction of its own, where each refusal counts as an attempt, and
/// after `relay.max-retry` (3) attempts its DLQ copy goes instead, inside
/// the transaction. Its neighbours arrive exactly once, in order; the row
/// is in the DLQ once and ends FAILED.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_the_broker_refuses_is_retried_alone_then_dead_lettered_once() {
    let eo = Eo::start(10_000).await;
    let small = eo.env.topic("outbox.small");
    kafka::create_topic_with(
        &eo.env.bootstrap(),
        &small,
        1,
        &[("max.message.bytes", "1000")],
    )
    .await;
    let c = eo.env.client().await;
    let row = |size: i32| {
        format!(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) \
             VALUES ('small', 'k', 'E', jsonb_build_object('pad', repeat('x', {size}))) RETURNING id"
        )
    };
    let mut good = Vec::new();
    for _ in 0..3 {
        good.push(c.query_one(&row(10), &[]).await.unwrap().get::<_, i64>(0));
    }
    let bad: i64 = c.query_one(&row(5000), &[]).await.unwrap().get(0);
    for _ in 0..3 {
        good.push(c.query_one(&row(10), &[]).await.unwrap().get::<_, i64>(0));
    }
    let relay = eo.spawn(&[]);
    let ids: HashSet<i64> = good.iter().copied().collect();
    let msgs = eo
        .read_committed("outbox.small", &ids, Duration::from_secs(90))
        .await;
    let arrival = assert_exactly_once(&msgs, &ids, "neighbours of a refused row");
    let got: Vec<i64> = arrival.by_partition[&0]
        .iter()
        .map(|m| m.header_str("id").unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, good, "the neighbours, in commit order");
    let dlq = eo
        .read_committed(DLQ_TOPIC, &HashSet::from([bad]), Duration::from_secs(30))
        .await;
    let copies = dlq
        .iter()
        .filter(|m| m.header_str("id").as_deref() == Some(bad.to_string().as_str()))
        .count();
    assert_eq!(copies, 1, "{}", relay.log_text());
    crate::support::wait_until_msg(
        "the refused row to be FAILED",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async { eo.env.row_status(bad).await.0 == "FAILED" },
    )
    .await;
    let (_, attempts) = eo.env.row_status(bad).await;
    assert_eq!(attempts, 3, "three attempts alone");
}

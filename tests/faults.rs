//! Faults (issue 6): crash loops, PostgreSQL restarts, broker and network
//! faults, injected produce errors, a huge transaction. Every test keeps a
//! ledger of what the writers committed and checks it against what arrived
//! on the broker: nothing lost, first deliveries in commit order within each
//! partition, duplicates within the bound the relay promises.
//!
//! Figures are printed with `eprintln!` (`cargo test … -- --nocapture`).
//! Heavy variants run with `OUTBOX_HEAVY=1`; the figures measured on the
//! 2-core dev machine are in each test's doc comment.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_relay::sink::message::parse_lsn;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use tokio::task::JoinHandle;

use crate::fixture::{Arrival, Env, DLQ_TOPIC};
use crate::support::kafka::{self, Received};
use crate::support::proxy::TcpProxy;
use crate::support::{self, postgres};

const TOPIC: &str = "outbox.order";

/// `OUTBOX_HEAVY=1`: the documented heavy sizes.
fn heavy() -> bool {
    std::env::var("OUTBOX_HEAVY").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Deterministic xorshift64: fault moments and transaction sizes are the
/// same on every run for a given seed.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

// ---- writers -----------------------------------------------------------

/// What one writer committed.
#[derive(Default, Debug)]
pub struct Ledger {
    /// Ids of transactions whose COMMIT returned success.
    pub committed: Vec<i64>,
    /// Ids of transactions whose COMMIT failed with a lost connection: the
    /// outcome is unknown (PostgreSQL may or may not have committed).
    pub uncertain: Vec<i64>,
    /// Transactions committed.
    pub txns: usize,
    /// Errors ridden out (reconnects).
    pub errors: usize,
}

/// Writer settings.
#[derive(Clone)]
pub struct WriterSpec {
    pub writers: usize,
    /// Events per writer (stops earlier when told to).
    pub per_writer: usize,
    /// Rows per transaction: uniform in 1..=max_txn.
    pub max_txn: usize,
    /// Pause between transactions.
    pub pace: Duration,
    /// `SET synchronous_commit = on` (the harness cluster defaults to off,
    /// which an immediate shutdown can undo).
    pub sync_commit: bool,
    pub seed: u64,
}

/// Writers inserting into the outbox until done or stopped; they ride out
/// PostgreSQL outages (reconnecting) and record what they committed.
pub struct Writers {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<Ledger>>,
}

impl Writers {
    pub fn start(url: &str, spec: &WriterSpec) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..spec.writers)
            .map(|w| {
                tokio::spawn(write_loop(
                    url.to_string(),
                    w,
                    spec.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Writers { stop, handles }
    }

    /// Stop after the current transaction and collect the ledgers.
    pub async fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::SeqCst);
        self.join().await
    }

    /// Wait until every writer wrote its share.
    pub async fn join(self) -> Ledger {
        let mut all = Ledger::default();
        for h in self.handles {
            let l = h.await.expect("writer task");
            all.committed.extend(l.committed);
            all.uncertain.extend(l.uncertain);
            all.txns += l.txns;
            all.errors += l.errors;
        }
        all
    }
}

async fn write_loop(url: String, w: usize, spec: WriterSpec, stop: Arc<AtomicBool>) -> Ledger {
    let mut rng = Rng::new(spec.seed.wrapping_add(w as u64 * 7919));
    let mut ledger = Ledger::default();
    let mut client: Option<tokio_postgres::Client> = None;
    let mut written = 0;
    while written < spec.per_writer && !stop.load(Ordering::SeqCst) {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match postgres::connect(&url).await {
                Ok(c) => {
                    if spec.sync_commit {
                        c.batch_execute("SET synchronous_commit = on").await.ok();
                    }
                    client.insert(c)
                }
                Err(_) => {
                    ledger.errors += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let n = (rng.range(1, spec.max_txn as u64) as usize).min(spec.per_writer - written);
        let outcome: Result<Vec<i64>, (Vec<i64>, tokio_postgres::Error)> = async {
            let tx = c.transaction().await.map_err(|e| (vec![], e))?;
            let rows = tx
                .query(
                    "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) \
                     SELECT 'order', 'w' || $2::int || '-k' || (g % 5), 'OrderCreated', \
                            jsonb_build_object('writer', $2::int, 'g', g) \
                     FROM generate_series(1, $1::int) g RETURNING id",
                    &[&(n as i32), &(w as i32)],
                )
                .await
                .map_err(|e| (vec![], e))?;
            let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            match tx.commit().await {
                Ok(()) => Ok(ids),
                Err(e) => Err((ids, e)),
            }
        }
        .await;
        match outcome {
            Ok(ids) => {
                written += ids.len();
                ledger.committed.extend(ids);
                ledger.txns += 1;
            }
            Err((ids, _e)) => {
                ledger.errors += 1;
                ledger.uncertain.extend(ids);
                client = None;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        if !spec.pace.is_zero() {
            tokio::time::sleep(spec.pace).await;
        }
    }
    ledger
}

/// Insert one row with aggregate id `agg`; returns its id.
async fn insert_one(env: &Env, agg: &str, topic: Option<&str>) -> i64 {
    env.client()
        .await
        .query_one(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, topic) \
             VALUES ('order', $1, 'Marker', '{\"marker\": true}', $2) RETURNING id",
            &[&agg, &topic],
        )
        .await
        .expect("insert")
        .get(0)
}

// ---- checkpoint timeline --------------------------------------------------

/// Polls the checkpoint table every 5 ms on a direct connection and records
/// each new value with the time it was first seen.
pub struct CheckpointTimeline {
    points: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl CheckpointTimeline {
    pub fn start(url: &str) -> CheckpointTimeline {
        let points = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s, url) = (points.clone(), stop.clone(), url.to_string());
        let handle = tokio::spawn(async move {
            let mut client = None;
            let mut last = 0u64;
            while !s.load(Ordering::SeqCst) {
                if client.is_none() {
                    client = postgres::connect(&url).await.ok();
                }
                if let Some(c) = &client {
                    match c
                        .query_opt(
                            "SELECT lsn::text FROM public.outbox_relay_checkpoint WHERE slot_name = 'outbox_relay'",
                            &[],
                        )
                        .await
                    {
                        Ok(row) => {
                            let lsn = row
                                .and_then(|r| parse_lsn(&r.get::<_, String>(0)))
                                .unwrap_or(0);
                            if lsn != last {
                                last = lsn;
                                p.lock().unwrap().push((Instant::now(), lsn));
                            }
                        }
                        Err(_) => client = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        CheckpointTimeline {
            points,
            stop,
            handle,
        }
    }

    /// First moment at or after `t` the checkpoint was seen beyond `lsn`.
    pub fn first_beyond(&self, t: Instant, lsn: u64) -> Option<Instant> {
        let pts = self.points.lock().unwrap();
        // A value already beyond `lsn` before `t` counts from `t`.
        let before = pts.iter().rev().find(|(at, _)| *at < t);
        if before.is_some_and(|(_, l)| *l > lsn) {
            return Some(t);
        }
        pts.iter()
            .find(|(at, l)| *at >= t && *l > lsn)
            .map(|(at, _)| *at)
    }

    /// Checkpoint value at time `t`.
    pub fn value_at(&self, t: Instant) -> u64 {
        let pts = self.points.lock().unwrap();
        pts.iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .map(|(_, l)| *l)
            .unwrap_or(0)
    }

    pub fn latest(&self) -> u64 {
        self.points.lock().unwrap().last().map(|p| p.1).unwrap_or(0)
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.handle.await;
    }
}

/// Commit LSN (the `lsn` header) of the first delivery of row `id`.
fn lsn_of(msgs: &[Received], id: i64) -> u64 {
    let m = msgs
        .iter()
        .find(|m| m.header_str("id").as_deref() == Some(id.to_string().as_str()))
        .unwrap_or_else(|| panic!("row {id} not among the messages"));
    parse_lsn(&m.header_str("lsn").expect("lsn header")).expect("lsn")
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// ---- crash loop -------------------------------------------------------------

/// Crash loop: 4 writers insert continuously (transactions of 1–20 rows)
/// while the relay is killed with SIGKILL at seeded-random moments (100–1200
/// ms after each start) and restarted, K times; `kafka.max-in-flight` = 200.
///
/// At the end every committed row arrived, the first delivery of each row
/// is in commit order within its partition, and the duplicates stay within
/// K × max(window, largest transaction): a crash re-sends at most what was
/// sent since the last persisted checkpoint.
///
/// CI: K = 20, 10,000 events. Heavy (`OUTBOX_HEAVY=1`): K = 100, 50,000
/// events. Measured figures are reported in the module's final report.
#[tokio::test(flavor = "multi_thread")]
async fn crash_loop_kill_9_loses_nothing_and_keeps_order() {
    let (crashes, events) = if heavy() { (100, 50_000) } else { (20, 10_000) };
    let window = 200;
    let max_txn = 20;
    let writers_n = 4;
    let mut rng = Rng::new(0xC0FFEE);
    let kill_after: Vec<u64> = (0..crashes).map(|_| rng.range(100, 1200)).collect();
    let loop_ms: u64 = kill_after.iter().sum();
    let per_writer = events / writers_n;
    // Pace the writers so they keep writing for (most of) the crash loop.
    let txns_per_writer = per_writer as u64 * 2 / (max_txn as u64 + 1);
    let pace = Duration::from_millis(loop_ms / txns_per_writer.max(1));

    let env = Env::start_with(&[TOPIC], "", window).await;
    let started = Instant::now();
    let mut relay = env.spawn_relay();
    let writers = Writers::start(
        &env.url(),
        &WriterSpec {
            writers: writers_n,
            per_writer,
            max_txn,
            pace,
            sync_commit: false,
            seed: 42,
        },
    );
    let mut max_rss_kb = 0;
    for (k, wait) in kill_after.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(*wait)).await;
        assert!(
            relay.is_running(),
            "relay exited by itself before crash {k}:\n{}",
            relay.log_text()
        );
        max_rss_kb = max_rss_kb.max(relay.peak_rss_kb().unwrap_or(0));
        relay.kill9();
        relay = env.spawn_relay();
    }
    let loop_done = started.elapsed();
    let ledger = writers.join().await;
    let ids: HashSet<i64> = ledger.committed.iter().copied().collect();
    assert_eq!(ids.len(), per_writer * writers_n);
    assert!(ledger.uncertain.is_empty());

    let msgs = env.read_ids(TOPIC, &ids, Duration::from_secs(180)).await;
    let arrival = Arrival::of(&msgs);
    arrival.assert_complete(&ids);
    arrival.assert_commit_order();
    let dups = arrival.duplicates();
    let bound = crashes * window.max(max_txn);
    eprintln!(
        "crash loop: {} events in {} transactions, {crashes} kill -9 over {:.1}s, \
         {dups} duplicates ({:.1}/crash, bound {bound} = K x window {window}), \
         all arrived {:.1}s after start, relay peak RSS {} MB",
        ids.len(),
        ledger.txns,
        loop_done.as_secs_f64(),
        dups as f64 / crashes as f64,
        started.elapsed().as_secs_f64(),
        max_rss_kb / 1024
    );
    assert!(dups <= bound, "{dups} duplicates > {bound}");
    let failed: i64 = env
        .client()
        .await
        .query_one("SELECT count(*) FROM public.outbox WHERE status = 'FAILED'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, 0, "a crash is never a row error");
    assert!(relay.is_running());
}

// ---- PostgreSQL restart -----------------------------------------------------

/// `pg_ctl restart -m MODE` while the relay streams a backlog of 20,000
/// rows and 2 writers keep inserting (synchronous commit, so the ledger is
/// exact; a commit lost with its connection is "uncertain" and checked
/// against the table). The relay must ride it out by itself (same process,
/// sessions retried with backoff), lose nothing and keep commit order.
async fn pg_restart_mid_stream(mode: &str) {
    let mut env = Env::start(&[TOPIC]).await;
    let mut relay = env.spawn_relay();
    let ckpts = CheckpointTimeline::start(&env.url());
    let writers = Writers::start(
        &env.url(),
        &WriterSpec {
            writers: 2,
            per_writer: usize::MAX / 4,
            max_txn: 20,
            pace: Duration::from_millis(10),
            sync_commit: true,
            seed: 7,
        },
    );
    support::wait_until_msg(
        "a first checkpoint",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async { env.checkpoint().await.is_some() },
    )
    .await;
    // A backlog, so the restart hits the relay mid-stream.
    let c = env.client().await;
    let mut backlog = Vec::new();
    for b in 0..20 {
        let rows = c
            .query(
                "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) \
                 SELECT 'order', 'bulk-' || (g % 9), 'Bulk', jsonb_build_object('b', $1::int, 'g', g) \
                 FROM generate_series(1, 1000) g RETURNING id",
                &[&b],
            )
            .await
            .unwrap();
        backlog.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
    }
    drop(c);
    // Make the backlog durable: the cluster runs with synchronous_commit=off.
    env.client()
        .await
        .batch_execute("CHECKPOINT")
        .await
        .unwrap();
    let ckpt_before = env.checkpoint().await.unwrap_or(0);
    let t0 = Instant::now();
    env.pg.restart(mode).await;
    let restarted = Instant::now();
    let restart_took = restarted - t0;
    let mid_stream = ckpts.value_at(t0);
    // Keep writing for a while after the restart, then stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ledger = writers.stop().await;
    assert!(relay.is_running(), "the relay must not exit:\n{}", relay.log_text());

    let table = env.outbox_ids().await;
    let committed: HashSet<i64> = ledger.committed.iter().chain(&backlog).copied().collect();
    let missing_in_pg: Vec<_> = committed.difference(&table).take(5).collect();
    assert!(
        missing_in_pg.is_empty(),
        "synchronously committed rows missing from the table after the restart: {missing_in_pg:?}"
    );
    let uncertain: HashSet<i64> = ledger.uncertain.iter().copied().collect();
    assert!(table.difference(&committed).all(|id| uncertain.contains(id)));

    let msgs = env.read_ids(TOPIC, &table, Duration::from_secs(120)).await;
    let arrival = Arrival::of(&msgs);
    arrival.assert_complete(&table);
    arrival.assert_commit_order();
    // When did the relay make progress again after the server was back?
    let back = ckpts
        .first_beyond(restarted, ckpts.value_at(restarted))
        .map(|t| t - restarted);
    let log = relay.log_text();
    let retries = log.matches("relay session failed; retrying").count();
    eprintln!(
        "pg_ctl restart -m {mode}: took {} ms; checkpoint at restart {:X} (before backlog {:X}); \
         {} rows ({} backlog, {} writer txns, {} writer errors, {} uncertain); {} duplicates; \
         {retries} session retries; checkpoint advanced {:?} ms after the server was back",
        ms(restart_took),
        mid_stream,
        ckpt_before,
        table.len(),
        backlog.len(),
        ledger.txns,
        ledger.errors,
        uncertain.len(),
        arrival.duplicates(),
        back.map(ms),
    );
    assert!(retries >= 1, "the relay noticed the restart:\n{log}");
    // Each failed session re-sends at most max(window, one transaction).
    let bound = retries * env.max_in_flight.max(1000);
    assert!(arrival.duplicates() <= bound, "{} duplicates > {bound}", arrival.duplicates());
    assert!(relay.is_running());
    ckpts.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_fast_restart_mid_stream_loses_nothing() {
    pg_restart_mid_stream("fast").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_immediate_restart_mid_stream_loses_nothing() {
    pg_restart_mid_stream("immediate").await;
}

// ---- network faults (TCP proxy) -------------------------------------------

/// Which connection the proxy sits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// Relay ↔ broker (the broker advertises the proxy: every connection).
    Broker,
    /// Relay ↔ PostgreSQL (replication and control connections); the
    /// writers and the test's own queries go direct.
    Postgres,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Bytes stop flowing both ways; sockets stay open.
    Stall(Duration),
    /// Every connection is closed at once.
    Cut,
    /// Every connection is closed and new ones are refused for a while.
    Refuse(Duration),
}

/// What a fault scenario measured.
struct Recovery {
    /// Fault end → checkpoint beyond the first row committed after it.
    marker: Duration,
    /// Same for a row written in steady state before the fault (the
    /// relay's normal commit → durable checkpoint latency).
    baseline: Duration,
    events: usize,
    duplicates: usize,
}

/// Run `fault` on the `via` path while one writer inserts continuously;
/// check the ledger against the topic; measure recovery as the time from
/// the fault's end until the checkpoint covers a row committed right then.
async fn network_fault(via: Via, fault: Fault, relay_env: &[(&str, &str)]) -> Recovery {
    let (env, proxy) = match via {
        Via::Broker => Env::start_proxied_broker(&[TOPIC], "", 1000).await,
        Via::Postgres => {
            let env = Env::start_with(&[TOPIC], "", 1000).await;
            let proxy = TcpProxy::start(env.pg.addr()).await;
            (env, proxy)
        }
    };
    let pg_url = format!("postgres://postgres@127.0.0.1:{}/app", proxy.port());
    let mut vars: Vec<(&str, &str)> = relay_env.to_vec();
    if via == Via::Postgres {
        vars.push(("OUTBOX_RELAY_POSTGRES_URL", &pg_url));
    }
    let mut relay = env.spawn_relay_with(&vars);
    let ckpts = CheckpointTimeline::start(&env.url());
    let writers = Writers::start(
        &env.url(),
        &WriterSpec {
            writers: 1,
            per_writer: usize::MAX / 4,
            max_txn: 10,
            pace: Duration::from_millis(20),
            sync_commit: false,
            seed: 99,
        },
    );
    support::wait_until_msg(
        "a first checkpoint",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async { env.checkpoint().await.is_some() },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t_base = Instant::now();
    let base_id = insert_one(&env, "marker-base", None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let conns_before = proxy.connections_accepted();
    match fault {
        Fault::Stall(d) => {
            proxy.pause();
            tokio::time::sleep(d).await;
            proxy.resume();
        }
        Fault::Cut => proxy.cut(),
        Fault::Refuse(d) => {
            proxy.set_refusing(true);
            proxy.cut();
            tokio::time::sleep(d).await;
            proxy.set_refusing(false);
        }
    }
    let t_end = Instant::now();
    let marker_id = insert_one(&env, "marker-after", None).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ledger = writers.stop().await;
    assert!(relay.is_running(), "the relay must ride out the fault:\n{}", relay.log_text());

    let mut ids: HashSet<i64> = ledger.committed.iter().copied().collect();
    ids.insert(base_id);
    ids.insert(marker_id);
    let msgs = env.read_ids(TOPIC, &ids, Duration::from_secs(90)).await;
    let arrival = Arrival::of(&msgs);
    arrival.assert_complete(&ids);
    arrival.assert_commit_order();
    let marker_lsn = lsn_of(&msgs, marker_id);
    let base_lsn = lsn_of(&msgs, base_id);
    let marker = ckpts
        .first_beyond(t_end, marker_lsn)
        .expect("checkpoint never covered the marker")
        - t_end;
    let baseline = ckpts
        .first_beyond(t_base, base_lsn)
        .expect("checkpoint never covered the baseline marker")
        - t_base;
    let log = relay.log_text();
    eprintln!(
        "{via:?} {fault:?} {relay_env:?}: recovery {} ms (baseline {} ms); {} events, {} duplicates, \
         {} new proxy connections, {} relay session retries",
        ms(marker),
        ms(baseline),
        ids.len(),
        arrival.duplicates(),
        proxy.connections_accepted() - conns_before,
        log.matches("relay session failed; retrying").count(),
    );
    if std::env::var_os("OUTBOX_TEST_RELAY_LOG").is_some() {
        eprintln!("--- relay log ---\n{log}");
    }
    ckpts.stop().await;
    Recovery {
        marker,
        baseline,
        events: ids.len(),
        duplicates: arrival.duplicates(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_stall_3s_through_proxy() {
    let r = network_fault(Via::Broker, Fault::Stall(Duration::from_secs(3)), &[]).await;
    assert_eq!(r.duplicates, 0, "a stall needs no re-send");
    assert!(r.marker < Duration::from_secs(1), "recovery {:?}", r.marker);
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_connections_cut_through_proxy() {
    let r = network_fault(Via::Broker, Fault::Cut, &[]).await;
    assert!(r.marker < Duration::from_secs(1), "recovery {:?}", r.marker);
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_refusing_connections_2s_through_proxy() {
    let r = network_fault(Via::Broker, Fault::Refuse(Duration::from_secs(2)), &[]).await;
    assert!(r.marker < Duration::from_secs(1), "recovery {:?}", r.marker);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_connections_cut_through_proxy() {
    let r = network_fault(Via::Postgres, Fault::Cut, &[("OUTBOX_RELAY_LOG", "info,outbox_relay=debug,pgwire_replication=debug,librdkafka=debug"), ("OUTBOX_RELAY_KAFKA_PROPERTY_DEBUG", "eos,topic,msg,broker"), ("OUTBOX_RELAY_KAFKA_PROPERTY_ENABLE_SPARSE_CONNECTIONS", "false")]).await;
    assert!(r.marker < Duration::from_secs(1), "recovery {:?}", r.marker);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stall_3s_through_proxy() {
    let r = network_fault(Via::Postgres, Fault::Stall(Duration::from_secs(3)), &[]).await;
    assert!(r.marker < Duration::from_secs(1), "recovery {:?}", r.marker);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_refusing_connections_2s_through_proxy() {
    let r = network_fault(Via::Postgres, Fault::Refuse(Duration::from_secs(2)), &[]).await;
    assert!(r.marker < Duration::from_secs(1), "recovery {:?}", r.marker);
}

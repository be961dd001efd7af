//! High availability (issue 12): several `run` processes on one slot, one
//! leader through the PostgreSQL advisory lock, standbys that take over.
//!
//! Every relay runs with `kafka.instance-header = true`, so the broker's data
//! says which process produced each message: takeover times are measured
//! from the kill to the first message of the new leader seen by a consumer,
//! and "never two producers" is checked per partition on the data.
//!
//! `OUTBOX_HEAVY=1`: ten `kill -9`s instead of five.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::fixture::{Arrival, Env, RelayProc};
use crate::support::kafka::Received;
use crate::support::postgres;
use crate::support::proxy::TcpProxy;

pub(crate) const TOPIC: &str = "outbox.order";
pub(crate) const INSTANCE: (&str, &str) = ("OUTBOX_RELAY_KAFKA_INSTANCE_HEADER", "true");
/// The `[ha]` defaults, not the fixture's pinned 1 s lease.
pub(crate) const HA_DEFAULTS: &str = "[ha]\n";
/// Several relays on one host: each its own metrics port.
pub(crate) const OWN_PORT: (&str, &str) = ("OUTBOX_RELAY_METRICS_LISTEN", "127.0.0.1:0");

/// A relay with the instance header and a metrics port of its own.
fn spawn(env: &Env) -> RelayProc {
    env.spawn_relay_with(&[INSTANCE, OWN_PORT])
}

fn heavy() -> bool {
    std::env::var("OUTBOX_HEAVY").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A log line without its colour codes.
pub(crate) fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in line.chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// Pid of the relay process in an instance id `host:pid:start`.
pub(crate) fn instance_pid(instance: &str) -> Option<u32> {
    instance.rsplit(':').nth(1)?.parse().ok()
}

/// The leader's relay pid, from its lock connection's application_name.
pub(crate) async fn leader_pid(env: &Env) -> Option<u32> {
    let c = env.client().await;
    let rows = c
        .query(
            "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE 'outbox-relay leader %'",
            &[],
        )
        .await
        .unwrap();
    let pids: Vec<u32> = rows
        .iter()
        .filter_map(|r| {
            let name: String = r.get(0);
            let hostpid = name.split_whitespace().nth(3)?;
            hostpid.rsplit_once(':')?.1.parse().ok()
        })
        .collect();
    assert!(pids.len() <= 1, "two leaders at once: {pids:?}");
    pids.first().copied()
}

pub(crate) async fn wait_leader(env: &Env, not: Option<u32>, deadline: Duration) -> u32 {
    let end = Instant::now() + deadline;
    loop {
        if let Some(p) = leader_pid(env).await {
            if Some(p) != not {
                return p;
            }
        }
        assert!(Instant::now() < end, "no (new) leader within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writer `w`: small transactions, paced, until `stop` and at least `min`
/// rows. Returns the committed ids.
pub(crate) async fn paced_writer(
    url: String,
    w: usize,
    min: usize,
    stop: Arc<AtomicBool>,
) -> Vec<i64> {
    let mut client = postgres::connect(&url).await.expect("writer connect");
    let mut ids = Vec::new();
    let mut seq = 0usize;
    while ids.len() < min || !stop.load(Ordering::Relaxed) {
        let tx = client.transaction().await.expect("begin");
        for _ in 0..(1 + seq % 5) {
            let agg = format!("order-{w}-{}", seq % 7);
            let id: i64 = tx
                .query_one(
                    "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) \
                     VALUES ('order', $1, 'OrderCreated', $2) RETURNING id",
                    &[&agg, &json!({"writer": w, "seq": seq})],
                )
                .await
                .expect("insert")
                .get(0);
            ids.push(id);
            seq += 1;
        }
        tx.commit().await.expect("commit");
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    ids
}

/// What a tailing consumer saw so far.
#[derive(Default)]
pub(crate) struct Seen {
    /// First time a message of each instance was read.
    pub first: HashMap<String, Instant>,
    pub ids: HashSet<i64>,
    /// Set when the writers are done: the reader stops once all arrived.
    pub want: Option<HashSet<i64>>,
}

/// Tail the topic in the background until every id in `want` arrived.
pub(crate) fn tail(env: &Env, seen: Arc<Mutex<Seen>>) -> tokio::task::JoinHandle<Vec<Received>> {
    let bootstrap = env.bootstrap();
    let topic = env.topic(TOPIC);
    tokio::spawn(async move {
        let mut done_upto = 0;
        crate::support::kafka::read_until_async(
            &bootstrap,
            &topic,
            Duration::from_secs(600),
            move |got| {
                let mut s = seen.lock().unwrap();
                let now = Instant::now();
                for m in &got[done_upto..] {
                    if let Some(i) = m.header_str("relay_instance") {
                        s.first.entry(i).or_insert(now);
                    }
                    if let Some(id) = m.header_str("id").and_then(|v| v.parse().ok()) {
                        s.ids.insert(id);
                    }
                }
                done_upto = got.len();
                match &s.want {
                    Some(w) => w.is_subset(&s.ids),
                    None => false,
                }
            },
        )
        .await
    })
}
/// The end of a takeover test: stop the writers, hand the reader every id
/// they committed, wait for it, and check what arrived — every id, commit
/// order per partition, no two leaders interleaved within a partition.
pub(crate) async fn stop_and_check(
    stop: &AtomicBool,
    writers: Vec<tokio::task::JoinHandle<Vec<i64>>>,
    seen: &Mutex<Seen>,
    reader: tokio::task::JoinHandle<Vec<Received>>,
) -> (HashSet<i64>, Arrival) {
    stop.store(true, Ordering::Relaxed);
    let mut ids = HashSet::new();
    for w in writers {
        ids.extend(w.await.expect("writer"));
    }
    seen.lock().unwrap().want = Some(ids.clone());
    let msgs = reader.await.expect("reader");
    let arrival = Arrival::of(&msgs);
    arrival.assert_complete(&ids);
    arrival.assert_commit_order();
    assert_no_interleaving(&msgs);
    (ids, arrival)
}

/// Per partition, the run of producing instances in offset order never
/// returns to an earlier one: no message of an earlier leader after the
/// first of a later one.
pub(crate) fn assert_no_interleaving(msgs: &[Received]) {
    let arrival = Arrival::of(msgs);
    for (p, ms) in &arrival.by_partition {
        let mut runs: Vec<String> = Vec::new();
        for m in ms {
            let i = m
                .header_str("relay_instance")
                .expect("relay_instance header");
            if runs.last() != Some(&i) {
                assert!(
                    !runs.contains(&i),
                    "partition {p}: {i} produced again after a later leader ({runs:?})"
                );
                runs.push(i);
            }
        }
    }
}

/// Three relays, eight paced writers (≥ 10,000 events), `kill -9` of the
/// current leader 5 times (10 with `OUTBOX_HEAVY=1`): nothing lost, commit
/// order per partition, duplicates at most the in-flight window per kill;
/// each takeover measured from the kill to the new leader's first message.
#[tokio::test(flavor = "multi_thread")]
async fn kill9_of_the_leader_hands_over_without_loss() {
    let env = Env::start_with(&[TOPIC], HA_DEFAULTS, 1000).await;
    let kills = if heavy() { 10 } else { 5 };
    let mut relays: Vec<RelayProc> = (0..3).map(|_| spawn(&env)).collect();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let reader = tail(&env, seen.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| tokio::spawn(paced_writer(env.url(), w, 1250, stop.clone())))
        .collect();

    let mut takeovers = Vec::new();
    let mut last_leader = None;
    for k in 0..kills {
        let leader = wait_leader(&env, last_leader, Duration::from_secs(30)).await;
        // Let it publish for a moment (and prove it did).
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let produced = seen
                .lock()
                .unwrap()
                .first
                .keys()
                .any(|i| instance_pid(i) == Some(leader));
            if produced {
                break;
            }
            assert!(Instant::now() < end, "leader {leader} published nothing");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        let idx = relays
            .iter()
            .position(|r| r.pid() == Some(leader))
            .expect("the leader is one of ours");
        let before: HashSet<String> = seen.lock().unwrap().first.keys().cloned().collect();
        let killed_at = Instant::now();
        let killed_wall = std::time::SystemTime::now();
        relays[idx].kill9();
        relays[idx] = spawn(&env);
        // The next instance to publish is the new leader.
        let end = killed_at + Duration::from_secs(30);
        let took = loop {
            let first = seen
                .lock()
                .unwrap()
                .first
                .iter()
                .filter(|(i, _)| !before.contains(*i))
                .map(|(_, t)| *t)
                .min();
            if let Some(t) = first {
                break t - killed_at;
            }
            assert!(
                Instant::now() < end,
                "kill {k}: no new leader published within 30s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        eprintln!(
            "[ha] kill {k} at {}: takeover {took:?}",
            humantime::format_rfc3339_micros(killed_wall)
        );
        // Where the time went: the new leader's election and session lines.
        let new_pid = seen
            .lock()
            .unwrap()
            .first
            .keys()
            .filter(|i| !before.contains(*i))
            .find_map(|i| instance_pid(i));
        if let Some(r) = relays
            .iter()
            .find(|r| r.pid().is_some() && r.pid() == new_pid)
        {
            for l in r.log_text().lines().filter(|l| {
                [
                    "won the slot",
                    "longer lease",
                    "became leader",
                    "replication session started",
                ]
                .iter()
                .any(|p| l.contains(p))
            }) {
                eprintln!("[ha]    {}", strip_ansi(l));
            }
        }
        takeovers.push(took);
        last_leader = Some(leader);
    }
    let (ids, arrival) = stop_and_check(&stop, writers, &seen, reader).await;
    assert!(ids.len() >= 10_000, "{} events", ids.len());
    // Duplicates: at most what was in flight (max-in-flight) per kill.
    let window = 10_000 * kills;
    assert!(
        arrival.duplicates() <= window,
        "{} duplicates",
        arrival.duplicates()
    );
    takeovers.sort();
    eprintln!(
        "[ha] {} events, {} duplicates over {kills} kills; takeover min {:?} p50 {:?} max {:?}; all {:?}",
        ids.len(),
        arrival.duplicates(),
        takeovers[0],
        takeovers[takeovers.len() / 2],
        takeovers[takeovers.len() - 1],
        takeovers
    );
    // The numbers at the default lease (500 ms): p50 ≤ 1 s, max ≤ 3 s.
    let (p50, max) = (
        takeovers[takeovers.len() / 2],
        takeovers[takeovers.len() - 1],
    );
    assert!(p50 <= Duration::from_secs(1), "takeover p50 {p50:?}");
    assert!(max <= Duration::from_secs(3), "a takeover took {max:?}");
}

/// The leader's PostgreSQL connections go through a proxy that stops
/// forwarding (the process stays alive): it steps down by itself when its
/// lease runs out, the standby takes over (ending the old walsender), and no
/// partition shows a message of the old leader after the new one's first.
#[tokio::test(flavor = "multi_thread")]
async fn network_cut_leader_steps_down_and_leaders_never_interleave() {
    let env = Env::start_with(&[TOPIC], HA_DEFAULTS, 1000).await;
    let proxy = TcpProxy::start(env.pg.addr()).await;
    let proxied_url = env.url().replace(
        &format!(":{}/", env.pg.port()),
        &format!(":{}/", proxy.port()),
    );
    assert_ne!(proxied_url, env.url(), "url has host:port/");
    // A serves its metrics on the env's port (B on one of its own).
    let mut a = env.spawn_relay_with(&[INSTANCE, ("OUTBOX_RELAY_POSTGRES_URL", &proxied_url)]);
    let a_pid = a.pid().unwrap();
    assert_eq!(
        wait_leader(&env, None, Duration::from_secs(30)).await,
        a_pid
    );
    let b = spawn(&env);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let reader = tail(&env, seen.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(paced_writer(env.url(), w, 500, stop.clone())))
        .collect();
    // A publishes, then its network to PostgreSQL goes black.
    let end = Instant::now() + Duration::from_secs(30);
    while !seen
        .lock()
        .unwrap()
        .first
        .keys()
        .any(|i| instance_pid(i) == Some(a_pid))
    {
        assert!(Instant::now() < end, "A published nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cut_at = Instant::now();
    proxy.pause();
    let b_pid = b.pid().unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let took = loop {
        let t = seen
            .lock()
            .unwrap()
            .first
            .iter()
            .find(|(i, _)| instance_pid(i) == Some(b_pid))
            .map(|(_, t)| *t);
        if let Some(t) = t {
            break t - cut_at;
        }
        assert!(Instant::now() < end, "B did not take over within 30s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("[ha] network cut: takeover {took:?}");
    assert!(a.is_running(), "A stays alive");
    assert!(
        a.log_text().contains("stepped down"),
        "A stepped down by itself:\n{}",
        a.log_text()
    );
    // A standby reports itself as one, and no lag of its days as leader
    // (stale values would keep the lag alert firing on it).
    let metrics = crate::observability::scrape(&env).await.unwrap_or_default();
    let got = crate::observability::samples(&metrics);
    for (name, want) in [
        ("outbox_relay_leader", 0.0),
        ("outbox_relay_lag_bytes", 0.0),
        ("outbox_relay_lag_seconds", 0.0),
    ] {
        assert_eq!(
            got.get(name).copied(),
            Some(want),
            "{name} of the stepped-down relay:\n{metrics}"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ids, arrival) = stop_and_check(&stop, writers, &seen, reader).await;
    eprintln!(
        "[ha] network cut: {} events, {} duplicates",
        ids.len(),
        arrival.duplicates()
    );
    proxy.resume();
    drop(b);
}

/// SIGTERM of the leader: it drains, persists and releases the lock; the
/// standby takes over without a single duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_of_the_leader_hands_over_without_duplicates() {
    let env = Env::start_with(&[TOPIC], HA_DEFAULTS, 1000).await;
    let mut a = spawn(&env);
    let a_pid = a.pid().unwrap();
    assert_eq!(
        wait_leader(&env, None, Duration::from_secs(30)).await,
        a_pid
    );
    let b = spawn(&env);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let reader = tail(&env, seen.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(paced_writer(env.url(), w, 500, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    let status = a.terminate(Duration::from_secs(20));
    assert!(status.success(), "graceful stop: {status:?}");
    let new = wait_leader(&env, Some(a_pid), Duration::from_secs(10)).await;
    assert_eq!(new, b.pid().unwrap());
    eprintln!("[ha] SIGTERM: new leader after {:?}", t0.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, arrival) = stop_and_check(&stop, writers, &seen, reader).await;
    assert_eq!(
        arrival.duplicates(),
        0,
        "graceful handover re-sends nothing"
    );
    assert!(a.log_text().contains("released the slot's lock"));
}

/// While one relay leads, the standbys hold no replication connection and no
/// checkpoint connection at all: one walsender (the slot's active pid), one
/// checkpoint connection, two standby lock connections.
#[tokio::test(flavor = "multi_thread")]
async fn standbys_never_open_the_stream_or_write_the_checkpoint() {
    let env = Env::start_with(&[TOPIC], HA_DEFAULTS, 1000).await;
    let a = spawn(&env);
    let a_pid = a.pid().unwrap();
    assert_eq!(
        wait_leader(&env, None, Duration::from_secs(30)).await,
        a_pid
    );
    let standbys = [spawn(&env), spawn(&env)];
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(paced_writer(env.url(), 0, 200, stop.clone()));
    let c = env.client().await;
    // Wait until both report standing by.
    let end = Instant::now() + Duration::from_secs(20);
    // The lock is won before the grace period: wait for the stream too.
    while !a.log_text().contains("replication session started")
        || !standbys
            .iter()
            .all(|s| s.log_text().contains("standing by"))
    {
        assert!(Instant::now() < end, "standbys did not report standing by");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..15 {
        let repl: i64 = c
            .query_one("SELECT count(*) FROM pg_stat_replication", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(repl, 1, "exactly one walsender");
        let same: bool = c
            .query_one(
                "SELECT (SELECT active_pid FROM pg_replication_slots) = (SELECT pid FROM pg_stat_replication)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(same, "the slot is held by the one walsender");
        let row = c
            .query_one(
                "SELECT count(*) FILTER (WHERE application_name = 'outbox-relay checkpoint'), \
                        count(*) FILTER (WHERE application_name LIKE 'outbox-relay standby %'), \
                        count(*) FILTER (WHERE application_name LIKE 'outbox-relay leader %') \
                 FROM pg_stat_activity",
                &[],
            )
            .await
            .unwrap();
        let (ck, sb, ld): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            (ck, sb, ld),
            (1, 2, 1),
            "checkpoint/standby/leader connections"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for s in &standbys {
        let log = s.log_text();
        assert!(!log.contains("replication session started"), "{log}");
        assert!(!log.contains("became leader"), "{log}");
    }
    // At the default lease the leader renewed throughout.
    assert!(!a.log_text().contains("stepped down"), "{}", a.log_text());
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    // status lists the leader and both standbys.
    let out = env.relay_command(&["status"]).output().expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("standby")).count(),
        2,
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("leader") && l.contains(&format!(":{a_pid} since"))),
        "{text}"
    );
    drop(a);
}

/// Soak (`--ignored`; `OUTBOX_SOAK_SECS`, default 120): one leader at the
/// default lease and a standby, paced writers, on whatever load the machine
/// has — counts how often the leader fenced itself on a slow renewal (the
/// risk a 500 ms lease takes; README "Choosing the lease").
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn soak_the_default_lease_under_load() {
    let secs: u64 = std::env::var("OUTBOX_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let env = Env::start_with(&[TOPIC], HA_DEFAULTS, 1000).await;
    let a = spawn(&env);
    wait_leader(&env, None, Duration::from_secs(30)).await;
    let b = spawn(&env);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(paced_writer(env.url(), w, 100, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut n = 0;
    for w in writers {
        n += w.await.expect("writer").len();
    }
    let fences: usize = [&a, &b]
        .iter()
        .map(|r| r.log_text().matches("stepped down").count())
        .sum();
    eprintln!("[ha] soak {secs}s, {n} events: {fences} self-fences");
    assert_eq!(fences, 0, "a leader fenced itself at the default lease");
}

//! `outbox-relay verify` against a real relay, PostgreSQL and Apache Kafka. A broker keeps
//! what it got, so the faults are built, not simulated: rows committed while the
//! publication excluded the table (missing), a message re-sent by hand (duplicate), a
//! missing row patched in by hand after later rows of its key (reordered), a message from
//! someone else (foreign), a dead-lettered row (not missing). Each is reported exactly.

use std::collections::HashSet;
use std::process::Output;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

use crate::fixture::Env;
use crate::support::kafka::{self, Received};
use crate::support::postgres;

const TOPIC: &str = "outbox.order";

/// Insert `n` rows for aggregates `agg-0..agg-4`, `per_txn` per transaction.
async fn insert(env: &Env, n: usize, per_txn: usize) -> Vec<i64> {
    let mut c = postgres::connect(&env.url()).await.unwrap();
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(per_txn) {
        let tx = c.transaction().await.unwrap();
        for i in chunk {
            let id: i64 = tx
                .query_one(
                    "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) \
                     VALUES ('order', $1, 'OrderCreated', $2) RETURNING id",
                    &[&format!("agg-{}", i % 5), &json!({"i": i})],
                )
                .await
                .unwrap()
                .get(0);
            ids.push(id);
        }
        tx.commit().await.unwrap();
    }
    ids
}

fn verify(env: &Env, args: &[&str]) -> Output {
    let mut full = vec!["verify", "--wait", "20s"];
    full.extend_from_slice(args);
    env.relay_command(&full).output().expect("run verify")
}

/// `verify --json`: (exit code, report, stderr).
fn verify_json(env: &Env, args: &[&str]) -> (i32, Value, String) {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = verify(env, &a);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify printed no JSON ({e}); stderr: {stderr}"));
    (out.status.code().unwrap_or(-1), report, stderr)
}

fn producer(env: &Env) -> FutureProducer {
    kafka::client_config(&env.bootstrap())
        .create()
        .expect("producer")
}

/// Produce `m`'s key, value and headers again to its partition, as an operator's manual
/// re-send would.
async fn produce(
    p: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &[u8],
    value: &[u8],
    headers: &[(String, Vec<u8>)],
) {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    p.send(
        FutureRecord::to(topic)
            .partition(partition)
            .key(key)
            .payload(value)
            .headers(h),
        Duration::from_secs(10),
    )
    .await
    .expect("manual produce");
}

fn id_of(m: &Received) -> i64 {
    m.header_str("id").unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_reports_each_built_fault_exactly() {
    let env = Env::start(&[TOPIC]).await;
    let _relay = env.spawn_relay();
    let c = env.client().await;

    // A clean run reports nothing.
    let clean: HashSet<i64> = insert(&env, 300, 7).await.into_iter().collect();
    env.read_ids(TOPIC, &clean, Duration::from_secs(60)).await;
    let (code, r, stderr) = verify_json(&env, &[]);
    assert_eq!(code, 0, "{r:#} {stderr}");
    assert_eq!(r["window"]["rows"], 300);
    assert_eq!(r["relay"]["confirmed"], true);
    for k in ["missing", "duplicates", "reordered", "foreign"] {
        assert_eq!(r[k]["count"], 0, "{k}: {r:#}");
    }
    assert_eq!(r["topics"][0]["messages"], 300);
    assert_eq!(r["ok"], true);

    // Missing: rows committed while the publication excluded the table. M3 is for agg-3
    // and is patched in by hand later (so not missing, but reordered).
    c.batch_execute("ALTER PUBLICATION outbox_relay_pub DROP TABLE public.outbox")
        .await
        .unwrap();
    let lost = insert(&env, 3, 3).await; // agg-0, agg-1, agg-2 in one transaction
    let patched: i64 = c
        .query_one(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) \
             VALUES ('order', 'agg-3', 'OrderCreated', '{\"patched\": true}') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // A position at or above the patched row's commit, below everything after it.
    let patched_lsn: String = c
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    c.batch_execute("ALTER PUBLICATION outbox_relay_pub ADD TABLE public.outbox")
        .await
        .unwrap();

    // A dead-lettered row (illegal topic name): FAILED and in the DLQ, not missing.
    let dead: i64 = c
        .query_one(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, topic) \
             VALUES ('order', 'agg-4', 'OrderCreated', '{}', 'no such topic!') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let later: HashSet<i64> = insert(&env, 50, 5).await.into_iter().collect();
    let msgs = env.read_ids(TOPIC, &later, Duration::from_secs(60)).await;
    crate::support::wait_until_msg(
        "the dead-lettered row marked FAILED",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { env.row_status(dead).await.0 == "FAILED" },
    )
    .await;

    let p = producer(&env);
    let topic = env.topic(TOPIC);
    // Duplicate: a published message re-sent as it was.
    let dup = msgs
        .iter()
        .find(|m| id_of(m) == *clean.iter().min().unwrap())
        .unwrap();
    produce(
        &p,
        &topic,
        dup.partition,
        dup.key.as_deref().unwrap(),
        dup.payload.as_deref().unwrap(),
        &dup.headers,
    )
    .await;
    // Reordered: the missing agg-3 row produced by hand after later agg-3 rows, with the
    // relay's headers and its commit position.
    let agg3 = msgs
        .iter()
        .find(|m| m.key_str().as_deref() == Some("agg-3") && later.contains(&id_of(m)))
        .unwrap();
    let headers = vec![
        ("id".to_string(), patched.to_string().into_bytes()),
        ("event_type".into(), b"OrderCreated".to_vec()),
        ("aggregate_type".into(), b"order".to_vec()),
        ("aggregate_id".into(), b"agg-3".to_vec()),
        ("lsn".into(), patched_lsn.clone().into_bytes()),
    ];
    produce(
        &p,
        &topic,
        agg3.partition,
        b"agg-3",
        b"{\"patched\": true}",
        &headers,
    )
    .await;
    // Foreign: someone else's message on the topic.
    produce(
        &p,
        &topic,
        0,
        b"intruder",
        b"{}",
        &[("source".into(), b"elsewhere".to_vec())],
    )
    .await;

    let (code, r, stderr) = verify_json(&env, &[]);
    assert_eq!(code, 1, "{r:#}");
    let lost_range = json!([[lost[0], lost[2]]]);
    assert_eq!(r["missing"]["count"], 3, "{r:#}");
    assert_eq!(r["missing"]["items"], lost_range);
    assert_eq!(r["dead_lettered"], 1, "{r:#}");
    assert_eq!(r["duplicates"]["count"], 1);
    assert_eq!(
        r["duplicates"]["items"],
        json!([{"id": id_of(dup), "count": 2}])
    );
    assert_eq!(r["reordered"]["count"], 1, "{r:#}");
    let v = &r["reordered"]["items"][0];
    assert_eq!(v["id"], patched);
    assert_eq!(v["partition"], agg3.partition);
    assert_eq!(v["lsn"], patched_lsn.as_str());
    assert_eq!(r["foreign"]["count"], 1, "{r:#}");
    assert_eq!(r["foreign"]["items"][0]["partition"], 0);
    assert_eq!(
        r["foreign"]["items"][0]["reason"],
        "no relay id and lsn headers"
    );
    assert_eq!(r["window"]["rows"], 300 + 3 + 1 + 1 + 50);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines,
        ["outbox-relay: error: verify: 3 missing, 1 reordered"],
        "one line, no progress bar off a terminal"
    );

    // The human report names the same findings.
    let out = verify(&env, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    for want in [
        format!("missing: 3:\n  {}..{}\n", lost[0], lost[2]),
        format!(
            "duplicated: 1 rows, 1 extra messages:\n  {}×2\n",
            id_of(dup)
        ),
        format!("reordered: 1:\n  id {patched} (lsn {patched_lsn})"),
        "foreign: 1:\n".to_string(),
        "dead-lettered (found in ".to_string(),
        "result: FAILED — 3 missing, 1 reordered".to_string(),
    ] {
        assert!(text.contains(&want), "{want:?} not in\n{text}");
    }

    // Windows: --ids around the clean rows only, --since now (no rows).
    let (lo, hi) = (clean.iter().min().unwrap(), clean.iter().max().unwrap());
    let (code, r, _) = verify_json(&env, &["--ids", &format!("{lo}..{hi}")]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["window"]["rows"], 300);
    assert_eq!(
        r["duplicates"]["count"], 1,
        "the re-sent clean row is in this window"
    );
    assert_eq!(r["missing"]["count"], 0);
    let (code, r, _) = verify_json(&env, &["--ids", &format!("{}..{}", lost[0], lost[2])]);
    assert_eq!(
        (code, r["missing"]["count"].clone()),
        (1, json!(3)),
        "{r:#}"
    );
    let (code, r, _) = verify_json(&env, &["--since", "1h"]);
    assert_eq!(code, 1);
    assert_eq!(r["window"]["rows"], 355);
    let (code, r, _) = verify_json(&env, &["--since", "2099-01-01T00:00:00Z"]);
    assert_eq!((code, r["window"]["rows"].clone()), (0, json!(0)), "{r:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_relay_leaves_rows_unconfirmed_not_silently_missing() {
    let env = Env::start(&[TOPIC]).await;
    let mut relay = env.spawn_relay();
    let ids: HashSet<i64> = insert(&env, 20, 4).await.into_iter().collect();
    env.read_ids(TOPIC, &ids, Duration::from_secs(60)).await;
    assert!(relay.terminate(Duration::from_secs(20)).success());
    let pending = insert(&env, 2, 2).await;
    let out = env
        .relay_command(&["verify", "--json", "--wait", "2s"])
        .output()
        .unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(r["relay"]["confirmed"], false, "{r:#}");
    assert_eq!(r["missing"]["items"], json!([[pending[0], pending[1]]]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unconfirmed"));

    // Once the relay ran again, the same window is clean.
    let _relay = env.spawn_relay();
    let (code, r, _) = verify_json(&env, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["relay"]["confirmed"], true);
}

/// Run `verify --json` over the whole table; (report, peak RSS in KiB, seconds).
fn verify_rss(env: &Env) -> (Value, i64, f64) {
    let out_path = env.dir.path().join("verify-rss.json");
    let started = std::time::Instant::now();
    // Reaped with wait4 below, which also returns its peak RSS.
    #[allow(clippy::zombie_processes)]
    let child = env
        .relay_command(&["verify", "--json", "--wait", "120s"])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; rusage is written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    let secs = started.elapsed().as_secs_f64();
    let report: Value = serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    (report, usage.ru_maxrss, secs)
}

/// Grow the outbox to `total` rows in big transactions and wait until the relay has
/// published them.
async fn fill_to(env: &Env, have: i64, total: i64) {
    let c = env.client().await;
    let mut from = have + 1;
    while from <= total {
        let to = (from + 49_999).min(total);
        c.execute(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, headers) \
             SELECT 'order', 'agg-' || (g % 97), 'OrderCreated', \
                    jsonb_build_object('seq', g, 'note', repeat('x', 80)), \
                    jsonb_build_object('traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01') \
             FROM generate_series($1::int8, $2::int8) g",
            &[&from, &to],
        )
        .await
        .unwrap();
        from = to + 1;
    }
    let target: String = c
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let target = outbox_relay::sink::message::parse_lsn(&target).unwrap();
    crate::support::wait_until_msg(
        "the relay published every row",
        Duration::from_secs(1800),
        Duration::from_millis(500),
        || async { env.checkpoint().await.is_some_and(|c| c >= target) },
    )
    .await;
}

/// Peak RSS of `verify` for a 200,000-row and a 2,000,000-row window: at most 1.5× (the
/// issue's bound). Slow (publishes 2 M messages): run explicitly with
/// `bash scripts/test.sh verify_memory --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement: publishes 2 million messages (~3 minutes)"]
async fn verify_memory_does_not_grow_with_the_window() {
    let env = Env::start_with(&[TOPIC], "", 10_000).await;
    let _relay = env.spawn_relay();
    let mut results = Vec::new();
    let mut have = 0;
    for rows in [200_000, 2_000_000] {
        fill_to(&env, have, rows).await;
        have = rows;
        let (r, rss_kib, secs) = verify_rss(&env);
        assert_eq!(r["ok"], true, "{r:#}");
        assert_eq!(r["window"]["rows"], rows);
        assert_eq!(r["topics"][0]["messages"], rows);
        eprintln!(
            "verify over {rows} rows: peak RSS {} MiB, {secs:.1} s ({:.0} messages/s)",
            rss_kib / 1024,
            rows as f64 / secs
        );
        results.push(rss_kib);
    }
    let ratio = results[1] as f64 / results[0] as f64;
    eprintln!("peak RSS 2M / 200k = {ratio:.2}");
    assert!(
        ratio <= 1.5,
        "peak RSS grew {ratio:.2}× from 200k to 2M rows"
    );
}

//! `outbox-relay status` in exactly-once mode: it shows the last committed
//! progress record of the relay's transactional id — the position the
//! relay resumes from — exactly as a `read_committed` reader of the progress
//! topic sees it, how far the checkpoint table trails it, and the lag from
//! the greatest proven position. With the broker stopped (killed for real)
//! or the topic missing it still answers from PostgreSQL, exits 0 and says
//! the record is unavailable; at-least-once `status` never asks a broker.
//!
//! One relay on a broker of the test's own (so it may be stopped).

use std::collections::HashSet;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use outbox_relay::sink::message::{format_lsn, parse_lsn};
use outbox_relay::sink::progress_topic::ProgressRecord;
use serde_json::Value;

use crate::exactly_once::{assert_exactly_once, insert, Eo, TOPIC};
use crate::fixture::Env;
use crate::support::{kafka, wait_for_msg, wait_until_msg};

/// `status --json` with the exactly-once settings (and `extra` overrides):
/// the JSON and how long the command took. It must succeed.
fn status_json(eo: &Eo, extra: &[(&str, &str)]) -> (Value, Duration) {
    let t = Instant::now();
    let out = eo
        .command(&["status", "--json"])
        .envs(extra.iter().copied())
        .output()
        .expect("run status");
    let took = t.elapsed();
    (json_of(&out), took)
}

/// The JSON a successful `status --json` printed.
fn json_of(out: &Output) -> Value {
    let text = text_of(out);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{text}"))
}

/// What a successful `status` printed.
fn text_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// `status` (text) with the exactly-once settings; it must succeed.
fn status_text(eo: &Eo) -> String {
    text_of(&eo.command(&["status"]).output().expect("run status"))
}

/// The last progress record of `key` a `read_committed` reader finds on the
/// progress topic (reading until it stayed quiet for half a second: the
/// topic holds a few records, all there when the reader starts).
async fn last_progress_record(eo: &Eo, key: &str) -> Option<ProgressRecord> {
    let got = kafka::read_committed_until_async(
        &eo.env.bootstrap(),
        &eo.progress_topic(),
        Duration::from_secs(10),
        |got, last| !got.is_empty() && last.elapsed() >= Duration::from_millis(500),
    )
    .await;
    got.iter()
        .rev()
        .find(|m| m.key_str().as_deref() == Some(key))
        .map(|m| serde_json::from_slice(m.payload.as_deref().unwrap()).expect("a progress record"))
}

fn lsn_of(v: &Value) -> Option<u64> {
    v.as_str().and_then(parse_lsn)
}

/// What `status` shows beside the record read back must agree with it and
/// with itself: resume position, checkpoint trail, lag from the greatest
/// proven position.
fn assert_progress_matches(s: &Value, rec: &ProgressRecord, key: &str) {
    let p = &s["progress"];
    assert_eq!(p["available"], true, "{s:#}");
    assert!(p["unavailable_reason"].is_null(), "{s:#}");
    assert_eq!(p["key"], key, "{s:#}");
    let r = &p["record"];
    assert_eq!(r["commit_lsn"], rec.commit_lsn.as_str(), "{s:#}");
    assert_eq!(r["index"], rec.index, "{s:#}");
    assert_eq!(r["epoch"], rec.epoch, "{s:#}");
    assert_eq!(r["end_lsn"].as_str(), rec.end_lsn.as_deref(), "{s:#}");
    let resume = rec.resume().unwrap().lsn;
    assert_eq!(r["resume_lsn"], format_lsn(resume), "{s:#}");
    let ckpt = lsn_of(&s["checkpoint"]["lsn"]).expect("a checkpoint row");
    assert_eq!(
        r["checkpoint_trails_bytes"],
        resume.saturating_sub(ckpt),
        "{s:#}"
    );
    let handled = [
        Some(ckpt),
        lsn_of(&s["slot"]["confirmed_flush_lsn"]),
        Some(resume),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap();
    let current = lsn_of(&s["current_wal_lsn"]).unwrap();
    assert_eq!(
        s["lag"]["bytes"],
        current.saturating_sub(handled),
        "lag counts from the greatest proven position: {s:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_progress_record_and_answers_with_the_broker_stopped() {
    let t0 = Instant::now();
    let eo = Eo::on(Env::start_own_broker(&[TOPIC], "", 1000).await, 1000);
    let env_ready = t0.elapsed();
    let key = eo.transactional_id();
    let mut relay = eo.spawn(&[]);
    let ids: HashSet<i64> = insert(&eo.env, 4, 25).await.into_iter().collect();
    // Until every row is visible to read_committed (no quiet period: this
    // test is about status, the exactly-once tests count duplicates).
    let mut want = ids.clone();
    let msgs = kafka::read_committed_until_async(
        &eo.env.bootstrap(),
        &eo.env.topic(TOPIC),
        Duration::from_secs(60),
        move |got, _| {
            for m in got {
                if let Some(id) = m.header_str("id").and_then(|s| s.parse::<i64>().ok()) {
                    want.remove(&id);
                }
            }
            want.is_empty()
        },
    )
    .await;
    assert_exactly_once(&msgs, &ids, "status test");
    // The relay's last commit: the newest PostgreSQL transaction delivered.
    let last_commit = msgs
        .iter()
        .filter_map(|m| m.header_str("lsn").as_deref().and_then(parse_lsn))
        .max()
        .expect("lsn headers");

    // The record that covers it, as a reader of the topic sees it. The
    // relay is idle from here (no rows, no Kafka transaction), so status
    // must show exactly this record.
    let rec = wait_for_msg(
        "a progress record covering the last commit",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            last_progress_record(&eo, &key)
                .await
                .filter(|r| parse_lsn(&r.commit_lsn).is_some_and(|c| c >= last_commit))
        },
    )
    .await;
    assert!(rec.epoch >= 1, "{rec:?}");
    wait_until_msg(
        "a checkpoint row",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async { eo.env.checkpoint().await.is_some() },
    )
    .await;
    let (s, _) = status_json(&eo, &[]);
    assert_eq!(s["progress"]["topic"], eo.progress_topic());
    assert_progress_matches(&s, &rec, &key);
    assert_eq!(
        last_progress_record(&eo, &key).await.as_ref(),
        Some(&rec),
        "the record moved while the relay was idle"
    );
    // The table trails the Kafka commit only briefly while the relay runs.
    let caught_up = wait_for_msg(
        "the checkpoint table to catch up with the progress record",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            let (s, _) = status_json(&eo, &[]);
            (s["progress"]["record"]["checkpoint_trails_bytes"] == 0).then_some(s)
        },
    )
    .await;
    assert_progress_matches(&caught_up, &rec, &key);
    let text = status_text(&eo);
    for want in [
        format!("commit lsn {}, index {}", rec.commit_lsn, rec.index),
        format!("epoch {}", rec.epoch),
        "0 (checkpoint ahead/equal)".to_string(),
    ] {
        assert!(text.contains(&want), "{want} missing from:\n{text}");
    }
    eprintln!("status in exactly-once mode:\n{text}");

    // A progress topic that does not exist: unavailable, with the reason.
    let (s, _) = status_json(
        &eo,
        &[(
            "OUTBOX_RELAY_KAFKA_PROGRESS_TOPIC",
            "no-such-progress-topic",
        )],
    );
    assert_eq!(s["progress"]["available"], false, "{s:#}");
    let reason = s["progress"]["unavailable_reason"].as_str().unwrap();
    assert!(reason.contains("does not exist"), "{reason}");
    assert_eq!(
        s["rows"]["pending"].as_i64().unwrap() + s["rows"]["processed"].as_i64().unwrap(),
        ids.len() as i64
    );

    // The broker stopped (killed; the relay stopped first so the
    // PostgreSQL side holds still): status still answers from PostgreSQL,
    // exit 0, within its deadline, and says why the record is missing.
    relay.terminate(Duration::from_secs(20));
    let (before, _) = status_json(&eo, &[]);
    assert_eq!(before["progress"]["available"], true, "{before:#}");
    eo.env.broker.kill_node(1);
    // Text and JSON side by side: each waits out the progress deadline.
    let t = Instant::now();
    let spawn = |args: &[&str]| {
        eo.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run status")
    };
    let (json, text) = (spawn(&["status", "--json"]), spawn(&["status"]));
    let (json, text) = (
        json.wait_with_output().unwrap(),
        text.wait_with_output().unwrap(),
    );
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "status took {took:?} with the broker down"
    );
    // One reason in the output, not librdkafka's dozens of connection errors.
    let stderr = String::from_utf8_lossy(&json.stderr);
    assert!(
        !stderr.contains("librdkafka") && !stderr.contains("ERROR"),
        "status with the broker down logged:\n{stderr}"
    );
    let (s, text) = (json_of(&json), text_of(&text));
    assert_eq!(s["progress"]["available"], false, "{s:#}");
    assert!(s["progress"]["record"].is_null(), "{s:#}");
    let reason = s["progress"]["unavailable_reason"].as_str().unwrap();
    assert!(!reason.is_empty());
    for k in ["/checkpoint/lsn", "/rows", "/slot/confirmed_flush_lsn"] {
        assert_eq!(
            s.pointer(k),
            before.pointer(k),
            "{k} from PostgreSQL as before"
        );
    }
    assert!(
        s["lag"]["bytes"].as_i64().is_some(),
        "lag from PostgreSQL alone: {s:#}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("progress "))
        .unwrap_or_else(|| panic!("no progress line:\n{text}"));
    assert!(line.contains("unavailable ("), "{line}");
    assert!(
        text.contains("checkpoint") && text.contains("pending"),
        "{text}"
    );

    eprintln!("status with the broker stopped took {took:?}: progress unavailable ({reason})");

    // At-least-once: no progress part and no broker asked (it is down).
    let (s, took) = status_json(&eo, &[("OUTBOX_RELAY_KAFKA_DELIVERY", "at-least-once")]);
    assert!(s.get("progress").is_none(), "{s:#}");
    assert!(
        took < Duration::from_secs(5),
        "at-least-once status took {took:?}"
    );
    eprintln!(
        "status test: env ready in {env_ready:?}, whole test {:?}",
        t0.elapsed()
    );
}

/// A relay killed inside a Kafka transaction (the fault hook aborts it just
/// before its second `commit_transaction`) leaves that transaction open at
/// the broker, and a `read_committed` reader of the progress topic stops at
/// its first offset until a new session's `init_transactions` aborts it.
/// `status` then shows the newest committed record — where the next session
/// will resume — and where its read stopped, instead of "unavailable"; once
/// a new relay ran, it reads to the end again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_committed_record_behind_an_open_transaction() {
    let eo = Eo::start(1000).await;
    let key = eo.transactional_id();
    let mut relay = eo.spawn(&[("OUTBOX_RELAY_TEST_FAULT", "before-kafka-commit:2")]);
    // One PostgreSQL transaction every 300 ms: each Kafka transaction holds
    // one (the interval is 100 ms), its progress placeholder on the broker
    // well before the commit the fault stops.
    let mut ids: HashSet<i64> = HashSet::new();
    let end = Instant::now() + Duration::from_secs(60);
    let st = loop {
        if let Some(st) = relay.try_exit() {
            break st;
        }
        assert!(Instant::now() < end, "the fault hook never fired");
        ids.extend(insert(&eo.env, 1, 3).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGABRT), "{}", relay.log_text());

    let committed = last_progress_record(&eo, &key)
        .await
        .expect("the first transaction's record");
    let (s, took) = status_json(&eo, &[]);
    eprintln!("status behind an open transaction took {took:?}");
    let p = &s["progress"];
    assert_eq!(p["available"], true, "{s:#}");
    assert_eq!(
        p["record"]["commit_lsn"],
        committed.commit_lsn.as_str(),
        "{s:#}"
    );
    let (offset, high) = (
        p["stopped_at"]["offset"]
            .as_i64()
            .expect("stopped_at.offset"),
        p["stopped_at"]["high_watermark"].as_i64().unwrap(),
    );
    assert!(offset < high, "{s:#}");
    let text = status_text(&eo);
    assert!(
        text.contains(&format!("read to offset {offset} of {high}")),
        "{text}"
    );

    // A new session aborts the open transaction and publishes the rest.
    let _relay = eo.spawn(&[]);
    let msgs = eo
        .read_committed(TOPIC, &ids, Duration::from_secs(60))
        .await;
    assert_exactly_once(&msgs, &ids, "after the killed transaction");
    let newest = last_progress_record(&eo, &key).await.unwrap();
    let (s, _) = status_json(&eo, &[]);
    assert!(s["progress"]["stopped_at"].is_null(), "{s:#}");
    // Every row is committed and nothing more is written: the newest record
    // stays the newest.
    assert_eq!(
        s["progress"]["record"]["commit_lsn"],
        newest.commit_lsn.as_str(),
        "{s:#}"
    );
    assert_eq!(s["progress"]["record"]["epoch"], newest.epoch, "{s:#}");
    assert!(newest.epoch > committed.epoch, "a new session's record");
}

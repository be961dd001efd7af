//! `outbox-relay replay`: ranges of ids and time windows re-published in id
//! order with the replay header, FAILED rows becoming PROCESSED, dry runs
//! sending nothing — and the lost-slot recovery procedure end to end.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use outbox_relay::config::{Config, Overrides};

use crate::fixture::{Arrival, Env};
use crate::support::{self, kafka};

const TOPIC: &str = "outbox.order";
const ELSEWHERE: &str = "outbox.elsewhere";
const FAST_JANITOR: (&str, &str) = ("OUTBOX_RELAY_CLEANUP_CLEANUP_INTERVAL", "200ms");

async fn insert(env: &Env, n: i32) -> Vec<i64> {
    env.client()
        .await
        .query(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, headers) \
             SELECT 'order', 'k' || (g % 3), 'Created', jsonb_build_object('g', g), '{\"traceparent\":\"00-aa-bb-01\"}' \
             FROM generate_series(1, $1::int) g RETURNING id",
            &[&n],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn statuses(env: &Env, ids: &[i64]) -> Vec<String> {
    env.client()
        .await
        .query(
            "SELECT status FROM public.outbox WHERE id = ANY($1) ORDER BY id",
            &[&ids],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn wait_processed(env: &Env, ids: &[i64]) {
    support::wait_until_msg(
        "rows PROCESSED",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async { statuses(env, ids).await.iter().all(|s| s == "PROCESSED") },
    )
    .await;
}

/// Run `replay ARGS`; (exit code, stdout, stderr).
fn replay(env: &Env, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["replay"];
    all.extend_from_slice(args);
    let out = env.relay_command(&all).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn replay_ok(env: &Env, args: &[&str]) -> String {
    let (code, stdout, stderr) = replay(env, args);
    assert_eq!(code, 0, "replay {args:?}: {stdout}{stderr}");
    stdout
}

fn id_of(m: &kafka::Received) -> i64 {
    m.header_str("id").unwrap().parse().unwrap()
}

/// Read `topic` until the replayed copies (messages with the replay header)
/// of every id in `ids` arrived; returns the replayed messages.
async fn read_replayed(env: &Env, topic: &str, ids: &HashSet<i64>) -> Vec<kafka::Received> {
    let want = ids.clone();
    let msgs = kafka::read_until_async(
        &env.bootstrap(),
        &env.topic(topic),
        Duration::from_secs(60),
        move |got| {
            let seen: HashSet<i64> = got
                .iter()
                .filter(|m| m.header_str("replay").is_some())
                .map(id_of)
                .collect();
            want.is_subset(&seen)
        },
    )
    .await;
    msgs.into_iter()
        .filter(|m| m.header_str("replay").is_some())
        .collect()
}

/// Within each replay run (its `replay` header) and partition, ids increase
/// with the offset: id order per key.
fn assert_id_order_per_run(msgs: &[kafka::Received]) {
    let mut runs: BTreeMap<(String, i32), Vec<&kafka::Received>> = BTreeMap::new();
    for m in msgs {
        runs.entry((m.header_str("replay").unwrap(), m.partition))
            .or_default()
            .push(m);
    }
    for ((run, p), mut v) in runs {
        v.sort_by_key(|m| m.offset);
        let ids: Vec<i64> = v.iter().map(|m| id_of(m)).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "run {run}, partition {p}: not in id order");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_republishes_ranges_and_windows_in_id_order_with_the_replay_header() {
    let env = Env::start(&[TOPIC, ELSEWHERE]).await;
    let _relay = env.spawn_relay_with(&[FAST_JANITOR]);
    let ids = insert(&env, 30).await;
    let all: HashSet<i64> = ids.iter().copied().collect();
    env.read_ids(TOPIC, &all, Duration::from_secs(60)).await;
    wait_processed(&env, &ids).await;

    let c = env.client().await;
    // Two rows failed earlier (as the DLQ path leaves them), five are from a
    // past time window.
    let failed = [ids[3], ids[12]];
    c.execute(
        "UPDATE public.outbox SET status = 'FAILED', processed_at = NULL, retry_count = 1 WHERE id = ANY($1)",
        &[&&failed[..]],
    )
    .await
    .unwrap();
    let window = &ids[20..25];
    c.execute(
        "UPDATE public.outbox SET created_at = '2020-01-01T10:00:00Z'::timestamptz + (id - $2) * interval '1 minute' \
         WHERE id = ANY($1)",
        &[&window, &window[0]],
    )
    .await
    .unwrap();

    // A dry run reads and routes everything and sends nothing.
    let out = replay_ok(&env, &["--ids", &format!("..{}", ids[29]), "--dry-run"]);
    assert!(
        out.contains(&format!(
            "replay (dry run): 30 rows selected (ids {}..{}), 30 would be sent, 0 rejected; topics: {}=30; nothing sent",
            ids[0],
            ids[29],
            env.topic(TOPIC)
        )),
        "{out}"
    );
    // On a terminal (script(1) provides one) a progress bar runs on stderr.
    let cmdline = format!(
        "{} --config {} replay --ids ..{} --dry-run",
        crate::fixture::relay_bin().display(),
        env.config_path().display(),
        ids[29]
    );
    let tty = std::process::Command::new("script")
        .args(["-qec", &cmdline, "/dev/null"])
        .env("OUTBOX_RELAY_LOG", "warn")
        .output()
        .expect("script(1) from util-linux");
    let tty = String::from_utf8_lossy(&tty.stdout);
    assert!(
        tty.contains(&format!("replay [{}] 30/30 read", "#".repeat(30)))
            && tty.contains("30 would be sent"),
        "{tty}"
    );
    // A range of ids, as fast as acks allow.
    let range: Vec<i64> = ids[5..15].to_vec();
    let out = replay_ok(
        &env,
        &[
            "--ids",
            &format!("{}..{}", range[0], range[9]),
            "--rate",
            "0",
        ],
    );
    assert!(
        out.contains("10 rows selected")
            && out.contains("10 acknowledged")
            && out.contains("1 FAILED and 0 PENDING marked PROCESSED"),
        "{out}"
    );
    let got = read_replayed(&env, TOPIC, &range.iter().copied().collect()).await;
    // Nothing of the dry run arrived: exactly the range was replayed, once.
    let arrival = Arrival::of(&got);
    arrival.assert_complete(&range.iter().copied().collect());
    assert_eq!(arrival.duplicates(), 0, "the dry run sent nothing");
    for m in &got {
        assert_eq!(m.header_str("lsn").as_deref(), Some("replay"));
        assert_eq!(m.header_str("event_type").as_deref(), Some("Created"));
        assert_eq!(
            m.header_str("traceparent").as_deref(),
            Some("00-aa-bb-01"),
            "the row's own headers pass through"
        );
        let id = id_of(m);
        let k = ids.iter().position(|i| *i == id).unwrap() + 1;
        assert_eq!(m.key_str(), Some(format!("k{}", k % 3)));
        assert_eq!(m.payload_str(), Some(format!("{{\"g\": {k}}}")));
    }
    assert_eq!(env.row_status(ids[12]).await, ("PROCESSED".into(), 2));
    assert_eq!(
        env.row_status(ids[3]).await.0,
        "FAILED",
        "outside the range: untouched"
    );

    // A time window on created_at, with the default rate limit.
    let out = replay_ok(
        &env,
        &[
            "--since",
            "2020-01-01T09:00:00Z",
            "--until",
            "2020-01-01 11:00:00+00",
        ],
    );
    assert!(
        out.contains(&format!(
            "5 rows selected (ids {}..{})",
            window[0], window[4]
        )),
        "{out}"
    );
    let want: HashSet<i64> = range.iter().chain(window).copied().collect();
    let got = read_replayed(&env, TOPIC, &want).await;
    let arrival = Arrival::of(&got);
    arrival.assert_complete(&want);
    assert_eq!(arrival.duplicates(), 0);
    assert_id_order_per_run(&got);

    // The remaining FAILED row, to another topic.
    let out = replay_ok(
        &env,
        &["--status", "FAILED", "--topic", &env.topic(ELSEWHERE)],
    );
    assert!(
        out.contains("1 rows selected") && out.contains("1 FAILED"),
        "{out}"
    );
    let moved = read_replayed(&env, ELSEWHERE, &HashSet::from([ids[3]])).await;
    assert_eq!(moved.len(), 1);
    assert_eq!(env.row_status(ids[3]).await, ("PROCESSED".into(), 2));
    // FAILED rows left: none, so a second run selects nothing.
    let out = replay_ok(&env, &["--status", "failed"]);
    assert!(out.contains("0 rows selected"), "{out}");

    // --rate spaces the sends: 5 rows at 4/s take at least a second.
    let started = std::time::Instant::now();
    let out = replay_ok(
        &env,
        &["--ids", &format!("{}..{}", ids[25], ids[29]), "--rate", "4"],
    );
    assert!(out.contains("5 acknowledged"), "{out}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "5 messages at 4/s in {:?}",
        started.elapsed()
    );

    // No selector: a usage error naming what is missing.
    let (code, _, stderr) = replay(&env, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--ids"), "{stderr}");
    let (code, _, stderr) = replay(&env, &["--since", "yesterday-ish"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--since"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_replay_is_a_case_of_replay_and_refuses_rows_that_are_not_failed() {
    let env = Env::start(&[TOPIC]).await;
    let ids = insert(&env, 2).await;
    let out = env
        .relay_command(&["dlq", "replay", "--id", &ids[0].to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is PENDING, not FAILED"), "{err}");
    // A FAILED row that still cannot be published is named and stays FAILED.
    env.client()
        .await
        .execute(
            "UPDATE public.outbox SET status = 'FAILED', topic = 'bad topic!' WHERE id = $1",
            &[&ids[1]],
        )
        .await
        .unwrap();
    let out = env
        .relay_command(&["dlq", "replay", "--id", &ids[1].to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("id={}", ids[1])) && err.contains("illegal character"),
        "{err}"
    );
    assert_eq!(env.row_status(ids[1]).await.0, "FAILED");
}

/// The recovery procedure of the README: the slot is lost while rows are
/// pending; `init` makes a new slot and records what the stream will never
/// deliver; the janitor leaves those rows PENDING and the table-health
/// metric shows them; `replay --status PENDING` publishes exactly them.
#[tokio::test(flavor = "multi_thread")]
async fn lost_slot_recovery_replays_what_the_stream_never_delivered() {
    let env = Env::start(&[TOPIC]).await;
    let mut relay = env.spawn_relay_with(&[FAST_JANITOR]);
    let a = insert(&env, 20).await;
    env.read_ids(TOPIC, &a.iter().copied().collect(), Duration::from_secs(60))
        .await;
    wait_processed(&env, &a).await;
    relay.terminate(Duration::from_secs(30));

    // Committed while the relay is down, then the slot is gone (as after a
    // failover to a replica, or an invalidation).
    let b = insert(&env, 30).await;
    let su = env.pg.client_db("app").await;
    su.execute("SELECT pg_drop_replication_slot('outbox_relay')", &[])
        .await
        .unwrap();
    let out = env.relay_command(&["init"]).output().unwrap();
    assert!(out.status.success());
    let init = String::from_utf8_lossy(&out.stdout);
    assert!(
        init.contains(&format!(
            "30 PENDING row(s) (ids {}..{}) were committed before it",
            b[0], b[29]
        )) && init.contains("replay --status PENDING"),
        "{init}"
    );

    let _relay = env.spawn_relay_with(&[FAST_JANITOR]);
    let c_ids = insert(&env, 20).await;
    let stream_ids: HashSet<i64> = a.iter().chain(&c_ids).copied().collect();
    env.read_ids(
        TOPIC,
        &c_ids.iter().copied().collect(),
        Duration::from_secs(60),
    )
    .await;
    // The janitor marks what the new slot delivered, and not the lost rows,
    // though the new slot's position is past their commits.
    wait_processed(&env, &c_ids).await;
    let prune = env.relay_command(&["prune"]).output().unwrap();
    let prune = String::from_utf8_lossy(&prune.stdout);
    assert!(
        prune.contains("PENDING rows of a lost slot, left for `replay --status PENDING`: 30"),
        "{prune}"
    );
    assert!(statuses(&env, &b).await.iter().all(|s| s == "PENDING"));
    let status = env.relay_command(&["status", "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["lost_slot_rows"], 30, "{status}");
    let on_broker: HashSet<i64> = kafka::read_until_quiet_async(
        &env.bootstrap(),
        &env.topic(TOPIC),
        Duration::from_secs(2),
        Duration::from_secs(30),
    )
    .await
    .iter()
    .map(id_of)
    .collect();
    assert_eq!(
        on_broker, stream_ids,
        "the stream never delivers the lost rows"
    );

    // The table-health metric counts them as unpublished although the
    // checkpoint was written after they were created.
    let cfg = Config::load(Some(&env.config_path()), &Overrides::default()).unwrap();
    let client = env.client().await;
    let h = outbox_relay::table_health::gather(&client, &cfg)
        .await
        .unwrap();
    let oldest_b: f64 = client
        .query_one(
            "SELECT extract(epoch FROM now() - min(created_at))::float8 FROM public.outbox WHERE id = ANY($1)",
            &[&b],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        (h.oldest_unpublished_age_seconds - oldest_b).abs() < 2.0,
        "oldest unpublished {} vs the oldest lost row {oldest_b}",
        h.oldest_unpublished_age_seconds
    );

    // Step 3 of the procedure.
    let out = replay_ok(&env, &["--status", "PENDING", "--rate", "0"]);
    assert!(
        out.contains(&format!("30 rows selected (ids {}..{})", b[0], b[29]))
            && out.contains("0 FAILED and 30 PENDING marked PROCESSED")
            && out.contains("lost-slot recovery closed"),
        "{out}"
    );
    let every: HashSet<i64> = stream_ids.iter().chain(&b).copied().collect();
    let msgs = env.read_ids(TOPIC, &every, Duration::from_secs(60)).await;
    let arrival = Arrival::of(&msgs);
    arrival.assert_complete(&every);
    assert_eq!(
        arrival.duplicates(),
        0,
        "each row once: replay sent only the lost ones"
    );
    assert_id_order_per_run(
        &msgs
            .iter()
            .filter(|m| m.header_str("replay").is_some())
            .cloned()
            .collect::<Vec<_>>(),
    );
    assert!(statuses(&env, &b).await.iter().all(|s| s == "PROCESSED"));
    let open: bool = client
        .query_one(
            "SELECT recovery_started_at IS NOT NULL FROM public.outbox_relay_checkpoint WHERE slot_name = 'outbox_relay'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!open, "recovery closed");
    let h = outbox_relay::table_health::gather(&client, &cfg)
        .await
        .unwrap();
    assert_eq!(h.oldest_unpublished_age_seconds, 0.0);
    // A second replay of PENDING finds nothing past the checkpoint.
    let out = replay_ok(&env, &["--status", "PENDING"]);
    assert!(out.contains("0 rows selected"), "{out}");
}

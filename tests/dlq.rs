//! Failed rows: dead-letter topic, FAILED marking, block mode, replay.

use std::collections::HashSet;
use std::time::Duration;

use crate::fixture::{Arrival, Env, DLQ_TOPIC};
use crate::support::{self, kafka};

const TOPIC: &str = "outbox.order";

async fn insert(env: &Env, agg: &str, data: &str, topic: Option<&str>) -> i64 {
    let c = env.client().await;
    c.query_one(
        "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, topic, headers) \
         VALUES ('order', $1, 'Created', $2::text::jsonb, $3, '{\"traceparent\":\"00-aa-bb-01\"}') RETURNING id",
        &[&agg, &data, &topic],
    )
    .await
    .unwrap()
    .get(0)
}

async fn status_of(env: &Env, id: i64) -> (String, i32) {
    let r = env
        .client()
        .await
        .query_one(
            "SELECT status, retry_count FROM public.outbox WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// Good rows around one bad row; returns (good ids in order, bad id).
async fn good_bad_good(env: &Env, bad_data: &str, bad_topic: Option<&str>) -> (Vec<i64>, i64) {
    let mut good = Vec::new();
    for i in 0..5 {
        good.push(insert(env, "same-key", &format!("{{\"n\":{i}}}"), None).await);
    }
    let bad = insert(env, "same-key", bad_data, bad_topic).await;
    for i in 5..10 {
        good.push(insert(env, "same-key", &format!("{{\"n\":{i}}}"), None).await);
    }
    (good, bad)
}

fn ids_in_order(msgs: &[kafka::Received]) -> Vec<i64> {
    let mut sorted: Vec<_> = msgs.iter().collect();
    sorted.sort_by_key(|m| (m.partition, m.offset));
    sorted
        .iter()
        .map(|m| m.header_str("id").unwrap().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_row_goes_to_the_dlq_and_the_rest_follow_in_order() {
    let env = Env::start_with(&[TOPIC], "", 1000).await;
    let _relay = env.spawn_relay_with(&[("OUTBOX_RELAY_RELAY_MAX_PAYLOAD_BYTES", "5000")]);
    let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(20_000));
    let (good, bad) = good_bad_good(&env, &big, None).await;

    let want: HashSet<i64> = good.iter().copied().collect();
    let msgs = env.read_ids(TOPIC, &want, Duration::from_secs(60)).await;
    Arrival::of(&msgs).assert_complete(&want);
    assert_eq!(
        ids_in_order(&msgs),
        good,
        "same key, one partition: commit order without the bad row"
    );

    let dlq = env.read(DLQ_TOPIC, 1, Duration::from_secs(30)).await;
    assert_eq!(dlq.len(), 1);
    let d = &dlq[0];
    assert_eq!(d.header_str("id"), Some(bad.to_string()));
    assert_eq!(
        d.header_str("dlq.error.class").as_deref(),
        Some("permanent")
    );
    assert!(
        d.header_str("dlq.error.message")
            .unwrap()
            .contains("max-payload-bytes"),
        "{d:?}"
    );
    assert_eq!(d.header_str("dlq.original.topic"), Some(env.topic(TOPIC)));
    assert_eq!(d.header_str("dlq.attempts").as_deref(), Some("1"));
    assert!(d.header_str("dlq.first.failure").is_some());
    assert!(d.header_str("lsn").is_some());
    assert_eq!(
        d.header_str("traceparent").as_deref(),
        Some("00-aa-bb-01"),
        "original headers kept"
    );
    assert_eq!(d.key_str().as_deref(), Some("same-key"));
    assert!(
        d.payload.as_deref().unwrap_or_default().is_empty(),
        "the value was the problem: not copied"
    );

    support::wait_until_msg(
        "row marked FAILED",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async { status_of(&env, bad).await.0 == "FAILED" },
    )
    .await;
    assert_eq!(status_of(&env, bad).await.1, 1);
    assert_eq!(
        status_of(&env, good[0]).await.0,
        "PENDING",
        "good rows are the janitor's to mark"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_topic_name_goes_to_the_dlq_and_replay_republishes_it() {
    let env = Env::start(&[TOPIC, "outbox.fixed"]).await;
    let _relay = env.spawn_relay();
    let (good, bad) = good_bad_good(&env, "{\"v\":1}", Some("no spaces allowed!")).await;
    let want: HashSet<i64> = good.iter().copied().collect();
    let msgs = env.read_ids(TOPIC, &want, Duration::from_secs(60)).await;
    assert_eq!(ids_in_order(&msgs), good);

    let dlq = env.read(DLQ_TOPIC, 1, Duration::from_secs(30)).await;
    assert_eq!(dlq.len(), 1);
    assert!(dlq[0]
        .header_str("dlq.error.message")
        .unwrap()
        .contains("illegal character"));
    assert_eq!(
        dlq[0].header_str("dlq.original.topic").as_deref(),
        Some("no spaces allowed!")
    );
    assert_eq!(
        dlq[0].payload_str().as_deref(),
        Some("{\"v\": 1}"),
        "the value was fine: kept"
    );
    support::wait_until_msg(
        "row marked FAILED",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async { status_of(&env, bad).await.0 == "FAILED" },
    )
    .await;

    // The operator fixes the row and replays it.
    env.client()
        .await
        .execute(
            "UPDATE public.outbox SET topic = $2 WHERE id = $1",
            &[&bad, &env.topic("outbox.fixed")],
        )
        .await
        .unwrap();
    let out = env
        .relay_command(&["dlq", "replay", "--id", &bad.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fixed = env.read("outbox.fixed", 1, Duration::from_secs(30)).await;
    assert_eq!(fixed.len(), 1);
    assert_eq!(fixed[0].header_str("id"), Some(bad.to_string()));
    assert_eq!(fixed[0].header_str("lsn").as_deref(), Some("replay"));
    assert_eq!(status_of(&env, bad).await, ("PROCESSED".to_string(), 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_outage_never_dead_letters() {
    let env = Env::start_own_broker(&[TOPIC], "", 1000).await;
    let _relay = env.spawn_relay();
    let mut ids = HashSet::new();
    for i in 0..20 {
        ids.insert(insert(&env, &format!("k{i}"), "{}", None).await);
    }
    // The outage must hit a streaming relay: paused during the relay's
    // startup check, the broker fails it at once by design (a broker that
    // does not answer at startup is reported as kafka.brokers, not waited
    // out) — CI saw exactly that race.
    let before = env.read_ids(TOPIC, &ids, Duration::from_secs(60)).await;
    Arrival::of(&before).assert_complete(&ids);
    env.broker.pause();
    for i in 20..60 {
        ids.insert(insert(&env, &format!("k{i}"), "{}", None).await);
    }
    tokio::time::sleep(Duration::from_secs(6)).await; // the outage itself
    env.broker.resume();
    let msgs = env.read_ids(TOPIC, &ids, Duration::from_secs(60)).await;
    Arrival::of(&msgs).assert_complete(&ids);
    let dlq = kafka::read_until_quiet_async(
        &env.bootstrap(),
        &env.topic(DLQ_TOPIC),
        Duration::from_secs(2),
        Duration::from_secs(8),
    )
    .await;
    assert!(
        dlq.is_empty(),
        "transient errors must not dead-letter: {dlq:?}"
    );
    let failed: i64 = env
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM public.outbox WHERE status = 'FAILED'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn block_mode_stalls_at_the_bad_row_until_it_is_deleted() {
    let env = Env::start(&[TOPIC]).await;
    let _relay = env.spawn_relay_with(&[
        ("OUTBOX_RELAY_RELAY_ON_PERMANENT_ERROR", "block"),
        ("OUTBOX_RELAY_RELAY_MAX_PAYLOAD_BYTES", "5000"),
    ]);
    let big = format!("{{\"blob\":\"{}\"}}", "y".repeat(10_000));
    let (good, bad) = good_bad_good(&env, &big, None).await;
    let before: HashSet<i64> = good[..5].iter().copied().collect();
    let msgs = env.read_ids(TOPIC, &before, Duration::from_secs(60)).await;
    Arrival::of(&msgs).assert_complete(&before);
    // Stalled: nothing after the bad row arrives, and the table says why.
    support::wait_until_msg("blocked row recorded", Duration::from_secs(20), Duration::from_millis(50), || async {
        let r = env
            .client()
            .await
            .query_opt("SELECT blocked_row_id FROM public.outbox_relay_checkpoint WHERE blocked_row_id IS NOT NULL", &[])
            .await
            .unwrap();
        r.is_some_and(|r| r.get::<_, i64>(0) == bad)
    })
    .await;
    let stalled = kafka::read_until_quiet_async(
        &env.bootstrap(),
        &env.topic(TOPIC),
        Duration::from_secs(2),
        Duration::from_secs(8),
    )
    .await;
    assert_eq!(
        ids_in_order(&stalled),
        good[..5].to_vec(),
        "nothing past the bad row"
    );
    let status = env.relay_command(&["status", "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert_eq!(
        status["checkpoint"]["blocked_row_id"],
        serde_json::json!(bad),
        "{status}"
    );
    let scrape = crate::observability::scrape(&env)
        .await
        .expect("metrics endpoint");
    assert!(
        scrape.contains(&format!("outbox_relay_blocked_row_id {bad}")),
        "{scrape}"
    );

    env.client()
        .await
        .execute("DELETE FROM public.outbox WHERE id = $1", &[&bad])
        .await
        .unwrap();
    let want: HashSet<i64> = good.iter().copied().collect();
    let msgs = env.read_ids(TOPIC, &want, Duration::from_secs(60)).await;
    assert_eq!(
        ids_in_order(&msgs),
        good,
        "resumed in order after the delete"
    );
    let dlq = kafka::read_until_quiet_async(
        &env.bootstrap(),
        &env.topic(DLQ_TOPIC),
        Duration::from_secs(1),
        Duration::from_secs(5),
    )
    .await;
    assert!(dlq.is_empty(), "block mode never dead-letters");
}

//! Broker refusals against Apache Kafka (issue 14): a row over a topic's
//! `max.message.bytes` between small rows of one key, in block and DLQ
//! mode, and a row routed to a topic that does not exist.

use std::collections::HashSet;
use std::time::Duration;

use crate::fixture::{Env, DLQ_TOPIC};
use crate::support::{self, kafka};

const TOPIC: &str = "outbox.order";

async fn insert(env: &Env, data: &str, topic: &str) -> i64 {
    env.client()
        .await
        .query_one(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, topic, headers) \
             VALUES ('order', 'same-key', 'Created', $1::text::jsonb, $2, '{\"traceparent\":\"00-aa-bb-01\"}') RETURNING id",
            &[&data, &topic],
        )
        .await
        .unwrap()
        .get(0)
}

/// Five small rows, one over `limit` bytes, five small rows; all to `topic`.
async fn small_big_small(env: &Env, topic: &str, big_bytes: usize) -> (Vec<i64>, i64, Vec<i64>) {
    let mut before = Vec::new();
    for i in 0..5 {
        before.push(insert(env, &format!("{{\"n\":{i}}}"), topic).await);
    }
    let big = insert(
        env,
        &format!("{{\"blob\":\"{}\"}}", "z".repeat(big_bytes)),
        topic,
    )
    .await;
    let mut after = Vec::new();
    for i in 5..10 {
        after.push(insert(env, &format!("{{\"n\":{i}}}"), topic).await);
    }
    (before, big, after)
}

/// Ids in partition order, first occurrence only (replays may duplicate).
fn first_seen(msgs: &[kafka::Received]) -> Vec<i64> {
    let mut sorted: Vec<_> = msgs.iter().collect();
    sorted.sort_by_key(|m| (m.partition, m.offset));
    let mut seen = HashSet::new();
    sorted
        .iter()
        .map(|m| m.header_str("id").unwrap().parse::<i64>().unwrap())
        .filter(|id| seen.insert(*id))
        .collect()
}

async fn set_max_message_bytes(env: &Env, topic: &str, value: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", env.bootstrap())
        .create()
        .unwrap();
    let res = admin
        .alter_configs(
            [&AlterConfig::new(ResourceSpecifier::Topic(topic)).set("max.message.bytes", value)],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    for r in res {
        r.unwrap_or_else(|e| panic!("alter {topic}: {e:?}"));
    }
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

const FAST_RETRY: [(&str, &str); 3] = [
    ("OUTBOX_RELAY_RELAY_MAX_RETRY", "2"),
    ("OUTBOX_RELAY_RELAY_BACKOFF_INITIAL", "100ms"),
    ("OUTBOX_RELAY_RELAY_BACKOFF_MAX", "1s"),
];

// Once failed (seen: [11, 1, 2, 3, 4, 5] while blocked at row 6): the first,
// pipelined attempt was refused as a batch, and librdkafka's idempotent
// producer re-sequenced the later in-flight batch (drain and epoch bump) and
// delivered it before the relay saw the refusal. The producer now runs with
// `enable.gapless.guarantee=true` (it stops instead; see sink::kafka_config)
// and rows are re-sent alone on a producer of their own.

#[tokio::test(flavor = "multi_thread")]
async fn block_mode_keeps_rows_behind_a_broker_refused_row_until_the_limit_is_raised() {
    let env = Env::start_with(&[TOPIC], "", 1000).await;
    let limited = env.topic("outbox.limited");
    kafka::create_topic_with(
        &env.bootstrap(),
        &limited,
        1,
        &[("max.message.bytes", "2000")],
    )
    .await;
    let mut vars = FAST_RETRY.to_vec();
    vars.push(("OUTBOX_RELAY_RELAY_ON_PERMANENT_ERROR", "block"));
    let _relay = env.spawn_relay_with(&vars);
    let (before, big, after) = small_big_small(&env, &limited, 5000).await;

    support::wait_until_msg("blocked row recorded", Duration::from_secs(60), Duration::from_millis(100), || async {
        env.client()
            .await
            .query_opt("SELECT blocked_row_id FROM public.outbox_relay_checkpoint WHERE blocked_row_id IS NOT NULL", &[])
            .await
            .unwrap()
            .is_some_and(|r| r.get::<_, i64>(0) == big)
    })
    .await;
    let stalled = kafka::read_until_quiet_async(
        &env.bootstrap(),
        &limited,
        Duration::from_secs(2),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        first_seen(&stalled),
        before,
        "nothing after the refused row is delivered before it"
    );

    set_max_message_bytes(&env, &limited, "100000").await;
    let want: HashSet<i64> = before
        .iter()
        .chain([&big])
        .chain(after.iter())
        .copied()
        .collect();
    let msgs = env
        .read_ids("outbox.limited", &want, Duration::from_secs(60))
        .await;
    let mut expect = before.clone();
    expect.push(big);
    expect.extend(&after);
    assert_eq!(
        first_seen(&msgs),
        expect,
        "the refused row first, then the rest"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_mode_dead_letters_only_the_refused_row_of_a_batch() {
    let env = Env::start_with(&[TOPIC], "", 1000).await;
    let limited = env.topic("outbox.limited");
    kafka::create_topic_with(
        &env.bootstrap(),
        &limited,
        1,
        &[("max.message.bytes", "2000")],
    )
    .await;
    let _relay = env.spawn_relay_with(&FAST_RETRY);
    let (before, big, after) = small_big_small(&env, &limited, 5000).await;

    let good: Vec<i64> = before.iter().chain(after.iter()).copied().collect();
    let want: HashSet<i64> = good.iter().copied().collect();
    let msgs = env
        .read_ids("outbox.limited", &want, Duration::from_secs(90))
        .await;
    assert_eq!(
        first_seen(&msgs),
        good,
        "commit order without the refused row"
    );
    let dlq = kafka::read_until_quiet_async(
        &env.bootstrap(),
        &env.topic(DLQ_TOPIC),
        Duration::from_secs(3),
        Duration::from_secs(30),
    )
    .await;
    let dead: Vec<String> = dlq.iter().filter_map(|m| m.header_str("id")).collect();
    assert_eq!(
        dead,
        vec![big.to_string()],
        "only the too-large row is dead-lettered"
    );
    support::wait_until_msg(
        "row FAILED",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async { status_of(&env, big).await == ("FAILED".to_string(), 2) },
    )
    .await;
    for id in good {
        assert_ne!(status_of(&env, id).await.0, "FAILED", "innocent row {id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_for_a_missing_topic_is_dead_lettered_while_rows_around_it_flow() {
    let env = Env::start_with(&[TOPIC], "", 1000).await;
    let _relay = env.spawn_relay_with(&FAST_RETRY);
    let main = env.topic(TOPIC);
    let nowhere = env.topic("outbox.nowhere");
    let mut good = Vec::new();
    for i in 0..3 {
        good.push(insert(&env, &format!("{{\"n\":{i}}}"), &main).await);
    }
    let lost = insert(&env, "{\"n\":99}", &nowhere).await;
    for i in 3..6 {
        good.push(insert(&env, &format!("{{\"n\":{i}}}"), &main).await);
    }
    let want: HashSet<i64> = good.iter().copied().collect();
    let msgs = env.read_ids(TOPIC, &want, Duration::from_secs(60)).await;
    assert_eq!(first_seen(&msgs), good);
    let dlq = env.read(DLQ_TOPIC, 1, Duration::from_secs(60)).await;
    assert_eq!(dlq.len(), 1);
    let d = &dlq[0];
    assert_eq!(d.header_str("id"), Some(lost.to_string()));
    assert_eq!(d.header_str("dlq.original.topic"), Some(nowhere.clone()));
    assert_eq!(d.header_str("traceparent").as_deref(), Some("00-aa-bb-01"));
    assert_eq!(d.header_str("dlq.attempts").as_deref(), Some("2"));
    support::wait_until_msg(
        "row FAILED",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async { status_of(&env, lost).await.0 == "FAILED" },
    )
    .await;
}

//! Topic drift (src/topic_drift.rs) against the real broker: a deleted DLQ
//! topic and a topic grown to more partitions are reported in the metrics
//! (read back from `/metrics`), in `outbox-relay status`, and the baseline
//! lands in the checkpoint table.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;

use crate::fixture::{Env, DLQ_TOPIC};
use crate::support::{self, kafka};

const TOPIC: &str = "outbox.order";
const CHECK_FAST: (&str, &str) = ("OUTBOX_RELAY_KAFKA_TOPIC_CHECK_INTERVAL", "300ms");

fn admin(env: &Env) -> AdminClient<DefaultClientContext> {
    kafka::client_config(&env.bootstrap())
        .create()
        .expect("admin client")
}

fn opts() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))
}

/// The value of `outbox_relay_topic_drift` for `topic` and `kind`.
fn drift(text: &str, topic: &str, kind: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with("outbox_relay_topic_drift{"))
        .find(|l| {
            l.contains(&format!("topic=\"{topic}\"")) && l.contains(&format!("kind=\"{kind}\""))
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

async fn wait_drift(env: &Env, topic: &str, kind: &str, want: f64) {
    support::wait_until_msg(
        &format!("outbox_relay_topic_drift{{topic={topic},kind={kind}}} = {want}"),
        Duration::from_secs(60),
        Duration::from_millis(300),
        || async {
            let text = crate::observability::scrape(env).await.unwrap_or_default();
            drift(&text, topic, kind) == Some(want)
        },
    )
    .await;
}

fn status_text(env: &Env) -> String {
    let out = env.relay_command(&["status"]).output().expect("status");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_dlq_topic_and_a_grown_topic_are_reported() {
    let env = Env::start(&[TOPIC]).await;
    let topic = env.topic(TOPIC);
    let dlq = env.topic(DLQ_TOPIC);
    let relay = env.spawn_relay_with(&[CHECK_FAST]);

    // Publish, so the relay writes the topic (and then has a checkpoint row).
    let c = env.client().await;
    let ids: std::collections::HashSet<i64> = c
        .query(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) \
             SELECT 'order', 'k' || g, 'Created', '{}' FROM generate_series(1, 10) g RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    env.read_ids(TOPIC, &ids, Duration::from_secs(60)).await;
    wait_drift(&env, &topic, "partitions", 0.0).await;
    wait_drift(&env, &dlq, "dlq_missing", 0.0).await;
    // The baseline (4 partitions, as the env created the topic) is persisted.
    support::wait_until_msg(
        "baseline of the topic in topic_check",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || async {
            let v: Option<i32> = c
                .query_one(
                    "SELECT (topic_check -> 'baseline' ->> $1)::int FROM public.outbox_relay_checkpoint",
                    &[&topic],
                )
                .await
                .unwrap()
                .get(0);
            v == Some(4)
        },
    )
    .await;
    assert!(!status_text(&env).contains("TOPIC DRIFT"));

    // The topic grows from 4 to 6 partitions.
    let a = admin(&env);
    let res = a
        .create_partitions(&[NewPartitions::new(&topic, 6)], &opts())
        .await
        .expect("create partitions");
    assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
    wait_drift(&env, &topic, "partitions", 1.0).await;
    support::wait_until_msg(
        "status names the grown topic with both counts",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || async {
            let s = status_text(&env);
            s.contains("TOPIC DRIFT")
                && s.contains(&format!("topic {topic} has 6 partitions, 4 when"))
        },
    )
    .await;

    // The DLQ topic is deleted.
    let res = a.delete_topics(&[&dlq], &opts()).await.expect("delete dlq");
    assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
    wait_drift(&env, &dlq, "dlq_missing", 1.0).await;
    support::wait_until_msg(
        "status --json lists the missing DLQ",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || async {
            let out = env.relay_command(&["status", "--json"]).output().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
            v["topic_drift"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|f| f["topic"] == dlq.as_str() && f["kind"] == "dlq_missing")
            })
        },
    )
    .await;
    let log = relay.log_text();
    assert!(
        log.contains("topic drift") && log.contains(&topic) && log.contains(&dlq),
        "log lines name the topics: {log}"
    );

    // Accepting the change (README) clears the partitions finding.
    c.execute(
        "UPDATE public.outbox_relay_checkpoint \
         SET topic_check = jsonb_set(topic_check, '{baseline}', (topic_check->'baseline') - $1::text)",
        &[&topic],
    )
    .await
    .unwrap();
    wait_drift(&env, &topic, "partitions", 0.0).await;
    // Put the DLQ back for the shared broker's tidiness: the finding clears.
    kafka::create_topic(&env.bootstrap(), &dlq, 1).await;
    wait_drift(&env, &dlq, "dlq_missing", 0.0).await;
}

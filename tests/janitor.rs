//! The janitor: marks exactly the acknowledged rows, prunes by retention.

use std::collections::HashSet;
use std::time::Duration;

use crate::fixture::Env;
use crate::support;

const TOPIC: &str = "outbox.order";

async fn insert_n(env: &Env, n: usize) -> Vec<i64> {
    let c = env.client().await;
    c.query(
        "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) \
         SELECT 'order', 'k' || (g % 5), 'Created', jsonb_build_object('g', g) FROM generate_series(1, $1::int) g RETURNING id",
        &[&(n as i32)],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn ids_with_status(env: &Env, status: &str) -> HashSet<i64> {
    env.client()
        .await
        .query("SELECT id FROM public.outbox WHERE status = $1", &[&status])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn prune(env: &Env, extra_env: &[(&str, &str)]) -> String {
    let mut cmd = env.relay_command(&["prune"]);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "prune failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const NO_BACKGROUND_JANITOR: (&str, &str) = ("OUTBOX_RELAY_CLEANUP_ENABLED", "false");

#[tokio::test(flavor = "multi_thread")]
async fn marks_and_prunes_exactly_the_right_rows() {
    let env = Env::start(&[TOPIC]).await;
    let _relay = env.spawn_relay_with(&[NO_BACKGROUND_JANITOR]);
    let ids: HashSet<i64> = insert_n(&env, 60).await.into_iter().collect();
    env.read_ids(TOPIC, &ids, Duration::from_secs(60)).await;

    support::wait_until_msg(
        "all published rows PROCESSED",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            prune(&env, &[]);
            ids_with_status(&env, "PROCESSED").await == ids
        },
    )
    .await;
    let c = env.client().await;
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM public.outbox WHERE processed_at IS NULL OR processed_at > now()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "processed_at set on every marked row");

    // Time is controlled by moving timestamps back, not by sleeping.
    let mut sorted: Vec<i64> = ids.iter().copied().collect();
    sorted.sort();
    let old_processed: Vec<i64> = sorted[..20].to_vec(); // 8 days: past 7-day retention
    let young_failed = sorted[20]; // FAILED, 10 days: within 30-day failed retention
    let old_failed = sorted[21]; // FAILED, 31 days: past it
    c.execute(
        "UPDATE public.outbox SET processed_at = now() - interval '8 days' WHERE id = ANY($1)",
        &[&old_processed],
    )
    .await
    .unwrap();
    c.execute(
        "UPDATE public.outbox SET status = 'FAILED', processed_at = NULL, created_at = now() - interval '10 days' WHERE id = $1",
        &[&young_failed],
    )
    .await
    .unwrap();
    c.execute(
        "UPDATE public.outbox SET status = 'FAILED', processed_at = NULL, created_at = now() - interval '31 days' WHERE id = $1",
        &[&old_failed],
    )
    .await
    .unwrap();
    let out = prune(&env, &[("OUTBOX_RELAY_RELAY_BATCH_SIZE", "7")]);
    assert!(
        out.contains("pruned PROCESSED (older than 7 days): 20"),
        "{out}"
    );
    assert!(
        out.contains("pruned FAILED (older than 30 days): 1"),
        "{out}"
    );
    let left = env.outbox_ids().await;
    let expected: HashSet<i64> = ids
        .iter()
        .copied()
        .filter(|i| !old_processed.contains(i) && *i != old_failed)
        .collect();
    assert_eq!(left, expected);
    assert_eq!(
        ids_with_status(&env, "FAILED").await,
        HashSet::from([young_failed])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn never_marks_a_row_that_is_not_on_the_broker_even_across_a_crash() {
    let env = Env::start_with(&[TOPIC], "", 300).await;
    let mut relay = env.spawn_relay_with(&[("OUTBOX_RELAY_CLEANUP_CLEANUP_INTERVAL", "100ms")]);
    let writer = tokio::spawn({
        let url = env.url();
        async move {
            let c = crate::support::postgres::connect(&url).await.unwrap();
            let mut all = Vec::new();
            for _ in 0..60 {
                let ids: Vec<i64> = c
                    .query(
                        "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) \
                         SELECT 'order', 'k' || g, 'Created', '{}' FROM generate_series(1, 50) g RETURNING id",
                        &[],
                    )
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                all.extend(ids);
                tokio::time::sleep(Duration::from_millis(20)).await; // pacing the load, not synchronising
            }
            all
        }
    });
    support::wait_until_msg(
        "some rows PROCESSED",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async { !ids_with_status(&env, "PROCESSED").await.is_empty() },
    )
    .await;
    relay.kill9();
    // With the relay dead nothing more reaches the broker; the janitor keeps
    // running passes (as `prune` would on a schedule).
    for _ in 0..5 {
        prune(&env, &[]);
    }
    let processed = ids_with_status(&env, "PROCESSED").await;
    let on_broker: HashSet<i64> = crate::support::kafka::read_until_quiet_async(
        &env.bootstrap(),
        &env.topic(TOPIC),
        Duration::from_secs(2),
        Duration::from_secs(30),
    )
    .await
    .iter()
    .map(|m| m.header_str("id").unwrap().parse().unwrap())
    .collect();
    let not_there: Vec<_> = processed.difference(&on_broker).take(10).collect();
    assert!(
        not_there.is_empty(),
        "PROCESSED but never published: {not_there:?}"
    );
    eprintln!(
        "janitor crash test: {} PROCESSED, {} on broker at the crash",
        processed.len(),
        on_broker.len()
    );

    let _relay = env.spawn_relay_with(&[("OUTBOX_RELAY_CLEANUP_CLEANUP_INTERVAL", "100ms")]);
    let all: HashSet<i64> = writer.await.unwrap().into_iter().collect();
    env.read_ids(TOPIC, &all, Duration::from_secs(90)).await;
    support::wait_until_msg(
        "every row PROCESSED after the restart",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async { ids_with_status(&env, "PROCESSED").await == all },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_after_publish_keeps_the_table_empty() {
    let env = Env::start(&[TOPIC]).await;
    let flag = ("OUTBOX_RELAY_CLEANUP_DELETE_AFTER_PUBLISH", "true");
    let _relay = env.spawn_relay_with(&[NO_BACKGROUND_JANITOR, flag]);
    let ids: HashSet<i64> = insert_n(&env, 40).await.into_iter().collect();
    let msgs = env.read_ids(TOPIC, &ids, Duration::from_secs(60)).await;
    assert!(msgs.len() >= ids.len());
    support::wait_until_msg(
        "table emptied",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            prune(&env, &[flag]);
            env.outbox_ids().await.is_empty()
        },
    )
    .await;
}

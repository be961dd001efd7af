//! Core relay behaviour (issue: ordered, lossless, checkpoint after ack).

use std::collections::HashSet;
use std::time::Duration;

use outbox_relay::emit::{Emitter, OutboxEvent};
use serde_json::json;

use crate::fixture::{Arrival, Env};
use crate::support::{self, postgres};

const TOPIC: &str = "outbox.order";

/// Insert `n` events for writer `w` in transactions of 1..=50 rows, cycling
/// through the three ways an application can emit (plain SQL, the SQL
/// function, the Rust helper). Returns the committed ids.
async fn write_events(url: String, w: usize, n: usize, seed: u64) -> Vec<i64> {
    let mut client = postgres::connect(&url).await.expect("writer connect");
    let emitter = Emitter::default();
    let mut rng = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(w as u64 + 1);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut ids = Vec::with_capacity(n);
    let mut written = 0;
    let mut txn_no = 0u64;
    while written < n {
        let size = ((next() % 50) as usize + 1).min(n - written);
        let tx = client.transaction().await.expect("begin");
        for i in 0..size {
            let seq = written + i;
            let agg = format!("order-{w}-{}", seq % 7);
            let data = json!({"writer": w, "seq": seq, "note": "héllo \"quoted\""});
            let headers = json!({"traceparent": format!("00-{w:032x}-{seq:016x}-01"), "writer": w});
            let id: i64 = match txn_no % 3 {
                0 => tx
                    .query_one(
                        "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, headers) \
                         VALUES ('order', $1, 'OrderCreated', $2, $3) RETURNING id",
                        &[&agg, &data, &headers],
                    )
                    .await
                    .expect("insert")
                    .get(0),
                1 => tx
                    .query_one(
                        "SELECT public.outbox_emit('order', $1, 'OrderCreated', $2, $3)",
                        &[&agg, &data, &headers],
                    )
                    .await
                    .expect("emit fn")
                    .get(0),
                _ => {
                    let ev = OutboxEvent::new("order", agg, "OrderCreated", data)
                        .header("traceparent", format!("00-{w:032x}-{seq:016x}-01"))
                        .header("writer", w.to_string());
                    emitter.emit(&tx, &ev).await.expect("emit helper")
                }
            };
            ids.push(id);
        }
        tx.commit().await.expect("commit");
        written += size;
        txn_no += 1;
    }
    ids
}

/// Run `writers` concurrent writers of `per_writer` events each.
pub(crate) async fn write_concurrently(
    env: &Env,
    writers: usize,
    per_writer: usize,
    seed: u64,
) -> HashSet<i64> {
    let handles: Vec<_> = (0..writers)
        .map(|w| tokio::spawn(write_events(env.url(), w, per_writer, seed)))
        .collect();
    let mut all = HashSet::new();
    for h in handles {
        all.extend(h.await.expect("writer task"));
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_events_from_eight_writers_arrive_once_in_commit_order() {
    let env = Env::start(&[TOPIC]).await;
    let mut relay = env.spawn_relay();
    let ids = write_concurrently(&env, 8, 1250, 1).await;
    assert_eq!(ids.len(), 10_000);

    let msgs = env.read_ids(TOPIC, &ids, Duration::from_secs(180)).await;
    let arrival = Arrival::of(&msgs);
    arrival.assert_complete(&ids);
    assert_eq!(arrival.duplicates(), 0, "no crash, so no duplicates");
    arrival.assert_commit_order();

    // Key, value and headers, checked against the table.
    let c = env.client().await;
    let rows = c
        .query(
            "SELECT id, aggregate_id, event_data::text FROM public.outbox",
            &[],
        )
        .await
        .unwrap();
    let table: std::collections::HashMap<i64, (String, String)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    for m in &msgs {
        let id: i64 = m.header_str("id").unwrap().parse().unwrap();
        let (agg, data) = &table[&id];
        assert_eq!(m.key_str().as_deref(), Some(agg.as_str()));
        assert_eq!(
            m.payload_str().as_deref(),
            Some(data.as_str()),
            "value is event_data unchanged"
        );
        assert_eq!(m.header_str("event_type").as_deref(), Some("OrderCreated"));
        assert_eq!(m.header_str("aggregate_type").as_deref(), Some("order"));
        assert_eq!(m.header_str("aggregate_id").as_deref(), Some(agg.as_str()));
        assert!(m.header_str("commit_timestamp").unwrap().ends_with('Z'));
        assert!(m.header_str("traceparent").unwrap().starts_with("00-"));
        assert!(m.header_str("writer").is_some());
    }

    // The checkpoint reaches the last commit once everything is acked.
    let last_lsn: u64 = msgs
        .iter()
        .map(|m| outbox_relay::sink::message::parse_lsn(&m.header_str("lsn").unwrap()).unwrap())
        .max()
        .unwrap();
    support::wait_until_msg(
        "checkpoint past the last commit",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async { env.checkpoint().await.is_some_and(|c| c > last_lsn) },
    )
    .await;
    assert!(relay.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn rolled_back_transactions_and_other_tables_publish_nothing() {
    let env = Env::start(&[TOPIC, "outbox.rollback"]).await;
    let c = env.client().await;
    c.batch_execute("CREATE TABLE orders (id serial PRIMARY KEY, note text)")
        .await
        .unwrap();
    let mut relay = env.spawn_relay();
    let mut client = postgres::connect(&env.url()).await.unwrap();

    // 1. rolled back: business row + outbox row
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO orders (note) VALUES ('rolled back')", &[])
        .await
        .unwrap();
    tx.execute(
        "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) VALUES ('rollback', 'r1', 'X', '{}')",
        &[],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    // 2. committed: business rows in the same transaction as one outbox row
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO orders (note) SELECT 'business ' || g FROM generate_series(1, 50) g",
        &[],
    )
    .await
    .unwrap();
    let id: i64 = tx
        .query_one(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) VALUES ('order', 'o1', 'Created', '{\"n\":1}') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    // 3. an aborted subtransaction inside a committed one
    let tx = client.transaction().await.unwrap();
    tx.batch_execute(
        "SAVEPOINT s; INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) VALUES ('rollback', 'r2', 'X', '{}'); ROLLBACK TO SAVEPOINT s;",
    )
    .await
    .unwrap();
    let sentinel: i64 = tx
        .query_one(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) VALUES ('order', 'o2', 'Sentinel', '{}') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();

    let msgs = env.read(TOPIC, 2, Duration::from_secs(60)).await;
    let got: HashSet<i64> = msgs
        .iter()
        .map(|m| m.header_str("id").unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, HashSet::from([id, sentinel]));
    // The sentinel was committed after the rollbacks: once it is here,
    // anything from them would be too.
    let stray = crate::support::kafka::read_until_quiet_async(
        &env.bootstrap(),
        &env.topic("outbox.rollback"),
        Duration::from_secs(2),
        Duration::from_secs(10),
    )
    .await;
    assert!(
        stray.is_empty(),
        "rolled-back rows were published: {stray:?}"
    );
    assert!(msgs
        .iter()
        .all(|m| !m.payload_str().unwrap_or_default().contains("business")));
    assert!(relay.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_stream_loses_nothing_and_duplicates_stay_within_the_window() {
    let max_in_flight = 500;
    let env = Env::start_with(&[TOPIC], "", max_in_flight).await;
    let mut relay = env.spawn_relay();
    let writers = tokio::spawn({
        let url = env.url();
        async move {
            let hs: Vec<_> = (0..4)
                .map(|w| tokio::spawn(write_events(url.clone(), w, 1500, 7)))
                .collect();
            let mut all = HashSet::new();
            for h in hs {
                all.extend(h.await.unwrap());
            }
            all
        }
    });
    // Kill once the relay has published and checkpointed part of the stream.
    support::wait_until_msg(
        "a first checkpoint",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async { env.checkpoint().await.is_some() },
    )
    .await;
    relay.kill9();
    let ckpt_at_kill = env.checkpoint().await.unwrap();
    let mut relay = env.spawn_relay();
    let ids = writers.await.unwrap();

    let msgs = env.read_ids(TOPIC, &ids, Duration::from_secs(180)).await;
    let arrival = Arrival::of(&msgs);
    arrival.assert_complete(&ids);
    arrival.assert_commit_order();
    let dups = arrival.duplicates();
    eprintln!(
        "kill -9: {} events, {dups} duplicates, checkpoint at kill {ckpt_at_kill:X}",
        ids.len()
    );
    assert!(
        dups <= max_in_flight,
        "{dups} duplicates > in-flight window {max_in_flight}"
    );
    assert!(relay.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_unresponsive_for_ten_seconds_then_back_loses_nothing() {
    let env = Env::start_own_broker(&[TOPIC], "", 1000).await;
    let mut relay = env.spawn_relay();
    let first = write_concurrently(&env, 2, 500, 3).await;
    let before = env.read_ids(TOPIC, &first, Duration::from_secs(60)).await;
    Arrival::of(&before).assert_complete(&first);

    env.broker.pause();
    let during = write_concurrently(&env, 2, 500, 4).await;
    tokio::time::sleep(Duration::from_secs(10)).await; // the outage itself, not synchronisation
    assert!(relay.is_running(), "the relay must ride out the outage");
    env.broker.resume();
    let after = write_concurrently(&env, 2, 250, 5).await;

    let all: HashSet<i64> = first.iter().chain(&during).chain(&after).copied().collect();
    let msgs = env.read_ids(TOPIC, &all, Duration::from_secs(120)).await;
    let arrival = Arrival::of(&msgs);
    arrival.assert_complete(&all);
    arrival.assert_commit_order();
    assert!(relay.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_outbox_with_traffic_elsewhere_advances_the_slot() {
    let env = Env::start(&[TOPIC]).await;
    let c = env.client().await;
    c.batch_execute("CREATE TABLE other (id serial PRIMARY KEY, v text)")
        .await
        .unwrap();
    let _relay = env.spawn_relay();
    let start = env.confirmed_flush().await;
    for i in 0..50 {
        c.execute("INSERT INTO other (v) VALUES ($1)", &[&format!("row {i}")])
            .await
            .unwrap();
    }
    let wal_after: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let wal_after = outbox_relay::sink::message::parse_lsn(&wal_after).unwrap();
    assert!(wal_after > start);
    support::wait_until_msg(
        "confirmed_flush_lsn to pass the WAL written to other tables",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async { env.confirmed_flush().await >= wal_after },
    )
    .await;
    // Nothing was published and nothing needed a checkpoint write.
    let msgs = crate::support::kafka::read_until_quiet_async(
        &env.bootstrap(),
        &env.topic(TOPIC),
        Duration::from_secs(1),
        Duration::from_secs(5),
    )
    .await;
    assert!(msgs.is_empty());
    assert_eq!(
        env.checkpoint().await,
        None,
        "idle confirmations must not write the checkpoint table"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn alter_table_add_column_while_running_loses_nothing() {
    let env = Env::start(&[TOPIC]).await;
    let mut relay = env.spawn_relay();
    let mut ids = write_concurrently(&env, 2, 250, 11).await;
    let c = env.client().await;
    c.batch_execute("ALTER TABLE public.outbox ADD COLUMN tenant text DEFAULT 'acme'")
        .await
        .unwrap();
    ids.extend(write_concurrently(&env, 2, 250, 12).await);
    c.batch_execute("ALTER TABLE public.outbox ADD COLUMN region text")
        .await
        .unwrap();
    c.execute(
        "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, region) VALUES ('order', 'x', 'Moved', '{}', 'eu')",
        &[],
    )
    .await
    .unwrap();
    ids = env.outbox_ids().await;
    let msgs = env.read_ids(TOPIC, &ids, Duration::from_secs(90)).await;
    let arrival = Arrival::of(&msgs);
    arrival.assert_complete(&ids);
    arrival.assert_commit_order();
    assert!(relay.is_running(), "ALTER TABLE must not crash the relay");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_persists_and_restart_publishes_no_duplicates() {
    let env = Env::start(&[TOPIC]).await;
    let mut relay = env.spawn_relay();
    let first = write_concurrently(&env, 2, 400, 21).await;
    let msgs = env.read_ids(TOPIC, &first, Duration::from_secs(60)).await;
    Arrival::of(&msgs).assert_complete(&first);
    let status = relay.terminate(Duration::from_secs(20));
    assert!(
        status.success(),
        "graceful stop exits 0, got {status:?}\n{}",
        relay.log_text()
    );
    let ckpt = env
        .checkpoint()
        .await
        .expect("checkpoint persisted at stop");
    let max_lsn = msgs
        .iter()
        .map(|m| outbox_relay::sink::message::parse_lsn(&m.header_str("lsn").unwrap()).unwrap())
        .max()
        .unwrap();
    assert!(
        ckpt > max_lsn,
        "checkpoint {ckpt:X} covers the last published commit {max_lsn:X}"
    );

    // While stopped, more events; a restart publishes those only.
    let second = write_concurrently(&env, 2, 100, 22).await;
    let _relay = env.spawn_relay();
    let all: HashSet<i64> = first.union(&second).copied().collect();
    let msgs = env.read_ids(TOPIC, &all, Duration::from_secs(60)).await;
    let extra = crate::support::kafka::read_until_quiet_async(
        &env.bootstrap(),
        &env.topic(TOPIC),
        Duration::from_secs(2),
        Duration::from_secs(10),
    )
    .await;
    let arrival = Arrival::of(&msgs);
    arrival.assert_complete(&all);
    assert_eq!(
        extra.len(),
        all.len(),
        "no re-delivery after a graceful stop"
    );
    assert_eq!(arrival.duplicates(), 0);
}

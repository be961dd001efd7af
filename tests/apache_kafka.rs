//! What only a real Apache Kafka broker shows: where keys land (the Java client's murmur2
//! partitioner), the replication of topics the relay creates, the broker's own refusal of an
//! oversized record, and a three-broker cluster losing a partition leader mid-stream.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::core::write_concurrently;
use crate::fixture::{Arrival, Env, DLQ_TOPIC};
use crate::observability::{samples, scrape};
use crate::support::broker::{kafka_libs, Broker};
use crate::support::{self, kafka};

const TOPIC: &str = "outbox.order";

/// Partition of each key per the Java client's own code (`Utils.murmur2`, `toPositive`,
/// modulo the partition count), computed by running Java against the kafka-clients jar.
fn java_partitions(keys: &[String], partitions: usize) -> HashMap<String, i32> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("Partition.java");
    std::fs::write(
        &src,
        r#"import org.apache.kafka.common.utils.Utils;
public class Partition {
    public static void main(String[] args) throws Exception {
        int n = Integer.parseInt(args[0]);
        java.io.BufferedReader in = new java.io.BufferedReader(new java.io.InputStreamReader(System.in, "UTF-8"));
        for (String key; (key = in.readLine()) != null; ) {
            byte[] bytes = key.getBytes("UTF-8");
            System.out.println(key + "\t" + (Utils.toPositive(Utils.murmur2(bytes)) % n));
        }
    }
}
"#,
    )
    .unwrap();
    let mut child = Command::new("java")
        .arg("-cp")
        .arg(format!("{}/*", kafka_libs().display()))
        .arg(&src)
        .arg(partitions.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run java");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for k in keys {
            writeln!(stdin, "{k}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "java partitioner program failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, p) = l.split_once('\t').unwrap();
            (k.to_string(), p.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_land_on_the_partition_the_java_client_picks() {
    let env = Env::start(&[TOPIC]).await;
    let _relay = env.spawn_relay();
    let keys: Vec<String> = (0..64)
        .map(|i| format!("order-{i}-{}", "é".repeat(i % 3)))
        .collect();
    let c = env.client().await;
    let mut ids = HashSet::new();
    for k in &keys {
        let id: i64 = c
            .query_one(
                "SELECT outbox_emit('order', $1, 'OrderCreated', '{}')",
                &[k],
            )
            .await
            .unwrap()
            .get(0);
        ids.insert(id);
    }
    let msgs = env.read_ids(TOPIC, &ids, Duration::from_secs(60)).await;
    Arrival::of(&msgs).assert_complete(&ids);
    let want = java_partitions(&keys, 4);
    let mut used = HashSet::new();
    for m in &msgs {
        let key = m.key_str().unwrap();
        assert_eq!(
            m.partition, want[&key],
            "key {key:?}: the relay chose partition {}, the Java client {}",
            m.partition, want[&key]
        );
        used.insert(m.partition);
    }
    assert_eq!(used.len(), 4, "64 keys spread over all 4 partitions");
}

/// `kafka.create-topics` on a three-broker cluster: the topic gets replication factor 3 and
/// `min.insync.replicas=2`, not a silent 1.
#[tokio::test(flavor = "multi_thread")]
async fn topics_the_relay_creates_fit_the_cluster() {
    let cluster = Arc::new(Broker::cluster().await);
    let env = Env::start_on(cluster, &[], "", 1000).await;
    let _relay = env.spawn_relay_with(&[("OUTBOX_RELAY_KAFKA_CREATE_TOPICS", "true")]);
    let c = env.client().await;
    let id: i64 = c
        .query_one("SELECT outbox_emit('invoice', 'i-1', 'Issued', '{}')", &[])
        .await
        .unwrap()
        .get(0);
    let got = env.read("outbox.invoice", 1, Duration::from_secs(90)).await;
    assert_eq!(got[0].header_str("id"), Some(id.to_string()));

    let bootstrap = env.bootstrap();
    let topic = env.topic("outbox.invoice");
    let replicas = tokio::task::spawn_blocking({
        let (b, t) = (bootstrap.clone(), topic.clone());
        move || {
            let consumer: BaseConsumer = kafka::client_config(&b).create().unwrap();
            let md = consumer
                .fetch_metadata(Some(&t), Duration::from_secs(10))
                .unwrap();
            md.topics()[0]
                .partitions()
                .iter()
                .map(|p| p.replicas().len())
                .collect::<Vec<_>>()
        }
    })
    .await
    .unwrap();
    assert_eq!(replicas, vec![3; 3], "3 partitions, 3 replicas each");
    let admin: AdminClient<DefaultClientContext> =
        kafka::client_config(&bootstrap).create().unwrap();
    let configs = admin
        .describe_configs([&ResourceSpecifier::Topic(&topic)], &AdminOptions::new())
        .await
        .unwrap();
    let resource = configs.into_iter().next().unwrap().unwrap();
    let min_isr = resource
        .get("min.insync.replicas")
        .and_then(|e| e.value.clone());
    assert_eq!(min_isr.as_deref(), Some("2"));
}

/// A row larger than the topic's `max.message.bytes` but under `relay.max-payload-bytes`:
/// the broker itself refuses it (MESSAGE_TOO_LARGE). After `relay.max-retry` attempts it is
/// in the DLQ with the error headers and FAILED; every later row arrives in commit order.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_the_broker_refuses_as_too_large_is_dead_lettered() {
    let env = Env::start(&[]).await;
    kafka::create_topic_with(
        &env.bootstrap(),
        &env.topic(TOPIC),
        4,
        &[("max.message.bytes", "4096")],
    )
    .await;
    let _relay = env.spawn_relay_with(&[("OUTBOX_RELAY_RELAY_MAX_RETRY", "2")]);
    let c = env.client().await;
    let insert = |data: String| {
        let c = &c;
        async move {
            c.query_one(
                "SELECT outbox_emit('order', 'same-key', 'Created', $1::text::jsonb)",
                &[&data],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        }
    };
    let mut good = Vec::new();
    for i in 0..5 {
        good.push(insert(format!("{{\"n\":{i}}}")).await);
    }
    let bad = insert(format!("{{\"blob\":\"{}\"}}", "x".repeat(20_000))).await;
    for i in 5..10 {
        good.push(insert(format!("{{\"n\":{i}}}")).await);
    }

    let want: HashSet<i64> = good.iter().copied().collect();
    let msgs = env.read_ids(TOPIC, &want, Duration::from_secs(90)).await;
    let arrival = Arrival::of(&msgs);
    arrival.assert_complete(&want);
    arrival.assert_commit_order();
    let dlq = env.read(DLQ_TOPIC, 1, Duration::from_secs(60)).await;
    let ids: Vec<Option<String>> = dlq.iter().map(|d| d.header_str("id")).collect();
    assert_eq!(ids, vec![Some(bad.to_string())], "only the oversized row");
    let d = &dlq[0];
    let message = d.header_str("dlq.error.message").unwrap_or_default();
    assert!(
        message.to_ascii_lowercase().contains("too large"),
        "error names the broker's refusal: {message}"
    );
    assert_eq!(d.header_str("dlq.original.topic"), Some(env.topic(TOPIC)));
    assert_eq!(d.header_str("dlq.attempts").as_deref(), Some("2"));
    support::wait_until_msg(
        "the refused row FAILED in the table",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { env.row_status(bad).await.0 == "FAILED" },
    )
    .await;
}

/// Three brokers, 8 writers, ≥ 10,000 events, `kafka.max-in-flight=500`: `kill -9` of a
/// partition leader while at least 200 messages are unacknowledged, its restart, then a
/// rolling restart of all three. Nothing lost, commit order per partition, duplicates within
/// the in-flight window per fault.
#[tokio::test(flavor = "multi_thread")]
async fn three_brokers_lose_a_leader_and_restart_one_by_one_without_loss() {
    const WINDOW: usize = 500;
    let cluster = Arc::new(Broker::cluster().await);
    let env = Env::start_on(cluster.clone(), &[TOPIC], "", WINDOW).await;
    let _relay = env.spawn_relay();
    let writers = write_concurrently(&env, 8, 400, 11);
    // The writers run while the faults happen.
    let (ids, ()) = tokio::join!(writers, async {
        support::wait_for_msg(
            "≥ 200 messages in flight",
            Duration::from_secs(120),
            Duration::from_millis(20),
            || async {
                let text = scrape(&env).await?;
                let n = *samples(&text).get("outbox_relay_in_flight_messages")?;
                (n >= 200.0).then_some(())
            },
        )
        .await;
        let leader = tokio::task::spawn_blocking({
            let b = env.bootstrap();
            let t = env.topic(TOPIC);
            move || kafka::partition_leader(&b, &t, 0).expect("partition 0 has a leader")
        })
        .await
        .unwrap();
        eprintln!("kill -9 of node {leader}, leader of partition 0");
        cluster.kill_node(leader as usize);
        tokio::time::sleep(Duration::from_secs(3)).await; // the node stays dead a while
        cluster.restart_node(leader as usize).await;
    });
    let mut all = ids;
    // A rolling restart while more writers run.
    let (more, ()) = tokio::join!(write_concurrently(&env, 8, 900, 12), async {
        cluster.rolling_restart().await;
    });
    all.extend(more);
    assert!(all.len() >= 10_000, "{} events", all.len());

    let msgs = env.read_ids(TOPIC, &all, Duration::from_secs(300)).await;
    let arrival = Arrival::of(&msgs);
    arrival.assert_complete(&all);
    arrival.assert_commit_order();
    let faults = 1 + cluster.node_count();
    let dups = arrival.duplicates();
    eprintln!(
        "{} events, {dups} duplicates over {faults} faults",
        all.len()
    );
    assert!(
        dups <= WINDOW * faults,
        "{dups} duplicates > {WINDOW} per fault × {faults}"
    );
}

/// The tests, the scripts, the fetch pom and the compose stack run one Kafka version.
#[test]
fn one_kafka_version_everywhere() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let v = crate::support::broker::KAFKA_VERSION;
    for (file, needle) in [
        (
            "deploy/kafka/pom.xml",
            format!("<kafka.version>{v}</kafka.version>"),
        ),
        ("scripts/setup.sh", format!("KAFKA_VERSION={v}")),
        ("scripts/lib/services.sh", format!("KAFKA_VERSION:-{v}")),
        ("docker-compose.yml", format!("image: apache/kafka:{v}")),
    ] {
        assert!(
            read(file).contains(&needle),
            "{file} does not say {needle:?}: keep every Kafka version at {v}"
        );
    }
}

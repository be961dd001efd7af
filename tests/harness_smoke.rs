//! Smoke test of the integration-test harness (tests/support) against real PostgreSQL 15
//! and Apache Kafka: single node, proxied node, three-node cluster, and the guarantee that
//! no JVM outlives the test process.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use support::broker::Broker;
use support::kafka::{self, create_topic, read_all_async};
use support::postgres::PgCluster;
use support::proxy::TcpProxy;

fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> FutureProducer {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("log_level", "4");
    for (k, v) in extra {
        cfg.set(*k, *v);
    }
    cfg.create().expect("create FutureProducer")
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_cluster_works() {
    let mut pg = PgCluster::start().await;
    let client = pg.client().await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(wal_level, "logical");
    let slot: String = client
        .query_one(
            "SELECT slot_name::text FROM pg_create_logical_replication_slot('smoke', 'pgoutput')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slot, "smoke");

    // Non-superusers need their SCRAM password over TCP.
    pg.create_database("app").await;
    pg.create_role("relay", "s3cret pw", "REPLICATION").await;
    let Err(err) = support::postgres::connect(&pg.url_for("app", "relay", "wrong")).await else {
        panic!("wrong password must fail");
    };
    let code = err.as_db_error().map(|e| e.code().code().to_string());
    assert_eq!(code.as_deref(), Some("28P01"), "{err}");
    let c = support::postgres::connect(&pg.url_for("app", "relay", "s3cret pw"))
        .await
        .expect("right password");
    c.simple_query("SELECT 1").await.unwrap();

    // Through a proxy, and cut by it.
    let proxy = TcpProxy::start(pg.addr()).await;
    let url = format!("postgres://postgres@{}/postgres", proxy.addr());
    let pc = support::postgres::connect(&url).await.unwrap();
    pc.simple_query("SELECT 1").await.unwrap();
    proxy.cut();
    support::wait_until_msg(
        "proxied client to notice the cut",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { pc.is_closed() || pc.simple_query("SELECT 1").await.is_err() },
    )
    .await;

    // Restart keeps the data and the port; an immediate restart does crash recovery.
    pg.restart("immediate").await;
    let client = pg.client().await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    pg.stop().await;
    assert!(support::postgres::connect(&pg.url()).await.is_err());
    pg.start_again().await;
    pg.client().await.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_produce_and_read_back() {
    let broker = Broker::start().await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "smoke", 4).await;
    assert_eq!(
        tokio::task::spawn_blocking({
            let b = bootstrap.clone();
            move || kafka::partition_count(&b, "smoke")
        })
        .await
        .unwrap(),
        Some(4)
    );

    let p = producer(&bootstrap, &[("message.timeout.ms", "30000")]);
    let mut futs = Vec::new();
    for i in 0..100u32 {
        let key = format!("k{}", i % 10);
        let payload = format!("{{\"i\":{i}}}");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "seq",
                value: Some(&i.to_string()),
            })
            .insert(Header {
                key: "empty",
                value: Some(""),
            });
        let rec = FutureRecord::to("smoke")
            .key(&key)
            .payload(&payload)
            .headers(headers);
        futs.push(p.send_result(rec).map_err(|(e, _)| e).expect("enqueue"));
    }
    let mut delivered = HashMap::new();
    for (i, f) in futs.into_iter().enumerate() {
        let d = f.await.expect("not cancelled").expect("delivered");
        delivered.insert(i as u32, (d.partition, d.offset));
    }

    let got = read_all_async(&bootstrap, "smoke", 100, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 100, "read {} of 100", got.len());
    let mut last_offset: HashMap<i32, i64> = HashMap::new();
    let mut last_seq_by_key: HashMap<String, u32> = HashMap::new();
    let mut partition_by_key: HashMap<String, i32> = HashMap::new();
    for r in &got {
        let seq: u32 = r.header_str("seq").unwrap().parse().unwrap();
        assert_eq!(r.header("empty"), Some(&b""[..]));
        assert_eq!(r.key_str().unwrap(), format!("k{}", seq % 10));
        assert_eq!(r.payload_str().unwrap(), format!("{{\"i\":{seq}}}"));
        assert_eq!(delivered[&seq], (r.partition, r.offset));
        assert!(r.timestamp.is_some());
        if let Some(prev) = last_offset.insert(r.partition, r.offset) {
            assert!(
                r.offset > prev,
                "offsets not increasing in partition {}",
                r.partition
            );
        }
        let key = r.key_str().unwrap();
        if let Some(prev) = last_seq_by_key.insert(key.clone(), seq) {
            assert!(seq > prev, "key {key}: seq {seq} after {prev}");
        }
        let part = *partition_by_key.entry(key.clone()).or_insert(r.partition);
        assert_eq!(part, r.partition, "key {key} in two partitions");
    }
    let parts: std::collections::BTreeSet<i32> = got.iter().map(|r| r.partition).collect();
    println!("partitions used by 10 keys: {parts:?}");
    for (p, off) in &last_offset {
        let count = got.iter().filter(|r| r.partition == *p).count() as i64;
        assert_eq!(
            *off,
            count - 1,
            "partition {p} offsets start at 0 and are dense"
        );
    }

    let quiet = kafka::read_until_quiet_async(
        &bootstrap,
        "smoke",
        Duration::from_millis(1500),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(quiet.len(), 100);
    drop(p);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxied_broker_survives_cut_and_pause() {
    let (_broker, proxy) = Broker::start_proxied().await;
    let bootstrap = _broker.bootstrap();
    assert_eq!(bootstrap, proxy.addr().to_string());
    create_topic(&bootstrap, "proxied", 1).await;
    let p = producer(&bootstrap, &[("message.timeout.ms", "30000")]);
    let send = |i: u32| {
        let payload = format!("m{i}");
        p.send_result(FutureRecord::to("proxied").key("k").payload(&payload))
            .map_err(|(e, _)| e)
            .unwrap()
    };
    send(0).await.unwrap().expect("before cut");
    let before = proxy.connections_accepted();
    proxy.cut();
    send(1)
        .await
        .unwrap()
        .expect("after cut: producer reconnects");
    assert!(proxy.connections_accepted() > before);

    proxy.pause();
    let pending = send(2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.resume();
    let d = pending.await.unwrap().expect("after pause");
    assert_eq!(d.offset, 2);

    let got = read_all_async(&bootstrap, "proxied", 3, Duration::from_secs(30)).await;
    let payloads: Vec<String> = got.iter().filter_map(|r| r.payload_str()).collect();
    assert_eq!(payloads, ["m0", "m1", "m2"]);
}

/// The three-node cluster: topics get replication factor 3, a produce with `acks=all`
/// survives `kill -9` of a partition leader, and the node comes back on its data.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_keeps_acked_messages_across_a_leader_kill() {
    let cluster = Broker::cluster().await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "ha", 1).await;
    let p = producer(&bootstrap, &[("message.timeout.ms", "60000")]);
    for i in 0..50u32 {
        let payload = format!("m{i}");
        p.send_result(FutureRecord::to("ha").key("k").payload(&payload))
            .map_err(|(e, _)| e)
            .unwrap()
            .await
            .unwrap()
            .expect("delivered before the kill");
    }
    let leader = kafka::partition_leader(&bootstrap, "ha", 0).expect("a leader");
    cluster.kill_node(leader as usize);
    for i in 50..100u32 {
        let payload = format!("m{i}");
        p.send_result(FutureRecord::to("ha").key("k").payload(&payload))
            .map_err(|(e, _)| e)
            .unwrap()
            .await
            .unwrap()
            .expect("delivered after the leader died (two in-sync replicas left)");
    }
    cluster.restart_node(leader as usize).await;
    let got = read_all_async(&bootstrap, "ha", 100, Duration::from_secs(60)).await;
    let payloads: Vec<String> = got.iter().filter_map(|r| r.payload_str()).collect();
    let want: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads, want);
}

/// No JVM outlives the test process, even one killed with SIGKILL (which runs no
/// destructor): this test re-runs itself as a child that starts a broker, prints the JVM's
/// pid and waits to be killed; after `kill -9` of the child the JVM must be gone.
#[tokio::test(flavor = "multi_thread")]
async fn no_jvm_outlives_a_killed_test_process() {
    if std::env::var_os("OUTBOX_HARNESS_CHILD").is_some() {
        let broker = Broker::shared().await;
        println!("JVM_PID={}", broker.pid());
        tokio::time::sleep(Duration::from_secs(600)).await;
        return;
    }
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "no_jvm_outlives_a_killed_test_process",
            "--nocapture",
        ])
        .env("OUTBOX_HARNESS_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let pid: i32 = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("JVM_PID=").map(|p| p.parse().unwrap()))
            .expect("child printed the JVM pid")
    })
    .await
    .unwrap();
    assert!(unsafe { libc::kill(pid, 0) } == 0, "JVM {pid} running");
    child.kill().unwrap();
    child.wait().unwrap();
    support::wait_until_msg(
        "the JVM to be gone after its test process was killed",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async move {
            // Gone, or a zombie awaiting its (new) parent's reaping.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z")
        },
    )
    .await;
}

//! Smoke test of the integration-test harness (tests/support) against real PostgreSQL 15
//! and tansu 0.6.0. The `#[ignore]`d tests are explorations of broker behaviour that print
//! their findings: `cargo test --test harness_smoke -- --ignored --nocapture`.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

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

/// Exploration: auto-creation of topics on produce.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn explore_autocreate() {
    let broker = Broker::start().await;
    let bootstrap = broker.bootstrap();
    let p = producer(&bootstrap, &[("message.timeout.ms", "5000")]);
    let t0 = Instant::now();
    let res = p
        .send(
            FutureRecord::to("does-not-exist").key("k").payload("v"),
            Duration::from_secs(1),
        )
        .await;
    println!(
        "FINDING autocreate: produce to nonexistent topic after {:?}: {:?}",
        t0.elapsed(),
        res.as_ref().map_err(|(e, _)| e)
    );
    let b = bootstrap.clone();
    let count = tokio::task::spawn_blocking(move || kafka::partition_count(&b, "does-not-exist"))
        .await
        .unwrap();
    println!("FINDING autocreate: partition count afterwards: {count:?}");
    let b = bootstrap.clone();
    let md_err = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = kafka::client_config(&b)
            .set("allow.auto.create.topics", "true")
            .create()
            .unwrap();
        let md = c
            .fetch_metadata(Some("does-not-exist-2"), Duration::from_secs(5))
            .unwrap();
        md.topics()
            .iter()
            .map(|t| (t.name().to_string(), t.error(), t.partitions().len()))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    println!("FINDING autocreate: metadata(allow_auto_create=true) for a new topic: {md_err:?}");
}

/// Exploration: oversize messages.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn explore_oversize() {
    let broker = Broker::start().await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "big", 1).await;
    // Default librdkafka limit first (message.max.bytes = 1000000).
    let p = producer(&bootstrap, &[("message.timeout.ms", "10000")]);
    let big = vec![b'x'; 2 * 1024 * 1024];
    match p.send_result(FutureRecord::to("big").key("k").payload(&big)) {
        Err((e, _)) => println!(
            "FINDING oversize (client default limit): 2 MiB rejected at enqueue: {e:?} / {e}"
        ),
        Ok(f) => println!(
            "FINDING oversize (client default limit): 2 MiB enqueued; delivery: {:?}",
            f.await.unwrap().map(|d| d.offset).map_err(|(e, _)| e)
        ),
    }
    // A topic-level limit: does tansu enforce max.message.bytes?
    kafka::create_topic_with(&bootstrap, "small", 1, &[("max.message.bytes", "1000")]).await;
    let res = p
        .send(
            FutureRecord::to("small")
                .key("k")
                .payload(&vec![b'z'; 5000]),
            Duration::from_secs(1),
        )
        .await;
    println!(
        "FINDING oversize: 5000 bytes to topic with max.message.bytes=1000: {:?}",
        res.as_ref()
            .map(|d| (d.partition, d.offset))
            .map_err(|(e, _)| e)
    );
    let p = producer(
        &bootstrap,
        &[
            ("message.timeout.ms", "10000"),
            ("message.max.bytes", "100000000"),
        ],
    );
    for size in [900 * 1024, 2 * 1024 * 1024, 20 * 1024 * 1024] {
        let payload = vec![b'y'; size];
        let t0 = Instant::now();
        let res = p
            .send(
                FutureRecord::to("big").key("k").payload(&payload),
                Duration::from_secs(1),
            )
            .await;
        println!(
            "FINDING oversize (message.max.bytes=100MB): {size} bytes after {:?}: {:?}",
            t0.elapsed(),
            res.as_ref()
                .map(|d| (d.partition, d.offset))
                .map_err(|(e, _)| e)
        );
    }
    let got = kafka::read_until_quiet_async(
        &bootstrap,
        "big",
        Duration::from_secs(3),
        Duration::from_secs(30),
    )
    .await;
    println!(
        "FINDING oversize: read back sizes: {:?}",
        got.iter()
            .map(|r| r.payload.as_ref().map(|p| p.len()))
            .collect::<Vec<_>>()
    );
}

/// Exploration: SIGSTOP the broker for 10 s while producing.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn explore_pause_resume() {
    for extra in [
        vec![("message.timeout.ms", "60000")],
        vec![
            ("message.timeout.ms", "60000"),
            ("request.timeout.ms", "3000"),
        ],
        // Messages time out while the broker is stopped: does the producer recover?
        vec![
            ("message.timeout.ms", "4000"),
            ("request.timeout.ms", "3000"),
        ],
    ] {
        let mut broker = Broker::start().await;
        let bootstrap = broker.bootstrap();
        create_topic(&bootstrap, "paused", 2).await;
        let p = producer(&bootstrap, &extra);
        p.send(
            FutureRecord::to("paused").key("k0").payload("before"),
            Duration::from_secs(1),
        )
        .await
        .expect("first delivery");
        broker.pause();
        let t_pause = Instant::now();
        let mut futs = Vec::new();
        for i in 0..20 {
            let key = format!("k{i}");
            let payload = format!("during-{i}");
            futs.push(
                p.send_result(FutureRecord::to("paused").key(&key).payload(&payload))
                    .map_err(|(e, _)| e)
                    .unwrap(),
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let remaining = Duration::from_secs(10).saturating_sub(t_pause.elapsed());
        tokio::time::sleep(remaining).await;
        broker.resume();
        let t_resume = Instant::now();
        let mut ok = 0;
        let mut errs = Vec::new();
        for f in futs {
            match f.await.unwrap() {
                Ok(_) => ok += 1,
                Err((e, _)) => errs.push(e.to_string()),
            }
        }
        println!(
            "FINDING pause {extra:?}: after resume {:?}: {ok} ok, errors {errs:?}",
            t_resume.elapsed()
        );
        let t = Instant::now();
        let res = p
            .send(
                FutureRecord::to("paused").key("k0").payload("after"),
                Duration::from_secs(1),
            )
            .await;
        println!(
            "FINDING pause {extra:?}: next produce {:?} in {:?}",
            res.as_ref()
                .map(|d| (d.partition, d.offset))
                .map_err(|(e, _)| e),
            t.elapsed()
        );
        println!(
            "FINDING pause {extra:?}: fatal_error after that: {:?}",
            p.client().fatal_error()
        );
        if res.is_err() {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let res = p
                .send(
                    FutureRecord::to("paused").key("k0").payload("after-2"),
                    Duration::from_secs(1),
                )
                .await;
            println!(
                "FINDING pause {extra:?}: produce 2 s later {:?}, fatal_error {:?}",
                res.as_ref()
                    .map(|d| (d.partition, d.offset))
                    .map_err(|(e, _)| e),
                p.client().fatal_error()
            );
            let fresh = producer(&bootstrap, &extra);
            let res = fresh
                .send(
                    FutureRecord::to("paused").key("k0").payload("fresh"),
                    Duration::from_secs(1),
                )
                .await;
            println!(
                "FINDING pause {extra:?}: a new producer: {:?}",
                res.as_ref()
                    .map(|d| (d.partition, d.offset))
                    .map_err(|(e, _)| e)
            );
        }
        let _ = p.flush(Duration::from_secs(10));
        let got = kafka::read_until_quiet_async(
            &bootstrap,
            "paused",
            Duration::from_secs(3),
            Duration::from_secs(30),
        )
        .await;
        println!(
            "FINDING pause {extra:?}: read back (partition, offset, payload): {:?}",
            got.iter()
                .map(|r| (r.partition, r.offset, r.payload_str().unwrap_or_default()))
                .collect::<Vec<_>>()
        );
        let mut payloads: Vec<String> = got.iter().filter_map(|r| r.payload_str()).collect();
        let n = payloads.len();
        payloads.sort();
        payloads.dedup();
        println!(
            "FINDING pause {extra:?}: read back {n} records, {} distinct (expected 22)",
            payloads.len()
        );
    }
}

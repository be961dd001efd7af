//! Print what arrived on a topic: `cargo run --example tail -- BROKERS TOPIC [COUNT] [SECONDS]`.
//!
//! Waits (up to SECONDS) for the topic to exist — the relay may not have
//! created it yet — then reads every partition from the beginning without a
//! consumer group and prints one line per message: partition/offset, key,
//! headers, value. Fails when fewer than COUNT messages arrived in time, so a
//! script using it cannot pass on a broken relay.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (brokers, topic) = match (args.get(1), args.get(2)) {
        (Some(b), Some(t)) => (b.clone(), t.clone()),
        _ => anyhow::bail!("usage: tail BROKERS TOPIC [COUNT] [SECONDS]"),
    };
    let count: usize = args
        .get(3)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(usize::MAX);
    let seconds: u64 = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(30);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "outbox-relay-tail")
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let parts = loop {
        let parts: Vec<i32> = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .map(|md| {
                md.topics()
                    .iter()
                    .filter(|t| t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect()
            })
            .unwrap_or_default();
        if !parts.is_empty() {
            break parts;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "topic {topic} did not appear within {seconds} s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = TopicPartitionList::new();
    for p in parts {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut seen = 0;
    while seen < count && Instant::now() < deadline {
        if let Some(msg) = consumer.poll(Duration::from_millis(200)) {
            let m = msg?;
            let headers: Vec<String> = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            format!(
                                "{}={}",
                                h.key,
                                String::from_utf8_lossy(h.value.unwrap_or_default())
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            println!(
                "{}[{}]@{} key={} headers=[{}] value={}",
                m.topic(),
                m.partition(),
                m.offset(),
                String::from_utf8_lossy(m.key().unwrap_or_default()),
                headers.join(", "),
                String::from_utf8_lossy(m.payload().unwrap_or_default())
            );
            seen += 1;
        }
    }
    anyhow::ensure!(
        count == usize::MAX || seen >= count,
        "only {seen} of {count} messages on {topic} within {seconds} s"
    );
    Ok(())
}

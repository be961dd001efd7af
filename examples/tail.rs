//! Print what arrived on a topic: `cargo run --example tail -- BROKERS TOPIC [COUNT] [SECONDS]`.
//!
//! Reads every partition from the beginning without a consumer group (so it
//! works against any Kafka-protocol broker, including the demo's tansu) and
//! prints one line per message: partition/offset, key, headers, value.

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
    let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(
        !parts.is_empty(),
        "topic {topic} has no partitions (does it exist?)"
    );
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
    Ok(())
}

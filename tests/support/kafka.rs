//! Kafka helpers: topic creation and group-less reading of whole topics.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// One consumed record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// In record order; a null header value is an empty vector.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Milliseconds since the epoch (create or log-append time), if any.
    pub timestamp: Option<i64>,
}

impl Received {
    /// The first header named `name`, as (lossy) UTF-8.
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn key_str(&self) -> Option<String> {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }

    pub fn payload_str(&self) -> Option<String> {
        self.payload
            .as_deref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }
}

/// A base client config for `bootstrap` with quiet logging.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("log_level", "4");
    cfg
}

/// Creates `name` with `partitions` partitions (replication min(3, brokers)) and waits until metadata
/// shows all partitions. Panics on failure (including "already exists").
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    create_topic_with(bootstrap, name, partitions, &[]).await
}

/// [`create_topic`] with topic configs (e.g. `("max.message.bytes", "1000")`).
pub async fn create_topic_with(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    config: &[(&str, &str)],
) {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap)
        .create()
        .expect("create AdminClient");
    let brokers = {
        let b = bootstrap.to_string();
        tokio::task::spawn_blocking(move || super::broker::broker_count(&b))
            .await
            .expect("broker count")
            .clamp(1, 3) as i32
    };
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(brokers));
    for (k, v) in config {
        topic = topic.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let res = admin
        .create_topics([&topic], &opts)
        .await
        .unwrap_or_else(|e| panic!("create_topics({name}) on {bootstrap}: {e}"));
    for r in res {
        if let Err((t, code)) = r {
            panic!("create topic {t} on {bootstrap}: {code:?}");
        }
    }
    let bootstrap = bootstrap.to_string();
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        let n = wait_partitions(&bootstrap, &name, Duration::from_secs(20));
        assert_eq!(
            n, partitions as usize,
            "topic {name} has {n} partitions, expected {partitions}"
        );
    })
    .await
    .expect("wait for topic metadata");
}

/// The node id leading `topic`'s `partition`, per metadata (blocking).
pub fn partition_leader(bootstrap: &str, topic: &str, partition: i32) -> Option<i32> {
    let consumer: BaseConsumer = client_config(bootstrap).create().ok()?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    let p = t.partitions().iter().find(|p| p.id() == partition)?;
    (p.leader() >= 0).then_some(p.leader())
}

/// Partition count of `topic` per broker metadata, or `None` if it doesn't exist (blocking).
pub fn partition_count(bootstrap: &str, topic: &str) -> Option<usize> {
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("create consumer for metadata");
    topic_partitions(&consumer, topic, Duration::from_secs(5)).map(|p| p.len())
}

fn topic_partitions(consumer: &BaseConsumer, topic: &str, timeout: Duration) -> Option<Vec<i32>> {
    let md = consumer.fetch_metadata(Some(topic), timeout).ok()?;
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    if t.error().is_some() || t.partitions().is_empty() {
        return None;
    }
    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    Some(ids)
}

/// Waits until `topic` exists; returns its partition count. Panics at the deadline.
fn wait_partitions(bootstrap: &str, topic: &str, deadline: Duration) -> usize {
    super::wait_for_blocking(
        &format!("topic {topic} in metadata of {bootstrap}"),
        deadline,
        Duration::from_millis(100),
        || partition_count(bootstrap, topic),
    )
}

/// Reads every partition of `topic` from offset 0 (no consumer group: partitions are
/// assigned) until `expected` records arrived or `deadline` passed, then returns what it got
/// (the caller asserts). Records are in per-partition offset order, partitions interleaved
/// as they arrived. Waits (within the deadline) for the topic to exist. Blocking: from async
/// code prefer [`read_all_async`].
pub fn read_all(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    deadline: Duration,
) -> Vec<Received> {
    read_inner(bootstrap, topic, deadline, READ_UNCOMMITTED, |got, _| {
        got.len() >= expected
    })
}

/// Like [`read_all`] but returns once no new record arrived for `quiet` (or `deadline`
/// passed). The quiet period starts when partitions are assigned.
pub fn read_until_quiet(
    bootstrap: &str,
    topic: &str,
    quiet: Duration,
    deadline: Duration,
) -> Vec<Received> {
    read_inner(bootstrap, topic, deadline, READ_UNCOMMITTED, |_, last| {
        last.elapsed() >= quiet
    })
}

/// [`read_all`] on the blocking thread pool.
pub async fn read_all_async(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    deadline: Duration,
) -> Vec<Received> {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || read_all(&b, &t, expected, deadline))
        .await
        .expect("read_all panicked")
}

/// [`read_until_quiet`] on the blocking thread pool.
pub async fn read_until_quiet_async(
    bootstrap: &str,
    topic: &str,
    quiet: Duration,
    deadline: Duration,
) -> Vec<Received> {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || read_until_quiet(&b, &t, quiet, deadline))
        .await
        .expect("read_until_quiet panicked")
}

const READ_UNCOMMITTED: &str = "read_uncommitted";

fn read_inner(
    bootstrap: &str,
    topic: &str,
    deadline: Duration,
    isolation: &str,
    mut done: impl FnMut(&[Received], Instant) -> bool,
) -> Vec<Received> {
    let end = Instant::now() + deadline;
    // librdkafka needs a group.id even for assign(); it is never joined or committed to.
    let group = format!("outbox-it-reader-{}", rand::random::<u64>());
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("allow.auto.create.topics", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .set("isolation.level", isolation)
        .create()
        .expect("create BaseConsumer");

    // Wait for the topic to exist (within the deadline).
    let partitions = loop {
        let left = end.saturating_duration_since(Instant::now());
        if let Some(p) = topic_partitions(&consumer, topic, left.min(Duration::from_secs(2))) {
            break p;
        }
        if Instant::now() >= end {
            return Vec::new();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .expect("add partition");
    }
    consumer.assign(&tpl).expect("assign partitions");

    let mut got = Vec::new();
    let mut last = Instant::now();
    while !done(&got, last) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        match consumer.poll((end - now).min(Duration::from_millis(100))) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                got.push(Received {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    headers,
                    timestamp: m.timestamp().to_millis(),
                });
                last = Instant::now();
            }
            Some(Err(e)) => eprintln!("[support] read {topic}: consumer error: {e}"),
            None => {}
        }
    }
    got
}

/// Reads every partition of `topic` from offset 0 until `done(records so far)` holds or
/// `deadline` passes; on the blocking thread pool.
pub async fn read_until_async(
    bootstrap: &str,
    topic: &str,
    deadline: Duration,
    mut done: impl FnMut(&[Received]) -> bool + Send + 'static,
) -> Vec<Received> {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        read_inner(&b, &t, deadline, READ_UNCOMMITTED, |got, _| done(got))
    })
    .await
    .expect("read_until panicked")
}

/// Like [`read_until_async`] as a `read_committed` consumer (what exactly-once
/// consumers run): records of aborted or still open transactions are never
/// returned. `done` also gets the time of the last record.
pub async fn read_committed_until_async(
    bootstrap: &str,
    topic: &str,
    deadline: Duration,
    done: impl FnMut(&[Received], Instant) -> bool + Send + 'static,
) -> Vec<Received> {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || read_inner(&b, &t, deadline, "read_committed", done))
        .await
        .expect("read_committed_until panicked")
}

//! Reading what is on the broker: a consumer that never joins a group or
//! commits, reads `read_committed`, and streams each topic's partitions from
//! a start offset to the end offsets taken before reading.
//!
//! Memory is bounded by librdkafka's pre-fetch queue, kept small here
//! (`queued.max.messages.kbytes`, `fetch.max.bytes`), not by the window: a
//! message is reduced to its position and relay headers as it arrives.
//!
//! Each topic is read by a consumer of its own: librdkafka's end-of-partition
//! event names the partition but not the topic, so a late one from the
//! previous topic must not be able to end a partition of the next.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::Config;
use crate::error::{RelayError, Result};
use crate::sink::kafka_config::ClientRole;

use super::ledger::{LsnTag, Relay};

/// Deadline of one metadata or offset request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The consumer's librdkafka configuration: how to reach and authenticate to
/// the cluster as every client of the relay does (the connection and
/// security settings of [`ClientRole::Admin`]), then what `verify` needs.
pub fn consumer_config(cfg: &Config) -> ClientConfig {
    let mut c = cfg.kafka.to_rdkafka(ClientRole::Admin);
    // Partitions are assigned, never subscribed: the group id is only a
    // name; nothing is committed.
    c.set("group.id", "outbox-relay-verify")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        // Bounded pre-fetch: memory must not grow with the window.
        .set("queued.max.messages.kbytes", "8192")
        .set("fetch.max.bytes", "4194304")
        .set("max.partition.fetch.bytes", "1048576");
    c
}

/// librdkafka's logs and errors into `tracing`; end-of-partition is no
/// error here (it is how a partition's end is found).
pub struct VerifyContext;

impl ClientContext for VerifyContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility = fac, "{log_message}")
            }
            _ => tracing::debug!(target: "librdkafka", facility = fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Also reported as a global error event, not only per partition.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
            || matches!(error, KafkaError::PartitionEOF(_))
        {
            tracing::debug!(target: "librdkafka", "{reason}");
        } else {
            tracing::warn!(target: "librdkafka", error = %error, "{reason}");
        }
    }
}

impl ConsumerContext for VerifyContext {}

/// The consumer `verify` uses.
pub type VerifyConsumer = StreamConsumer<VerifyContext>;

/// Create a consumer.
pub fn consumer(cfg: &Config) -> Result<VerifyConsumer> {
    consumer_config(cfg)
        .create_with_context(VerifyContext)
        .map_err(|e| RelayError::kafka("creating the verify consumer", e))
}

/// One partition's offsets to read: `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Partition.
    pub partition: i32,
    /// First offset to read.
    pub start: i64,
    /// End offset (exclusive) as of planning.
    pub end: i64,
}

/// What to read of one topic.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Topic name.
    pub topic: Arc<str>,
    /// Whether the broker knows the topic.
    pub exists: bool,
    /// Partitions in the topic.
    pub partitions: usize,
    /// Non-empty ranges to read.
    pub ranges: Vec<Range>,
}

impl Plan {
    /// Messages (offsets) to read in all.
    pub fn messages(&self) -> u64 {
        self.ranges.iter().map(|r| (r.end - r.start) as u64).sum()
    }
}

/// Plan one topic: every partition from the first offset at or after
/// `start_ms` (all of it when `None`) to the current end.
pub fn plan(consumer: &VerifyConsumer, topic: &str, start_ms: Option<i64>) -> Result<Plan> {
    let md = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| RelayError::kafka(format!("reading metadata of topic {topic}"), e))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(absent(topic));
    };
    if t.error().is_some() || t.partitions().is_empty() {
        return Ok(absent(topic));
    }
    let partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    let mut starts: HashMap<i32, i64> = HashMap::new();
    if let Some(ms) = start_ms {
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(topic, *p, Offset::Offset(ms))
                .map_err(|e| RelayError::kafka("building the offset request", e))?;
        }
        let found = consumer
            .offsets_for_times(tpl, REQUEST_TIMEOUT)
            .map_err(|e| RelayError::kafka(format!("finding offsets by time in {topic}"), e))?;
        for e in found.elements() {
            // `End`: no message at or after the time.
            let start = match e.offset() {
                Offset::Offset(o) => o,
                _ => i64::MAX,
            };
            starts.insert(e.partition(), start);
        }
    }
    let mut ranges = Vec::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, REQUEST_TIMEOUT)
            .map_err(|e| RelayError::kafka(format!("reading offsets of {topic}[{p}]"), e))?;
        let start = starts.get(p).copied().unwrap_or(low).max(low);
        if start < high {
            ranges.push(Range {
                partition: *p,
                start,
                end: high,
            });
        }
    }
    Ok(Plan {
        topic: Arc::from(topic),
        exists: true,
        partitions: partitions.len(),
        ranges,
    })
}

fn absent(topic: &str) -> Plan {
    Plan {
        topic: Arc::from(topic),
        exists: false,
        partitions: 0,
        ranges: Vec::new(),
    }
}

/// A message reduced to what the comparison needs.
#[derive(Debug, Clone, Copy)]
pub struct Msg {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Its relay headers.
    pub relay: Relay,
}

/// Streams one planned topic, with a consumer of its own.
pub struct Reader {
    consumer: VerifyConsumer,
    topic: Arc<str>,
    /// Partitions not yet read to their end, with that end.
    remaining: HashMap<i32, i64>,
}

impl Reader {
    /// Assign the plan's partitions at their start offsets.
    pub fn start(cfg: &Config, plan: &Plan) -> Result<Self> {
        let consumer = consumer(cfg)?;
        let mut tpl = TopicPartitionList::new();
        for r in &plan.ranges {
            tpl.add_partition_offset(&plan.topic, r.partition, Offset::Offset(r.start))
                .map_err(|e| RelayError::kafka("building the assignment", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| RelayError::kafka(format!("assigning {}", plan.topic), e))?;
        Ok(Self {
            consumer,
            topic: plan.topic.clone(),
            remaining: plan.ranges.iter().map(|r| (r.partition, r.end)).collect(),
        })
    }

    /// The next message of the plan; `None` once every partition reached
    /// its end (or, `read_committed`, the last stable offset). Fails when
    /// nothing arrives for `idle`.
    pub async fn next(&mut self, idle: Duration) -> Result<Option<Msg>> {
        loop {
            if self.remaining.is_empty() {
                return Ok(None);
            }
            let got = tokio::time::timeout(idle, self.consumer.recv()).await;
            let m = match got {
                Err(_) => {
                    let mut parts: Vec<_> = self.remaining.keys().copied().collect();
                    parts.sort_unstable();
                    return Err(RelayError::Timeout(format!(
                        "the broker sent nothing from {} partitions {parts:?} for {idle:?}",
                        self.topic
                    )));
                }
                // Only this topic is assigned to this consumer.
                Ok(Err(KafkaError::PartitionEOF(p))) => {
                    self.remaining.remove(&p);
                    continue;
                }
                Ok(Err(e)) => {
                    return Err(RelayError::kafka(format!("reading {}", self.topic), e));
                }
                Ok(Ok(m)) => m,
            };
            if m.topic() != &*self.topic {
                continue;
            }
            let (partition, offset) = (m.partition(), m.offset());
            let Some(&end) = self.remaining.get(&partition) else {
                continue;
            };
            if offset + 1 >= end {
                self.remaining.remove(&partition);
                if offset >= end {
                    continue;
                }
            }
            let mut relay = Relay {
                id: None,
                lsn: None,
            };
            if let Some(h) = m.headers() {
                for h in h.iter() {
                    match (h.key, h.value) {
                        ("id", Some(v)) if relay.id.is_none() => {
                            relay.id = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
                        }
                        ("lsn", Some(v)) if relay.lsn.is_none() => relay.lsn = LsnTag::parse(v),
                        _ => {}
                    }
                }
            }
            return Ok(Some(Msg {
                partition,
                offset,
                relay,
            }));
        }
    }
}

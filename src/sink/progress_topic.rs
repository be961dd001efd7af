//! The exactly-once resume position: a progress record on a
//! single-partition compacted topic (`kafka.progress-topic`), written as the
//! last message of every Kafka transaction, so it commits atomically with
//! the messages it covers (invariant 9).
//!
//! The record, JSON keyed by the transactional id (one topic serves many
//! relays; compaction keeps the newest per key):
//!
//! ```json
//! {"v":1,"commit_lsn":"0/16B3700","index":2500,"end_lsn":null,"epoch":7}
//! ```
//!
//! * `commit_lsn` — the PostgreSQL transaction the Kafka transaction ended in
//!   (where its commit record starts).
//! * `end_lsn` — set when that transaction was published whole: resume at
//!   `end_lsn` and skip commits strictly below it (invariant 2's rule).
//!   `null` when the Kafka transaction ended inside it (a split): resume at
//!   `commit_lsn` and skip the first `index` inserts of that transaction —
//!   pgoutput sends a transaction identically every time, so the index names
//!   the same row.
//! * `epoch` — one more than the epoch read at startup: which relay session
//!   wrote it (for operators and tests; resume does not need it).
//! * `failed` — (only when not empty) dead-lettered rows not yet marked
//!   FAILED in PostgreSQL.
//!
//! Reading it (Materialize's sink does the same): ask the high watermark
//! first, then scan the partition from the start with `read_committed`
//! until the consumer's position reaches that watermark, keeping the newest
//! record of our key. Offsets alone say nothing — commit markers and aborted
//! records take offsets too — and a record of a transaction still open (ours
//! was just aborted by `init_transactions`; another relay's may be) is not
//! past the last stable offset yet: the scan waits for it.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, DefaultConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{RelayError, Result};
use crate::sink::kafka_config::ClientRole;
use crate::sink::message::{format_lsn, parse_lsn};

/// The record's format version.
pub const VERSION: u32 = 1;

/// One progress record (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressRecord {
    /// Format version ([`VERSION`]).
    pub v: u32,
    /// Commit LSN of the PostgreSQL transaction the Kafka transaction ended in.
    pub commit_lsn: String,
    /// Inserts of that transaction published so far.
    pub index: u64,
    /// Its end LSN when it was published whole; `None` for a split.
    pub end_lsn: Option<String>,
    /// The writing session's epoch.
    pub epoch: u64,
    /// Rows dead-lettered in this or an earlier committed transaction and
    /// not yet marked FAILED in PostgreSQL, as (id, attempts): the marks
    /// happen after the commit, so a crash in between must not lose them —
    /// the next session marks these first (idempotent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<(i64, i32)>,
}

/// Where a session resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resume {
    /// Where to start the stream; commits strictly below were published.
    pub lsn: u64,
    /// Inserts to skip of the transaction whose commit LSN is `lsn` (a
    /// split); 0 otherwise.
    pub skip: u64,
    /// The epoch of the record resumed from (0: none).
    pub epoch: u64,
}

impl ProgressRecord {
    /// A record for a Kafka transaction that ended after `index` inserts of
    /// the transaction committed at `commit_lsn`, whole when `end_lsn` is set.
    pub fn new(commit_lsn: u64, index: u64, end_lsn: Option<u64>, epoch: u64) -> Self {
        Self {
            v: VERSION,
            commit_lsn: format_lsn(commit_lsn),
            index,
            end_lsn: end_lsn.map(format_lsn),
            epoch,
            failed: Vec::new(),
        }
    }

    /// The record that stands for `r` (the inverse of [`Self::resume`]).
    pub fn of_resume(r: Resume) -> Self {
        match r.skip {
            0 => Self::new(r.lsn, 0, Some(r.lsn), r.epoch),
            skip => Self::new(r.lsn, skip, None, r.epoch),
        }
    }

    /// The resume position it stands for.
    pub fn resume(&self) -> Result<Resume> {
        let bad = |what: &str| {
            RelayError::Environment(format!(
                "kafka.progress-topic holds a progress record with {what}: {self:?}"
            ))
        };
        if self.v != VERSION {
            return Err(bad("an unknown format version"));
        }
        let commit = parse_lsn(&self.commit_lsn).ok_or_else(|| bad("a bad commit_lsn"))?;
        Ok(match &self.end_lsn {
            Some(e) => Resume {
                lsn: parse_lsn(e).ok_or_else(|| bad("a bad end_lsn"))?,
                skip: 0,
                epoch: self.epoch,
            },
            None => Resume {
                lsn: commit,
                skip: self.index,
                epoch: self.epoch,
            },
        })
    }

    /// The JSON value.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a progress record serializes")
    }
}

/// How long a starting session keeps asking for a progress topic the
/// metadata does not show yet before it says the topic does not exist.
const MISSING_TOPIC_GRACE: Duration = Duration::from_secs(10);

/// The newest committed progress record keyed `key` (blocking: run it off
/// the async workers). `None` when there is none yet. A read that cannot
/// reach the high watermark within `deadline` is an error: a session must
/// not start from anything but the newest record.
pub fn read_last(cfg: &Config, key: &str, deadline: Duration) -> Result<Option<ProgressRecord>> {
    let read = read_last_with(
        cfg,
        key,
        deadline,
        MISSING_TOPIC_GRACE,
        DefaultConsumerContext,
    )?;
    match read.stopped {
        None => Ok(read.record),
        Some(s) => Err(RelayError::Timeout(format!(
            "reading kafka.progress-topic {}: stopped at offset {} of {}, where a Kafka \
             transaction is still open (one a relay sharing the topic left when it was killed \
             is aborted by the broker after transaction.timeout.ms); retrying",
            cfg.kafka.progress_topic, s.offset, s.high_watermark
        ))),
    }
}

/// What a read of the progress topic found.
#[derive(Debug, Clone, PartialEq)]
pub struct LastRead {
    /// The newest committed record of the key among the offsets read.
    pub record: Option<ProgressRecord>,
    /// Set when the read did not reach the high watermark in time.
    pub stopped: Option<Stopped>,
}

/// Where a read stopped short. A `read_committed` reader gets nothing at or
/// past the first offset of a Kafka transaction still open — one a relay
/// killed mid-transaction left behind holds it until the next session's
/// `init_transactions` or the transaction timeout aborts it — so `record`
/// is then the newest *committed* one, unless another transactional id's
/// open transaction holds back newer records of this key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Stopped {
    /// The first offset not read.
    pub offset: i64,
    /// The high watermark the read aimed for.
    pub high_watermark: i64,
}

/// [`read_last`] with a client context of the caller's and its own patience
/// for a topic the metadata does not show (`missing_grace`): `status` passes
/// a context that keeps librdkafka's connection errors off stderr, where a
/// broker that is down would print dozens of lines its one-line reason
/// already gives, and no grace — it reports what the cluster serves now.
pub fn read_last_with<C: ConsumerContext + Clone + 'static>(
    cfg: &Config,
    key: &str,
    deadline: Duration,
    missing_grace: Duration,
    context: C,
) -> Result<LastRead> {
    let topic = cfg.kafka.progress_topic.as_str();
    let end = Instant::now() + deadline;
    // Every broker request waits at most what is left of the deadline (and
    // 10 s each), so a caller with a short one (`status`) gets its answer
    // in time when the broker is down.
    let left = || {
        end.saturating_duration_since(Instant::now())
            .min(Duration::from_secs(10))
    };
    let mut cc = cfg.kafka.to_rdkafka(ClientRole::Admin);
    cc.set(
        "group.id",
        format!("outbox-relay-progress-{}", std::process::id()),
    )
    .set("isolation.level", "read_committed")
    .set("enable.auto.commit", "false")
    .set("enable.auto.offset.store", "false")
    .set("enable.partition.eof", "true")
    .set("auto.offset.reset", "earliest")
    .set("allow.auto.create.topics", "false")
    .set("fetch.wait.max.ms", "50");
    let consumer: BaseConsumer<C> = cc.create_with_context(context.clone()).map_err(|e| {
        crate::sink::kafka_config::creation_error(e, "creating the progress reader")
    })?;
    let kafka = |what: &str, e: KafkaError| RelayError::kafka(format!("{what} {topic}"), e);
    // A topic created a moment ago (by `init`, or by `ensure` in this
    // session) is in the controller's metadata before every broker serves
    // it: on a busy cluster that takes seconds. Ask again for a while before
    // calling it missing.
    let missing_until = Instant::now() + missing_grace.min(deadline);
    let partitions = loop {
        let md = consumer
            .fetch_metadata(Some(topic), left())
            .map_err(|e| kafka("metadata of the progress topic", e))?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if n > 0 || Instant::now() >= missing_until {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    match partitions {
        1 => {}
        0 => {
            return Err(RelayError::Environment(format!(
                "kafka.progress-topic: topic {topic} does not exist: run `outbox-relay init` \
                 (or set kafka.create-topics = true)"
            )))
        }
        n => {
            return Err(RelayError::Environment(format!(
                "kafka.progress-topic: topic {topic} has {n} partitions; it must have exactly 1 \
                 (the newest record must be the last one)"
            )))
        }
    }
    // The end to read to is the high watermark, not the last stable offset
    // a `read_committed` client is told (librdkafka asks ListOffsets with
    // the client's isolation level): the topic is shared by every relay's
    // transactional id, and another one's open transaction would hide our
    // newer committed records behind it — resuming from an older record
    // re-publishes what is committed. So ask with a `read_uncommitted`
    // client, and read committed records until past it: an open transaction
    // below it is waited out (it commits, or the coordinator aborts it at
    // `transaction.timeout.ms`).
    let mut hw = cfg.kafka.to_rdkafka(ClientRole::Admin);
    hw.set("group.id", "outbox-relay-progress-watermark")
        .set("isolation.level", "read_uncommitted");
    let hw: BaseConsumer<C> = hw.create_with_context(context.clone()).map_err(|e| {
        crate::sink::kafka_config::creation_error(e, "creating the progress reader")
    })?;
    let (low, high) = hw
        .fetch_watermarks(topic, 0, left())
        .map_err(|e| kafka("watermarks of the progress topic", e))?;
    drop(hw);
    let done = |record| {
        Ok(LastRead {
            record,
            stopped: None,
        })
    };
    if high <= low {
        return done(None);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .map_err(|e| kafka("assigning the progress topic", e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| kafka("assigning the progress topic", e))?;
    let mut last: Option<ProgressRecord> = None;
    let mut read_to = low;
    loop {
        if Instant::now() >= end {
            return Ok(LastRead {
                record: last,
                stopped: Some(Stopped {
                    offset: read_to,
                    high_watermark: high,
                }),
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if m.key() == Some(key.as_bytes()) {
                    if let Some(p) = m.payload() {
                        let rec: ProgressRecord = serde_json::from_slice(p).map_err(|e| {
                            RelayError::Environment(format!(
                                "kafka.progress-topic {topic}: unreadable progress record at \
                                 offset {}: {e}",
                                m.offset()
                            ))
                        })?;
                        last = Some(rec);
                    }
                }
                read_to = m.offset() + 1;
                if read_to >= high {
                    return done(last);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {
                let pos = consumer
                    .position()
                    .ok()
                    .and_then(|t| t.find_partition(topic, 0).and_then(|p| p.offset().to_raw()));
                if let Some(p) = pos {
                    read_to = read_to.max(p);
                }
                if read_to >= high {
                    return done(last);
                }
            }
            Some(Err(e)) => return Err(kafka("reading the progress topic", e)),
            None => {}
        }
    }
}

/// `segment.ms` of a progress topic the relay creates (1 hour).
pub const PROGRESS_SEGMENT_MS: &str = "3600000";
/// `segment.bytes` of a progress topic the relay creates (16 MiB).
pub const PROGRESS_SEGMENT_BYTES: &str = "16777216";

/// Create the progress topic if it is missing: one partition, compacted
/// with short segments ([`PROGRESS_SEGMENT_MS`], [`PROGRESS_SEGMENT_BYTES`]),
/// replicated like the relay's own topics (factor min(3, brokers) unless
/// `kafka.topic-replication-factor` says otherwise, `min.insync.replicas`
/// min(2, factor)).
pub async fn ensure(cfg: &Config) -> Result<()> {
    let topic = &cfg.kafka.progress_topic;
    let admin: AdminClient<DefaultClientContext> = cfg
        .kafka
        .to_rdkafka(ClientRole::Admin)
        .create()
        .map_err(|e| RelayError::kafka("creating admin client", e))?;
    let mut rf = cfg.kafka.topic_replication_factor;
    if rf <= 0 {
        let md = crate::sink::producer::blocking(|| {
            admin
                .inner()
                .fetch_metadata(None, Duration::from_secs(10))
                .map_err(|e| RelayError::kafka("asking the cluster for its brokers", e))
        })?;
        rf = (md.brokers().len() as i32).clamp(1, 3);
    }
    let isr = rf.min(2).to_string();
    // A relay reads this topic from its start on every session start, and
    // compaction never touches the active segment: with Kafka's default
    // segments (1 GiB, 7 days) that scan would grow by ~10 records a second
    // per relay for days. Hourly (or 16 MiB) segments keep it to about an
    // hour of records once compacted.
    let nt = NewTopic::new(topic, 1, TopicReplication::Fixed(rf))
        .set("cleanup.policy", "compact")
        .set("segment.ms", PROGRESS_SEGMENT_MS)
        .set("segment.bytes", PROGRESS_SEGMENT_BYTES)
        .set("min.insync.replicas", &isr);
    let res = admin
        .create_topics(
            &[nt],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .map_err(|e| RelayError::kafka(format!("creating progress topic {topic}"), e))?;
    for r in res {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(RelayError::kafka(
                    format!("creating progress topic {t} (kafka.progress-topic)"),
                    KafkaError::AdminOp(code),
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_position_round_trips_through_its_record() {
        for r in [
            Resume {
                lsn: 0x1_6B37_4D48,
                skip: 0,
                epoch: 3,
            },
            Resume {
                lsn: 0x1_6B37_4D48,
                skip: 250,
                epoch: 4,
            },
        ] {
            assert_eq!(ProgressRecord::of_resume(r).resume().unwrap(), r);
        }
    }

    #[test]
    fn a_whole_transaction_resumes_at_its_end_a_split_one_at_its_commit() {
        let whole = ProgressRecord::new(0x100, 3, Some(0x180), 2);
        assert_eq!(
            whole.resume().unwrap(),
            Resume {
                lsn: 0x180,
                skip: 0,
                epoch: 2
            }
        );
        let split = ProgressRecord::new(0x100, 2500, None, 3);
        assert_eq!(
            split.resume().unwrap(),
            Resume {
                lsn: 0x100,
                skip: 2500,
                epoch: 3
            }
        );
        let json = String::from_utf8(split.to_json()).unwrap();
        assert!(json.contains("\"v\":1"), "{json}");
        let back: ProgressRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, split);
    }

    #[test]
    fn an_unknown_version_is_refused() {
        let mut r = ProgressRecord::new(1, 0, Some(2), 1);
        r.v = 9;
        assert!(r.resume().is_err());
    }
}

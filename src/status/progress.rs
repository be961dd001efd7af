//! The exactly-once part of `status`: the last committed progress record of
//! this relay's transactional id, read from `kafka.progress-topic` the way
//! a session start reads it ([`progress_topic::read_last`]), within
//! [`READ_DEADLINE`].
//!
//! Why `status` reads Kafka at all in this mode: the resume position lives
//! in the progress record, which commits in the same Kafka transaction as
//! the messages it covers (invariant 9). The checkpoint table and the slot
//! are written only after that commit returned, so they trail it — by a
//! checkpoint interval while the relay runs, by more if it crashed between
//! the commit and the table write. Showing only the table would understate
//! what is published and overstate the lag.
//!
//! **Lag bytes** in this mode count from the greatest of the positions the
//! relay has proven ([`Status::handled_lsn`]), not from the progress record
//! alone. Each of them bounds what is left to publish from below:
//!
//! * the progress record's resume position — every insert before it is in a
//!   committed Kafka transaction; this is where the next session starts;
//! * the checkpoint — written only after the Kafka commit that covered it,
//!   and it can be *ahead* of the record: PostgreSQL transactions without
//!   outbox rows that end while no Kafka transaction is open advance it
//!   without a new record (nothing of them is in flight);
//! * the slot's `confirmed_flush_lsn` — confirmed only after the table, or
//!   at an idle keepalive with nothing in flight; and PostgreSQL never sends
//!   a session anything below it, so a progress record older than the slot
//!   (e.g. left from an earlier exactly-once period) cannot move the real
//!   resume point back.
//!
//! So the record is the truth for *where the relay resumes*, and the
//! maximum is the truth for *what is already handled*; reading the record
//! can only raise the handled position, never lower it.
//!
//! **Checkpoint trails** is the resume position minus the checkpoint LSN,
//! 0 when the checkpoint is ahead or equal (the row-free case above). A
//! growing trail with a running relay means the table writes fail or stall
//! (the janitor marks rows only up to the table's position).
//!
//! Bounded and optional: `status` still needs no broker. When the broker
//! cannot be reached within the deadline, the topic is missing, the record
//! cannot be parsed or `kafka.brokers` is not set, the part says so in one
//! line (`progress: unavailable (<reason>)`; `available: false` and
//! `unavailable_reason` in JSON) and everything read from PostgreSQL is
//! shown as usual, with the same exit code. In at-least-once mode this
//! module is not used and no broker connection is made.

use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use serde::Serialize;

use super::{Status, NO_BROKERS};
use crate::config::Config;
use crate::sink::message::parse_lsn;
use crate::sink::progress_topic::{self, LastRead, ProgressRecord, Stopped};
use crate::sink::transactional::transactional_id;

/// How long `status` waits for the progress record: a few seconds, enough
/// for a healthy broker to answer metadata, watermarks and a scan of the
/// (compacted, short-segmented) progress topic; short enough that an
/// operator with the broker down gets the PostgreSQL part promptly.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);

/// The progress part of the status (exactly-once mode only).
#[derive(Debug, Clone, Serialize)]
pub struct ProgressStatus {
    /// `kafka.progress-topic`.
    pub topic: String,
    /// The record's key: this relay's transactional id.
    pub key: String,
    /// Whether the topic was read; when false, `unavailable_reason` says why
    /// and the rest of the status comes from PostgreSQL alone.
    pub available: bool,
    /// Why the record is missing (`None` when the topic was read).
    pub unavailable_reason: Option<String>,
    /// The last committed record; `None` when unavailable, or when the
    /// topic holds none for this key yet (the first exactly-once session
    /// then starts from the checkpoint table).
    pub record: Option<ProgressView>,
    /// Set when the read stopped short of the high watermark: a Kafka
    /// transaction still open (e.g. left by a relay killed mid-transaction)
    /// holds a `read_committed` reader back, so `record` is the newest one
    /// before that offset (see [`Stopped`]).
    pub stopped_at: Option<Stopped>,
}

/// The last committed progress record, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProgressView {
    /// The PostgreSQL transaction the last Kafka transaction ended in.
    pub commit_lsn: String,
    /// Inserts of that transaction already published (a split
    /// transaction resumes after them).
    pub index: u64,
    /// Its end LSN when it was published whole; `None` for a split.
    pub end_lsn: Option<String>,
    /// The session that wrote it.
    pub epoch: u64,
    /// Where the next session starts: `end_lsn` when whole, else
    /// `commit_lsn` (skipping `index` inserts).
    pub resume_lsn: String,
    /// Dead-lettered rows carried in the record, not yet marked FAILED.
    pub unmarked_failed_rows: usize,
    /// WAL bytes by which the checkpoint table trails `resume_lsn`; 0 when
    /// it is ahead or equal; `None` without a checkpoint row.
    pub checkpoint_trails_bytes: Option<u64>,
    /// `resume_lsn` as a number, for the lag.
    #[serde(skip)]
    resume: u64,
}

impl ProgressStatus {
    fn new(cfg: &Config) -> Self {
        Self {
            topic: cfg.kafka.progress_topic.clone(),
            key: transactional_id(cfg),
            available: false,
            unavailable_reason: None,
            record: None,
            stopped_at: None,
        }
    }

    /// The record could not be read, because `reason`.
    pub fn unavailable(mut self, reason: impl Into<String>) -> Self {
        self.available = false;
        self.unavailable_reason = Some(reason.into().replace('\n', " "));
        self.record = None;
        self.stopped_at = None;
        self
    }

    /// The topic was read up to `stopped` only; `record` is the last one of
    /// our key before it.
    pub fn read_until(mut self, record: Option<&ProgressRecord>, stopped: Stopped) -> Self {
        self = self.read_as(record);
        if self.available {
            self.stopped_at = Some(stopped);
        }
        self
    }

    /// The topic was read; `record` is the last one of our key, if any.
    pub fn read_as(mut self, record: Option<&ProgressRecord>) -> Self {
        let view = match record.map(|r| (r, r.resume())) {
            None => None,
            Some((_, Err(e))) => return self.unavailable(e.to_string()),
            Some((r, Ok(resume))) => Some(ProgressView {
                commit_lsn: r.commit_lsn.clone(),
                index: r.index,
                end_lsn: r.end_lsn.clone(),
                epoch: r.epoch,
                resume_lsn: crate::sink::message::format_lsn(resume.lsn),
                unmarked_failed_rows: r.failed.len(),
                checkpoint_trails_bytes: None,
                resume: resume.lsn,
            }),
        };
        self.available = true;
        self.unavailable_reason = None;
        self.record = view;
        self
    }
}

/// Read the progress record of this relay (never fails: a failure is an
/// unavailable part with its reason).
pub async fn read(cfg: &Config, deadline: Duration) -> ProgressStatus {
    let part = ProgressStatus::new(cfg);
    if cfg.kafka.brokers.as_deref().is_none_or(|b| b == NO_BROKERS) {
        return part.unavailable("kafka.brokers is not set");
    }
    let (cfg2, key) = (cfg.clone(), part.key.clone());
    let got = tokio::task::spawn_blocking(move || {
        progress_topic::read_last_with(&cfg2, &key, deadline, Duration::ZERO, Quiet)
    })
    .await;
    match got {
        Err(e) => part.unavailable(format!("the progress reader failed: {e}")),
        Ok(Err(e)) => part.unavailable(e.to_string()),
        Ok(Ok(LastRead {
            record,
            stopped: None,
        })) => part.read_as(record.as_ref()),
        Ok(Ok(LastRead {
            record,
            stopped: Some(at),
        })) => part.read_until(record.as_ref(), at),
    }
}

/// librdkafka's logs and error callbacks at debug level only: with the
/// broker down they come by the dozen on every `status` call, and the
/// unavailable reason already says what failed, once (`OUTBOX_RELAY_LOG=debug`
/// shows them).
#[derive(Clone)]
struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, _level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(target: "librdkafka", facility = fac, "{log_message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", error = %error, "{reason}");
    }
}

impl ConsumerContext for Quiet {}

/// Add the progress part to `status`: the checkpoint's trail behind it,
/// and the lag counted from the greatest proven position (module docs).
pub fn attach(status: &mut Status, mut part: ProgressStatus) {
    let checkpoint = status.checkpoint.as_ref().and_then(|c| parse_lsn(&c.lsn));
    let resume = part.record.as_ref().map(|r| r.resume);
    if let Some(r) = part.record.as_mut() {
        r.checkpoint_trails_bytes = checkpoint.map(|c| r.resume.saturating_sub(c));
    }
    status.lag.bytes = status.lag_bytes(resume);
    status.progress = Some(part);
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::tests::{checkpoint, sample};
    use super::*;

    /// A progress part not read yet (also for the rendering tests).
    pub(in crate::status) fn part() -> ProgressStatus {
        ProgressStatus {
            topic: "outbox-relay.progress".into(),
            key: "outbox-relay.app.outbox_relay".into(),
            available: false,
            unavailable_reason: None,
            record: None,
            stopped_at: None,
        }
    }

    #[test]
    fn a_record_past_the_checkpoint_shows_the_trail_and_lowers_the_lag() {
        let mut s = sample(None);
        s.checkpoint = Some(checkpoint("0/1000000"));
        let rec = ProgressRecord::new(0x17F_FF00, 12, Some(0x180_0000), 7);
        attach(&mut s, part().read_as(Some(&rec)));
        let p = s.progress.as_ref().unwrap();
        let r = p.record.as_ref().unwrap();
        assert!(p.available);
        assert_eq!(
            (r.commit_lsn.as_str(), r.index, r.epoch),
            ("0/17FFF00", 12, 7)
        );
        assert_eq!(r.resume_lsn, "0/1800000");
        assert_eq!(r.checkpoint_trails_bytes, Some(0x80_0000));
        assert_eq!(s.lag.bytes, Some(0x80_0000));
    }

    #[test]
    fn a_split_resumes_at_its_commit_and_a_checkpoint_ahead_trails_by_zero() {
        let mut s = sample(None);
        s.checkpoint = Some(checkpoint("0/1000000"));
        let rec = ProgressRecord::new(0x80_0000, 2500, None, 3);
        attach(&mut s, part().read_as(Some(&rec)));
        let r = s.progress.as_ref().unwrap().record.as_ref().unwrap();
        assert_eq!(r.resume_lsn, "0/800000");
        assert_eq!(r.checkpoint_trails_bytes, Some(0));
        // The checkpoint, ahead, still counts for the lag.
        assert_eq!(s.lag.bytes, Some(0x100_0000));
    }

    #[test]
    fn unavailable_keeps_the_postgres_lag_and_says_why_in_json() {
        let mut s = sample(None);
        s.checkpoint = Some(checkpoint("0/1000000"));
        s.lag.bytes = s.lag_bytes(None);
        attach(&mut s, part().unavailable("broker down\nsecond line"));
        assert_eq!(s.lag.bytes, Some(0x100_0000));
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["progress"]["available"], false, "{v}");
        assert_eq!(
            v["progress"]["unavailable_reason"],
            "broker down second line"
        );
        assert!(v["progress"]["record"].is_null());
    }

    #[test]
    fn an_unreadable_record_is_unavailable() {
        let mut rec = ProgressRecord::new(1, 0, Some(2), 1);
        rec.v = 9;
        let p = part().read_as(Some(&rec));
        assert!(!p.available);
        assert!(
            p.unavailable_reason.as_deref().unwrap().contains("version"),
            "{p:?}"
        );
    }

    #[tokio::test]
    async fn no_brokers_configured_means_unavailable_without_dialling() {
        let mut cfg = Config::default();
        cfg.kafka.brokers = Some(NO_BROKERS.into());
        let p = read(&cfg, Duration::from_millis(1)).await;
        assert_eq!(
            p.unavailable_reason.as_deref(),
            Some("kafka.brokers is not set")
        );
    }
}

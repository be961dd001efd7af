//! Sending into the open Kafka transaction: records, rows the ledger knows
//! (alone in a transaction of their own, or their DLQ copy once their
//! attempts are spent), DLQ copies. A full producer queue waits a moment.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{OpenTxn, TxnSession};
use crate::dead_letter::{self, Reason};
use crate::decode::OutboxRecord;
use crate::error::{ErrorClass, RelayError, Result};
use crate::ports::{EventStream, PgBookkeeping};
use crate::sink::message::TxnMeta;
use crate::sink::progress_topic::ProgressRecord;
use crate::sink::{Delivery, MsgTag, SendError};

impl TxnSession<'_> {
    /// Publish one record into the open Kafka transaction (opening one).
    /// A row the ledger knows goes alone in a transaction of its own, or —
    /// its attempts spent — as its DLQ copy.
    pub(super) async fn publish<S: EventStream>(
        &mut self,
        rec: &OutboxRecord,
        meta: &TxnMeta,
        topic: &str,
        stream: &mut S,
        book: &PgBookkeeping,
        reports: &mut mpsc::UnboundedReceiver<Delivery>,
    ) -> Result<()> {
        if let Some(err) = self.sink.publisher.topic_refusal(topic).await? {
            // A missing or forbidden topic is this row's own refusal: an
            // attempt; once they are spent the DLQ copy goes instead.
            self.note_refusal(rec.id, &err.message, false);
            let r = self.stats.refusals.get_mut(&rec.id).expect("noted");
            r.attempts += 1;
            if r.attempts < self.cfg.relay.max_retry {
                return Err(RelayError::sink(
                    format!("outbox row id={}: topic {topic} refused", rec.id),
                    err,
                ));
            }
        }
        if let Some(r) = self.stats.refusals.get(&rec.id).cloned() {
            if r.attempts >= self.cfg.relay.max_retry {
                let reason = Reason {
                    class: "permanent",
                    message: r.error.clone(),
                    original_topic: topic.to_string(),
                    attempts: r.attempts,
                    first_failure: r.first_failure,
                    drop_value: r.too_large,
                };
                tracing::warn!(
                    row_id = rec.id,
                    attempts = r.attempts,
                    "outbox row refused {} times: dead-lettered",
                    r.attempts
                );
                let dl = dead_letter::from_record(rec, meta, &reason);
                return self.send_dead_letter(dl, r.attempts).await;
            }
            // Alone: commit what is before it (a split at this insert).
            if self.open.is_some() {
                self.commit_split_before_current(stream, book, reports)
                    .await?;
            }
            self.ensure_open()?;
            if let Some(o) = self.open.as_mut() {
                o.alone = Some(rec.id);
            }
            self.send_record(rec, meta, topic).await?;
            // Commit it alone, now: its refusal would be its own.
            self.commit_split(stream, book, reports).await?;
            self.stats.refusals.remove(&rec.id);
            return Ok(());
        }
        self.ensure_open()?;
        self.send_record(rec, meta, topic).await
    }

    fn note_refusal(&mut self, id: i64, error: &str, too_large: bool) {
        let r = self
            .stats
            .refusals
            .entry(id)
            .or_insert_with(|| crate::relay::Refusal {
                attempts: 0,
                first_failure: std::time::SystemTime::now(),
                error: String::new(),
                too_large: false,
            });
        r.error = error.to_string();
        r.too_large |= too_large;
    }

    async fn send_record(&mut self, rec: &OutboxRecord, meta: &TxnMeta, topic: &str) -> Result<()> {
        let mut tag = MsgTag::first(0, rec.id, meta.commit_unix_millis);
        let bytes = rec.payload.len()
            + rec.aggregate_id.len()
            + rec
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        tag.bytes = bytes;
        loop {
            match self.sink.publisher.send(rec, meta, topic, tag) {
                Ok(()) => break,
                Err((SendError::QueueFull, t)) => {
                    tag = t;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((SendError::Refused(e), _)) => {
                    if e.class == ErrorClass::Permanent {
                        // librdkafka refused it locally (e.g. over
                        // message.max.bytes): the row's own refusal.
                        self.note_refusal(rec.id, &e.message, e.too_large);
                        if let Some(r) = self.stats.refusals.get_mut(&rec.id) {
                            r.attempts += 1;
                        }
                    }
                    return Err(RelayError::sink(
                        format!("producing outbox row id={}", rec.id),
                        e,
                    ));
                }
            }
        }
        let o = self.open.as_mut().expect("a transaction is open");
        o.msgs += 1;
        o.bytes += bytes;
        *o.per_topic.entry(topic.to_string()).or_insert(0) += 1;
        if let Some(cur) = self.cur.as_mut() {
            cur.rows += 1;
        }
        Ok(())
    }

    /// Enqueue a DLQ copy into the open transaction (opening one).
    pub(super) async fn send_dead_letter(
        &mut self,
        dl: dead_letter::DeadLetter,
        attempts: u32,
    ) -> Result<()> {
        self.ensure_open()?;
        let row_id = dl.row_id.unwrap_or(0);
        let mut tag = MsgTag::first(0, row_id, dl.timestamp_ms);
        tag.is_dlq = true;
        let topic = self.cfg.kafka.dlq_topic.clone();
        loop {
            match self.sink.publisher.send_raw(
                &topic,
                dl.key.as_deref(),
                dl.value.as_deref(),
                &dl.headers,
                dl.timestamp_ms,
                tag,
            ) {
                Ok(()) => break,
                Err((SendError::QueueFull, t)) => {
                    tag = t;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((SendError::Refused(e), _)) => {
                    return Err(RelayError::sink(
                        format!("dead-letter write for outbox row id={row_id} failed; stalling"),
                        e,
                    ))
                }
            }
        }
        let o = self.open.as_mut().expect("a transaction is open");
        o.msgs += 1;
        if row_id != 0 {
            o.failed
                .push((row_id, i32::try_from(attempts).unwrap_or(i32::MAX)));
        }
        if let Some(cur) = self.cur.as_mut() {
            cur.rows += 1;
        }
        Ok(())
    }

    /// Begin a Kafka transaction unless one is open.
    fn ensure_open(&mut self) -> Result<()> {
        if self.open.is_none() {
            self.sink.begin()?;
            // A first progress record, holding the last committed position:
            // librdkafka registers the progress partition with the
            // transaction now, together with the first data partition,
            // instead of one more AddPartitionsToTxn round trip inside the
            // commit. The commit's own record always follows it, so it is
            // never the last one of a committed transaction.
            let mut placeholder = self.committed.clone();
            placeholder.failed = self.failed_rows.clone();
            self.sink
                .send_progress(&placeholder, MsgTag::first(0, 0, 0))?;
            self.open = Some(OpenTxn {
                began: self.began(),
                msgs: 0,
                bytes: 0,
                per_topic: HashMap::new(),
                failed: Vec::new(),
                alone: None,
                boundary: None,
            });
        }
        Ok(())
    }

    /// The progress record for a split after the current insert.
    pub(super) fn split_record(&self, before_current: bool) -> Option<ProgressRecord> {
        let cur = self.cur.as_ref()?;
        let index = cur.inserts - u64::from(before_current);
        Some(ProgressRecord::new(cur.commit_lsn, index, None, self.epoch))
    }
}

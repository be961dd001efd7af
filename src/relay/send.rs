//! Enqueueing: records (pipelined, or held to be sent alone), prepared
//! messages, and the policy's effects. A full producer queue waits for one
//! delivery report; a local refusal is the row's own.

use std::time::Duration;

use tokio::time::Instant;

use super::policy::Effect;
use super::{bounded, Session};
use crate::decode::OutboxRecord;
use crate::error::{ErrorClass, RelayError, Result};
use crate::ports::{Bookkeeping, MessageSink, TopicState};
use crate::sink::classify::SinkError;
use crate::sink::message::TxnMeta;
use crate::sink::{FailedMessage, MsgTag, SendError};

impl Session<'_> {
    /// Carry out what the policy decided.
    pub(super) async fn apply<K: MessageSink, B: Bookkeeping>(
        &mut self,
        effects: Vec<Effect>,
        sink: &mut K,
        book: &B,
    ) -> Result<()> {
        for effect in effects {
            match effect {
                Effect::Release(txn) => self.progress.acked(txn),
                Effect::CheckRow(id) => {
                    let t = self.cfg.postgres.connect_timeout;
                    let exists =
                        bounded(t, "checking the blocked row", book.row_exists(id)).await?;
                    let more = self.policy.row_checked(exists);
                    Box::pin(self.apply(more, sink, book)).await?;
                }
                Effect::Send(msg, tag) => {
                    let state = if tag.isolated {
                        sink.check_topic(&msg.topic).await?
                    } else {
                        TopicState::Ready
                    };
                    if let TopicState::Refused(err) = state {
                        let more = self.policy.refused_alone(
                            &mut self.stats.refusals,
                            with_error(msg, err),
                            tag,
                            Instant::now(),
                        );
                        Box::pin(self.apply(more, sink, book)).await?;
                        continue;
                    }
                    self.send_raw(msg, tag, sink, book).await?;
                }
            }
        }
        Ok(())
    }

    /// Enqueue a prepared message, waiting for reports while the producer's
    /// queue is full.
    pub(super) async fn send_raw<K: MessageSink, B: Bookkeeping>(
        &mut self,
        msg: Box<FailedMessage>,
        mut tag: Box<MsgTag>,
        sink: &mut K,
        book: &B,
    ) -> Result<()> {
        tag.bytes = msg_bytes(&msg);
        loop {
            let bytes = tag.bytes;
            match sink.send_raw(
                &msg.topic,
                msg.key.as_deref(),
                msg.payload.as_deref(),
                &msg.headers,
                tag.commit_unix_millis,
                tag,
            ) {
                Ok(()) => {
                    self.progress.enqueued(bytes);
                    return Ok(());
                }
                Err((SendError::QueueFull, t)) => {
                    tag = t;
                    self.wait_one_report(sink, book).await?;
                }
                Err((SendError::Refused(e), t))
                    if e.class == ErrorClass::Permanent && !t.is_dlq =>
                {
                    let more = self.policy.refused_alone(
                        &mut self.stats.refusals,
                        with_error(msg, e),
                        t,
                        Instant::now(),
                    );
                    return Box::pin(self.apply(more, sink, book)).await;
                }
                Err((SendError::Refused(e), t)) => {
                    return Err(RelayError::sink(
                        format!("producing outbox row id={}", t.row_id),
                        e,
                    ))
                }
            }
        }
    }

    pub(super) async fn wait_one_report<K: MessageSink, B: Bookkeeping>(
        &mut self,
        sink: &mut K,
        book: &B,
    ) -> Result<()> {
        if self.progress.outstanding() == 0 {
            // Full with nothing of ours in it: give librdkafka a moment.
            tokio::time::sleep(Duration::from_millis(1)).await;
            return Ok(());
        }
        match sink.next_delivery().await {
            Some(d) => Box::pin(self.on_delivery(d, sink, book)).await,
            None => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok(())
            }
        }
    }

    /// Publish one record: pipelined, or held to be sent alone when the
    /// ledger knows it; a missing topic is a refusal of the row.
    pub(super) async fn publish<K: MessageSink, B: Bookkeeping>(
        &mut self,
        rec: &OutboxRecord,
        meta: &TxnMeta,
        topic: &str,
        seq: u64,
        sink: &mut K,
        book: &B,
    ) -> Result<()> {
        self.progress.sent(seq);
        let mut tag = MsgTag::first(seq, rec.id, meta.commit_unix_millis);
        let failed = |err| failed_from_record(rec, meta, topic, err);
        if let Some(err) = self.policy.spent(&self.stats.refusals, rec.id) {
            let effects =
                self.policy
                    .give_up(&mut self.stats.refusals, failed(err), tag, Instant::now());
            return self.apply(effects, sink, book).await;
        }
        if let TopicState::Refused(err) = sink.check_topic(topic).await? {
            let effects = self.policy.refused_alone(
                &mut self.stats.refusals,
                failed(err),
                tag,
                Instant::now(),
            );
            return self.apply(effects, sink, book).await;
        }
        if self.stats.refusals.contains_key(&rec.id) {
            let held = failed(SinkError::missing_topic(topic));
            let _ = self.policy.admit(&self.stats.refusals, held, tag);
            return Ok(());
        }
        tag.bytes = rec.payload.len()
            + rec.aggregate_id.len()
            + rec
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        loop {
            let bytes = tag.bytes;
            match sink.send_record(rec, meta, topic, tag) {
                Ok(()) => {
                    self.progress.enqueued(bytes);
                    return Ok(());
                }
                Err((SendError::QueueFull, t)) => {
                    tag = t;
                    self.wait_one_report(sink, book).await?;
                }
                Err((SendError::Refused(e), t)) if e.class == ErrorClass::Permanent => {
                    // librdkafka refused it locally (e.g. over
                    // message.max.bytes): this row's own refusal.
                    let f = failed_from_record(rec, meta, topic, e);
                    let effects =
                        self.policy
                            .refused_alone(&mut self.stats.refusals, f, t, Instant::now());
                    return self.apply(effects, sink, book).await;
                }
                Err((SendError::Refused(e), _)) => {
                    return Err(RelayError::sink(
                        format!("producing outbox row id={}", rec.id),
                        e,
                    ))
                }
            }
        }
    }
}

/// A record as the producer would have sent it, for the refusal paths.
pub(super) fn failed_from_record(
    rec: &OutboxRecord,
    meta: &TxnMeta,
    topic: &str,
    error: SinkError,
) -> Box<FailedMessage> {
    Box::new(FailedMessage {
        error,
        topic: topic.to_string(),
        key: Some(rec.aggregate_id.as_bytes().to_vec()),
        payload: Some(crate::sink::message::value(rec, meta).into_owned()),
        headers: crate::sink::message::header_pairs(rec, meta),
    })
}

pub(super) fn with_error(mut msg: Box<FailedMessage>, error: SinkError) -> Box<FailedMessage> {
    msg.error = error;
    msg
}

/// Bytes a prepared message holds.
pub(super) fn msg_bytes(m: &FailedMessage) -> usize {
    m.key.as_ref().map_or(0, Vec::len)
        + m.payload.as_ref().map_or(0, Vec::len)
        + m.headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

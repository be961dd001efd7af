//! Feeding the parts: replication events go to the router and progress,
//! delivery reports to progress and the failure policy.

use std::time::SystemTime;

use tokio::time::Instant;

use super::router::Route;
use super::{unix_millis, Current, Session};
use crate::error::Result;
use crate::ports::{Bookkeeping, MessageSink, SourceEvent};
use crate::sink::message::TxnMeta;
use crate::sink::{Delivery, MsgTag};

impl Session<'_> {
    // ---- delivery reports -------------------------------------------------

    pub(super) async fn on_delivery<K: MessageSink, B: Bookkeeping>(
        &mut self,
        d: Delivery,
        sink: &mut K,
        book: &B,
    ) -> Result<()> {
        let tag = d.tag;
        self.progress.reported(tag.bytes);
        match d.result {
            Ok(topic) => {
                if !tag.is_dlq {
                    // Counted locally, flushed on the tick: a labelled
                    // registry lookup per message costs more than the rest
                    // of the ack path.
                    *self.published.entry(topic).or_insert(0) += 1;
                    self.histograms
                        .produce_latency
                        .record(tag.sent_at.elapsed().as_secs_f64());
                    let e2e = (unix_millis(SystemTime::now()) - tag.commit_unix_millis).max(0)
                        as f64
                        / 1000.0;
                    self.histograms.end_to_end_latency.record(e2e);
                }
                self.policy.accepted(&mut self.stats.refusals, &tag);
                self.health.set_broker_ok(true);
                self.progress.acked(tag.txn);
                self.stats.acked += 1;
                Ok(())
            }
            Err(failed) => {
                let effects =
                    self.policy
                        .refused(&mut self.stats.refusals, failed, tag, Instant::now())?;
                self.apply(effects, sink, book).await
            }
        }
    }

    // ---- replication events -------------------------------------------------

    pub(super) async fn on_event<K: MessageSink, B: Bookkeeping>(
        &mut self,
        ev: SourceEvent,
        sink: &mut K,
        book: &B,
    ) -> Result<()> {
        match ev {
            SourceEvent::Begin {
                commit_lsn,
                commit_time_micros,
            } => {
                let skip = self.progress.skips(commit_lsn);
                let meta = std::sync::Arc::new(
                    TxnMeta::new(commit_lsn, commit_time_micros)
                        .with_cloudevents(self.cloudevents.clone()),
                );
                let seq = if skip {
                    0
                } else {
                    self.progress.begin(meta.commit_unix_millis)
                };
                self.current = Some(Current {
                    seq,
                    meta,
                    skip,
                    rows: 0,
                });
                self.progress.observe(commit_lsn);
            }
            SourceEvent::Commit { end_lsn } => {
                if let Some(cur) = self.current.take().filter(|c| !c.skip) {
                    self.progress.commit(cur.seq, end_lsn);
                    if cur.rows > 0 {
                        self.histograms.transaction_size.record(cur.rows as f64);
                        self.last_activity = Instant::now();
                    }
                }
                self.progress.observe(end_lsn);
            }
            SourceEvent::Data { data, wal_end } => {
                self.progress.observe(wal_end);
                let Some((relation_id, tuple)) = self.router.insert_of(&data)? else {
                    return Ok(());
                };
                let Some(cur) = self.current.as_mut() else {
                    return Err(super::insert_outside_transaction());
                };
                if cur.skip {
                    return Ok(());
                }
                let (seq, meta) = (cur.seq, cur.meta.clone());
                let route = self.router.route(relation_id, &tuple, &meta)?;
                if !matches!(route, Route::Ignore) {
                    cur.rows += 1;
                }
                match route {
                    Route::Ignore => {}
                    Route::Publish { rec, topic } => {
                        self.publish(&rec, &meta, &topic, seq, sink, book).await?;
                    }
                    Route::Reject {
                        row_id,
                        dl,
                        message,
                    } => {
                        let tag = MsgTag::first(seq, row_id.unwrap_or(0), meta.commit_unix_millis);
                        if self.policy.dead_letters() {
                            self.progress.sent(seq);
                        }
                        let effects = self
                            .policy
                            .reject(row_id, *dl, message, tag, Instant::now());
                        self.apply(effects, sink, book).await?;
                    }
                }
            }
            SourceEvent::KeepAlive { wal_end } => {
                self.progress.idle_at(wal_end, self.current.is_some())
            }
            SourceEvent::Heartbeat { lsn } => {
                self.last_activity = Instant::now();
                self.progress.idle_at(lsn, self.current.is_some());
            }
            SourceEvent::Other => {}
        }
        Ok(())
    }
}

//! The polling relay the original plan described, built only to be measured
//! against: every `polling-interval` it claims up to `batch-size` pending rows
//! with `SELECT … FOR UPDATE SKIP LOCKED`, publishes them (same producer
//! settings as the relay: idempotent, acks=all, linger 1 ms), waits for the
//! acks, marks them `PROCESSED` and commits. A full batch is followed by
//! another one at once (it drains the backlog each tick rather than
//! taking one batch per tick, the kinder variant for the comparison); a
//! short batch ends the tick and the poller sleeps for the interval.

use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;

use futures::FutureExt;

use crate::load::{producer_config, Clock, TRACEPARENT};

#[derive(Default, Debug, Clone)]
pub struct PollStats {
    pub polls: u64,
    pub batches: u64,
    pub events: u64,
    /// (row id, µs on the clock when the broker acknowledged it).
    pub acks: Vec<(i64, f64)>,
}

/// Poll `table` until `stop` turns true.
#[allow(clippy::too_many_arguments)]
pub async fn run_poller(
    url: &str,
    table: &str,
    bootstrap: &str,
    topic: &str,
    interval: Duration,
    batch: i64,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) -> Result<PollStats> {
    let mut client = crate::support::postgres::connect(url)
        .await
        .context("poller connect")?;
    let producer: FutureProducer = producer_config(bootstrap).create()?;
    let select = client
        .prepare(&format!(
            "SELECT id, aggregate_type, aggregate_id, event_type, event_data::text, \
             headers::text, created_at::text FROM {table} WHERE status = 'PENDING' \
             ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED"
        ))
        .await?;
    let update = client
        .prepare(&format!(
            "UPDATE {table} SET status = 'PROCESSED', processed_at = now() WHERE id = ANY($1)"
        ))
        .await?;
    let mut stats = PollStats::default();
    loop {
        stats.polls += 1;
        loop {
            let tx = client.transaction().await?;
            let rows = tx.query(&select, &[&batch]).await?;
            if rows.is_empty() {
                tx.commit().await?;
                break;
            }
            let mut ids = Vec::with_capacity(rows.len());
            let mut acks = Vec::with_capacity(rows.len());
            for r in &rows {
                let id: i64 = r.get(0);
                let agg_type: String = r.get(1);
                let agg_id: String = r.get(2);
                let event_type: String = r.get(3);
                let payload: String = r.get(4);
                let hdrs: Option<String> = r.get(5);
                let created: String = r.get(6);
                let id_text = id.to_string();
                let mut h = OwnedHeaders::new_with_capacity(7);
                for (k, v) in [
                    ("id", id_text.as_str()),
                    ("event_type", event_type.as_str()),
                    ("aggregate_type", agg_type.as_str()),
                    ("aggregate_id", agg_id.as_str()),
                    ("created_at", created.as_str()),
                ] {
                    h = h.insert(Header {
                        key: k,
                        value: Some(v.as_bytes()),
                    });
                }
                // Pass the row's headers object through, as the relay does.
                if let Some(obj) = hdrs
                    .as_deref()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                {
                    if let Some(map) = obj.as_object() {
                        for (k, v) in map {
                            let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                            h = h.insert(Header {
                                key: k,
                                value: Some(v.as_bytes()),
                            });
                        }
                    }
                } else {
                    h = h.insert(Header {
                        key: "traceparent",
                        value: Some(TRACEPARENT.as_bytes()),
                    });
                }
                let rec = FutureRecord::to(topic)
                    .key(agg_id.as_bytes())
                    .payload(payload.as_bytes())
                    .headers(h);
                let fut = producer
                    .send_result(rec)
                    .map_err(|(e, _)| anyhow::anyhow!("poller enqueue: {e}"))?;
                acks.push(fut.map(move |r| (r, id, clock.now_us())));
                ids.push(id);
            }
            for (a, id, at) in futures::future::join_all(acks).await {
                match a {
                    Ok(Ok(_)) => stats.acks.push((id, at)),
                    Ok(Err((e, _))) => anyhow::bail!("poller delivery failed: {e}"),
                    Err(_) => anyhow::bail!("poller delivery cancelled"),
                }
            }
            tx.execute(&update, &[&ids]).await?;
            tx.commit().await?;
            stats.batches += 1;
            stats.events += ids.len() as u64;
            if (ids.len() as i64) < batch {
                break;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return Ok(stats);
        }
    }
}

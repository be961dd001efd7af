//! Publishing the selected rows: one page at a time, each row routed and
//! checked as the stream would, sent with the stream's message builder plus
//! the `replay` header, under the `--rate` schedule and the
//! `kafka.max-in-flight` window; acknowledged rows are marked PROCESSED in
//! batches. A delivery failure or a stop request ends the sending, never
//! the waiting: what is in flight is still awaited and marked.

use std::io::IsTerminal;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;
use tokio_postgres::Client;

use super::report::Progress;
use super::select::{build_reader, check_times, coverage};
use super::{select_table, Outcome, Rejected, ReplayArgs, Summary, REPLAY_HEADER};
use crate::config::Config;
use crate::error::{ConfigError, RelayError, Result};
use crate::sink::message::TxnMeta;
use crate::sink::route::{validate_topic, RouteFields, TopicTemplate};
use crate::sink::{Delivery, MsgTag, Publisher, SendError};

fn now_text() -> (i64, String) {
    let now = SystemTime::now();
    let millis = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    (millis, humantime::format_rfc3339_micros(now).to_string())
}

/// Mark acknowledged FAILED and PENDING rows PROCESSED.
async fn mark(client: &Client, cfg: &Config, ids: &mut Vec<i64>, s: &mut Summary) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let c = &cfg.outbox.columns;
    let sql = format!(
        "WITH old AS (SELECT {id}, {st} AS was FROM {t} WHERE {id} = ANY($1) AND {st} IN ('FAILED', 'PENDING') FOR UPDATE) \
         UPDATE {t} o SET {st} = 'PROCESSED', {pa} = now(), \
             {rc} = o.{rc} + CASE WHEN old.was = 'FAILED' THEN 1 ELSE 0 END \
         FROM old WHERE o.{id} = old.{id} RETURNING old.was",
        id = c.id,
        st = c.status,
        t = cfg.outbox.table,
        pa = c.processed_at,
        rc = c.retry_count,
    );
    let rows = client
        .query(&sql, &[&*ids])
        .await
        .map_err(|e| RelayError::postgres("marking replayed rows PROCESSED", e))?;
    for r in rows {
        if r.get::<_, String>(0) == "FAILED" {
            s.failed_to_processed += 1;
        } else {
            s.pending_to_processed += 1;
        }
    }
    ids.clear();
    Ok(())
}

/// Replay what `args` selects. `stop` becoming true ends the run early
/// (what is in flight is still awaited and marked).
pub async fn run(
    client: &Client,
    cfg: &Config,
    args: &ReplayArgs,
    mut stop: watch::Receiver<bool>,
) -> Result<Outcome> {
    // `full` covers every table (the slot recovery spans them all); `cfg`
    // is the selected table's view from here on.
    let full = cfg;
    let view = select_table(cfg, args.table.as_deref())?;
    let cfg = &view;
    if args.ids.is_none() && args.since.is_none() && args.until.is_none() && args.status.is_none() {
        return Err(RelayError::Config(ConfigError::new(
            "replay",
            "select rows with at least one of --ids, --since, --until, --status",
        )));
    }
    if let Some(t) = &args.topic {
        validate_topic(t).map_err(|m| RelayError::Config(ConfigError::new("--topic", m)))?;
    }
    check_times(client, args).await?;
    let started = Instant::now();
    let template = TopicTemplate::parse(&cfg.kafka.topic_template)
        .map_err(|m| ConfigError::new("kafka.topic-template", m))?;
    let covered = coverage(client, cfg).await?;
    let reader = build_reader(cfg, args, &covered)?;
    let mut progress = if std::io::stderr().is_terminal() {
        Some(Progress {
            total: Some(reader.count(client).await?),
            last: Instant::now(),
            start: Instant::now(),
        })
    } else {
        None
    };
    let mut s = Summary {
        dry_run: args.dry_run,
        ..Default::default()
    };
    let mut producer = if args.dry_run {
        None
    } else {
        Some(Publisher::new(cfg)?)
    };
    let (_, run_text) = now_text();
    // The message shape of `kafka.format` (raw, or CloudEvents), as the stream builds it.
    let cloudevents = crate::sink::cloudevents::CloudEvents::new(
        cfg.kafka.format,
        &cfg.kafka.cloudevents,
        &cfg.outbox_table().name,
    )?;
    let max_in_flight = cfg.kafka.max_in_flight.max(1);
    let page_size = i64::from(cfg.relay.batch_size);
    let mut in_flight = 0usize;
    let mut acked: Vec<i64> = Vec::new();
    let mut error: Option<RelayError> = None;
    let mut after = i64::MIN;

    // Handle one delivery report.
    fn on_report(
        d: Delivery,
        in_flight: &mut usize,
        acked: &mut Vec<i64>,
        s: &mut Summary,
        error: &mut Option<RelayError>,
    ) {
        *in_flight -= 1;
        match d.result {
            Ok(_) => {
                s.acknowledged += 1;
                acked.push(d.tag.row_id);
            }
            Err(failed) => {
                if error.is_none() {
                    *error = Some(RelayError::sink(
                        format!("replaying outbox row id={}", d.tag.row_id),
                        failed.error,
                    ));
                }
            }
        }
    }

    'pages: loop {
        let rows = match reader.page(client, after, page_size).await {
            Ok(r) => r,
            Err(e) => {
                error = Some(e);
                break;
            }
        };
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let (id, _status, rec) = reader.decode(row);
            after = id;
            s.selected += 1;
            s.ids = Some(s.ids.map_or((id, id), |(a, _)| (a, id)));
            let routed = rec.and_then(|mut rec| {
                let topic = args
                    .topic
                    .clone()
                    .or_else(|| rec.topic.clone())
                    .unwrap_or_else(|| {
                        template.render(&RouteFields {
                            aggregate_type: &rec.aggregate_type,
                            event_type: &rec.event_type,
                            table: &cfg.outbox_table().name,
                        })
                    });
                validate_topic(&topic)?;
                if rec.payload.len() > cfg.relay.max_payload_bytes {
                    return Err(format!(
                        "event_data is over relay.max-payload-bytes = {}",
                        cfg.relay.max_payload_bytes
                    ));
                }
                rec.headers
                    .push((REPLAY_HEADER.to_string(), Bytes::from(run_text.clone())));
                Ok((rec, topic))
            });
            let (rec, topic) = match routed {
                Ok(r) => r,
                Err(reason) => {
                    s.rejected.push(Rejected { id, reason });
                    continue;
                }
            };
            let Some((publisher, reports)) = producer.as_mut() else {
                // Dry run: what would be sent.
                *s.topics.entry(topic).or_default() += 1;
                s.sent += 1;
                continue;
            };
            // Wait for room in the window and for the rate's schedule.
            let due = (args.rate > 0).then(|| {
                tokio::time::Instant::from_std(started)
                    + Duration::from_secs_f64(s.sent as f64 / f64::from(args.rate))
            });
            loop {
                while let Ok(d) = reports.try_recv() {
                    on_report(d, &mut in_flight, &mut acked, &mut s, &mut error);
                }
                if error.is_some() || *stop.borrow() {
                    s.interrupted = error.is_none();
                    break 'pages;
                }
                let on_time = due.is_none_or(|d| tokio::time::Instant::now() >= d);
                if in_flight < max_in_flight && on_time {
                    break;
                }
                tokio::select! {
                    Some(d) = reports.recv(), if in_flight > 0 => {
                        on_report(d, &mut in_flight, &mut acked, &mut s, &mut error);
                    }
                    _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if !on_time => {}
                    _ = stop.changed() => {}
                }
            }
            if let Err(e) = publisher.ensure_topic(&topic).await {
                error = Some(e);
                break 'pages;
            }
            let (millis, commit_text) = now_text();
            let mut meta = TxnMeta::new(0, 0).with_cloudevents(cloudevents.clone());
            meta.lsn_text = "replay".into();
            meta.commit_unix_millis = millis;
            meta.commit_text = commit_text;
            let mut tag = MsgTag::first(0, id, millis);
            loop {
                match publisher.send(&rec, &meta, &topic, tag) {
                    Ok(()) => break,
                    Err((SendError::QueueFull, t)) => {
                        tag = t;
                        if let Some(d) = reports.recv().await {
                            on_report(d, &mut in_flight, &mut acked, &mut s, &mut error);
                        }
                    }
                    Err((SendError::Refused(k), _)) => {
                        error = Some(RelayError::sink(format!("producing outbox row id={id}"), k));
                        break 'pages;
                    }
                }
            }
            in_flight += 1;
            s.sent += 1;
            *s.topics.entry(topic).or_default() += 1;
            if let Some(p) = progress.as_mut() {
                p.show(&s, false);
            }
            if acked.len() >= page_size as usize {
                if let Err(e) = mark(client, cfg, &mut acked, &mut s).await {
                    error = Some(e);
                    break 'pages;
                }
            }
        }
        if let Some(p) = progress.as_mut() {
            p.show(&s, false);
        }
    }
    // Await what is in flight (librdkafka fails a message after
    // message.timeout.ms, so this ends).
    if let Some((_, reports)) = producer.as_mut() {
        while in_flight > 0 {
            match reports.recv().await {
                Some(d) => on_report(d, &mut in_flight, &mut acked, &mut s, &mut error),
                None => break,
            }
        }
    }
    if let Err(e) = mark(client, cfg, &mut acked, &mut s).await {
        error.get_or_insert(e);
    }
    if let Some(p) = progress.as_mut() {
        p.show(&s, true);
        eprintln!();
    }
    if !args.dry_run && error.is_none() && !s.interrupted {
        s.recovery_closed = crate::recovery::close_if_done(client, full).await?;
    }
    s.seconds = started.elapsed().as_secs_f64();
    Ok(Outcome { summary: s, error })
}

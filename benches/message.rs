//! Record → Kafka message: topic routing, headers, the producer record.
//!
//! `cargo bench --bench message`. Groups, per event unless noted:
//!
//! * `txn_meta` — [`TxnMeta::new`], once per transaction (LSN and RFC 3339
//!   commit time formatted once, shared by the transaction's rows).
//! * `headers` — [`headers`] with the six relay headers, plus 0 or 3
//!   passthrough entries from the row's `headers` column.
//! * `route` — topic template render + topic-name validation, and the
//!   row-topic override path.
//! * `build` — everything the relay does per row after decoding and before
//!   `producer.send`: route, validate, headers, `BaseRecord` with key,
//!   payload and timestamp (1 KiB payload), reported per event and per byte.

#[path = "common/micro.rs"]
mod micro;

use std::hint::black_box;

use bytes::Bytes;
use criterion::Throughput;
use micro::Bench;
use outbox_relay::decode::OutboxRecord;
use outbox_relay::sink::message::{headers, TxnMeta};
use outbox_relay::sink::route::{validate_topic, RouteFields, TopicTemplate};
use rdkafka::producer::BaseRecord;

fn record(passthrough: usize, payload_len: usize, topic: Option<&str>) -> OutboxRecord {
    let hdrs = [
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("tenant", "acme"),
        ("schema", "order.v3"),
    ];
    OutboxRecord {
        id: 123_456_789,
        aggregate_type: "order".into(),
        aggregate_id: "order-4711".into(),
        event_type: "OrderCreated".into(),
        payload: Bytes::from(vec![b'x'; payload_len]),
        headers: hdrs
            .iter()
            .take(passthrough)
            .map(|(k, v)| (k.to_string(), Bytes::from_static(v.as_bytes())))
            .collect(),
        topic: topic.map(str::to_string),
        event_id: None,
    }
}

fn meta() -> TxnMeta {
    // 2024-05-01T12:34:56.789012Z in PostgreSQL epoch microseconds.
    TxnMeta::new(0x1_6B37_4D48, 767_882_096_789_012)
}

/// The relay's per-row work between decode and `producer.send`.
fn build(rec: &OutboxRecord, meta: &TxnMeta, template: &TopicTemplate) -> usize {
    let topic = match &rec.topic {
        Some(t) => t.clone(),
        None => template.render(&RouteFields {
            aggregate_type: &rec.aggregate_type,
            event_type: &rec.event_type,
            table: "outbox",
        }),
    };
    validate_topic(&topic).expect("valid topic");
    let r = BaseRecord::with_opaque_to(&topic, 7usize)
        .key(rec.aggregate_id.as_bytes())
        .payload(rec.payload.as_ref())
        .headers(headers(rec, meta))
        .timestamp(meta.commit_unix_millis);
    black_box(&r);
    r.payload.map_or(0, <[u8]>::len)
}

fn benches() -> Vec<Bench> {
    let mut out = Vec::new();
    out.push(Bench::new(
        "txn_meta",
        "new",
        Throughput::Elements(1),
        || {
            black_box(TxnMeta::new(
                black_box(0x1_6B37_4D48),
                black_box(767_882_096_789_012),
            ));
        },
    ));
    for n in [0, 3] {
        let rec = record(n, 64, None);
        let m = meta();
        out.push(Bench::new(
            "headers",
            format!("relay6+passthrough{n}"),
            Throughput::Elements(1),
            move || {
                black_box(headers(black_box(&rec), &m));
            },
        ));
    }
    let template = TopicTemplate::parse("outbox.{aggregate_type}").expect("template");
    let rec = record(0, 64, None);
    out.push(Bench::new(
        "route",
        "template",
        Throughput::Elements(1),
        move || {
            let t = template.render(&RouteFields {
                aggregate_type: &rec.aggregate_type,
                event_type: &rec.event_type,
                table: "outbox",
            });
            validate_topic(black_box(&t)).expect("valid");
            black_box(t);
        },
    ));
    let rec = record(0, 64, Some("orders.v1.created"));
    out.push(Bench::new(
        "route",
        "row_topic",
        Throughput::Elements(1),
        move || {
            let t = rec.topic.clone().expect("topic");
            validate_topic(black_box(&t)).expect("valid");
            black_box(t);
        },
    ));
    for (label, n) in [("events", 1u64), ("bytes", 1024)] {
        let template = TopicTemplate::parse("outbox.{aggregate_type}").expect("template");
        let rec = record(1, 1024, None);
        let m = meta();
        assert_eq!(build(&rec, &m, &template), 1024);
        out.push(Bench::new(
            "build",
            format!("{label}/1KiB+1hdr"),
            if label == "events" {
                Throughput::Elements(n)
            } else {
                Throughput::Bytes(n)
            },
            move || {
                black_box(build(black_box(&rec), &m, &template));
            },
        ));
    }
    out
}

fn main() {
    micro::run("message", benches());
}

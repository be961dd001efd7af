//! pgoutput decode throughput: XLogData bytes → [`OutboxRecord`], the work
//! the relay does per row before handing it to librdkafka.
//!
//! `cargo bench --bench decode` (criterion filters work: `-- record/`).
//! Inputs are built with `outbox_relay::decode::fixtures`; payloads are
//! jsonb text of 64 B, 1 KiB and 16 KiB. Groups:
//!
//! * `parse` — [`parse`] alone (bytes → `Message::Insert`), per byte.
//! * `record` — parse + [`ResolvedRelation::record`] over a batch of 1,000
//!   inserts, reported per byte (`bytes/…`) and per event (`events/…`).
//! * `record_headers` — the same with a `headers` object (two entries) to
//!   pass through, which the relay parses per row.
//! * `relation` — one Relation message through the cache and the mapping
//!   (once per session and per schema change, not per row).

#[path = "common/micro.rs"]
mod micro;

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::Throughput;
use micro::Bench;
use outbox_relay::decode::{
    fixtures, parse, Message, OutboxMapping, OutboxRecord, RelationCache, ResolvedRelation,
};

const REL: u32 = 16_384;
const BATCH: usize = 1_000;
const SIZES: &[(&str, usize)] = &[("64B", 64), ("1KiB", 1024), ("16KiB", 16 * 1024)];
const HEADERS: &str = r#"{"tenant": "acme", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#;

/// A jsonb text payload of exactly `len` bytes (`len` ≥ 32).
fn payload(len: usize, n: usize) -> String {
    let head = format!(r#"{{"n": {n}, "total": 12.5, "pad": ""#);
    let pad = len.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// One Insert of `public.outbox` as PostgreSQL sends it (text values).
fn insert(id: i64, payload: &str, headers: Option<&str>) -> Bytes {
    let id = id.to_string();
    let agg = format!("order-{}", id.len() * 7919 % 1000);
    Bytes::from(fixtures::insert_message(
        REL,
        &[
            Some(id.as_bytes()),
            Some(b"order"),
            Some(agg.as_bytes()),
            Some(b"OrderCreated"),
            Some(payload.as_bytes()),
            headers.map(str::as_bytes),
            None,
            Some(b"2024-05-01 12:34:56.789012+00"),
        ],
    ))
}

fn resolved() -> ResolvedRelation {
    let rel = Arc::new(fixtures::outbox_relation(REL));
    OutboxMapping::default()
        .resolve(&rel)
        .expect("maps")
        .expect("is the outbox")
}

fn batch(size: usize, headers: Option<&str>) -> Vec<Bytes> {
    (0..BATCH)
        .map(|i| insert(1_000_000 + i as i64, &payload(size, i), headers))
        .collect()
}

/// The relay's per-row decode path.
fn decode_one(resolved: &ResolvedRelation, data: &Bytes) -> OutboxRecord {
    match parse(data) {
        Ok(Message::Insert { tuple, .. }) => resolved.record(&tuple).expect("valid row"),
        other => panic!("not an insert: {other:?}"),
    }
}

fn record_bench(group: &'static str, name: String, t: Throughput, msgs: Arc<Vec<Bytes>>) -> Bench {
    let resolved = resolved();
    Bench::new(group, name, t, move || {
        for m in msgs.iter() {
            black_box(decode_one(&resolved, black_box(m)));
        }
    })
}

fn benches() -> Vec<Bench> {
    let mut out = Vec::new();
    for &(label, size) in SIZES {
        let one = insert(42, &payload(size, 42), None);
        let len = one.len() as u64;
        out.push(Bench::new(
            "parse",
            label,
            Throughput::Bytes(len),
            move || {
                black_box(parse(black_box(&one)).expect("parses"));
            },
        ));
    }
    for &(label, size) in SIZES {
        let msgs = Arc::new(batch(size, None));
        let bytes: u64 = msgs.iter().map(|m| m.len() as u64).sum();
        // Sanity: the batch decodes to what was encoded.
        let r = decode_one(&resolved(), &msgs[0]);
        assert_eq!(r.payload.len(), size);
        out.push(record_bench(
            "record",
            format!("bytes/{label}"),
            Throughput::Bytes(bytes),
            msgs.clone(),
        ));
        out.push(record_bench(
            "record",
            format!("events/{label}"),
            Throughput::Elements(BATCH as u64),
            msgs,
        ));
    }
    for &(label, size) in &SIZES[..2] {
        let msgs = Arc::new(batch(size, Some(HEADERS)));
        let bytes: u64 = msgs.iter().map(|m| m.len() as u64).sum();
        let r = decode_one(&resolved(), &msgs[0]);
        assert_eq!(r.headers.len(), 2);
        out.push(record_bench(
            "record_headers",
            format!("bytes/{label}"),
            Throughput::Bytes(bytes),
            msgs.clone(),
        ));
        out.push(record_bench(
            "record_headers",
            format!("events/{label}"),
            Throughput::Elements(BATCH as u64),
            msgs,
        ));
    }
    let rel_msg = Bytes::from(fixtures::relation_message(&fixtures::outbox_relation(REL)));
    let mapping = OutboxMapping::default();
    out.push(Bench::new(
        "relation",
        "parse+cache+resolve",
        Throughput::Elements(1),
        move || {
            let Ok(Message::Relation(rel)) = parse(black_box(&rel_msg)) else {
                panic!("relation");
            };
            let mut cache = RelationCache::new();
            let rel = cache.insert(rel);
            black_box(mapping.resolve(&rel).expect("maps"));
        },
    ));
    out
}

fn main() {
    micro::run("decode", benches());
}

//! Property-style robustness test without extra dependencies: a deterministic
//! xorshift generator mutates valid fixtures (and makes pure noise), and every
//! result goes through [`parse`] and, for inserts, [`ResolvedRelation::record`].
//! A panic anywhere fails the test; successful parses must re-encode to a
//! message that parses back to the same value.

use std::sync::Arc;

use bytes::Bytes;

use super::fixtures;
use super::pgoutput::{parse, Message, Relation, Value};
use super::record::{OutboxMapping, ResolvedRelation};
use super::relation::RelationCache;

const OUTBOX: u32 = 16400;
const ITERATIONS: usize = 300_000;

/// xorshift64* (Vigna); deterministic so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let outbox = fixtures::outbox_relation(OUTBOX);
    let mut other = fixtures::outbox_relation(OUTBOX + 1);
    other.name = "orders".into();
    let mut pg_catalog = other.clone();
    pg_catalog.namespace = String::new();
    vec![
        fixtures::relation_message(&outbox),
        fixtures::relation_message(&other),
        fixtures::relation_message(&pg_catalog),
        fixtures::outbox_insert_message(OUTBOX, 42, None, None),
        fixtures::outbox_insert_message(
            OUTBOX,
            -7,
            Some(r#"{"a": "b", "n": 1, "o": {"x": [true, null]}, "z": null}"#),
            Some("orders.v1"),
        ),
        fixtures::outbox_insert_message(OUTBOX, 1, Some("[1]"), Some("")),
        fixtures::insert_message_values(
            OUTBOX,
            &[
                Value::Text(Bytes::from_static(b"9")),
                Value::UnchangedToast,
                Value::Binary(Bytes::from_static(b"\x00\x01")),
                Value::Null,
            ],
        ),
        fixtures::type_message(16500, "public", "mood"),
        fixtures::origin_message(0x1_0000_0000, "node_a"),
        vec![b'B', 0, 0, 0, 0, 0, 0, 0, 1],
        vec![b'C', 0],
    ]
}

const INTERESTING: [u32; 8] = [
    0,
    1,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = input.len();
        match rng.below(9) {
            // Flip one bit.
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            // Overwrite one byte.
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.byte();
            }
            // Truncate.
            2 => input.truncate(rng.below(len + 1)),
            // Insert random bytes.
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(4);
                for _ in 0..n {
                    input.insert(at, rng.byte());
                }
            }
            // Delete a range.
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(8));
                input.drain(at..at + n);
            }
            // Overwrite a 2- or 4-byte field with an interesting value.
            5 if len >= 4 => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                if rng.below(2) == 0 {
                    let at = rng.below(len - 1);
                    input[at..at + 2].copy_from_slice(&(v as u16).to_be_bytes());
                } else {
                    let at = rng.below(len - 3);
                    input[at..at + 4].copy_from_slice(&v.to_be_bytes());
                }
            }
            // Splice the tail of another seed.
            6 => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            // Change the tag.
            7 if len > 0 => {
                input[0] = b"RIYOUDTBCMX\0"[rng.below(12)];
            }
            // Append garbage.
            _ => input.push(rng.byte()),
        }
    }
}

/// Text fragments that stress the record mapping (ids, JSON headers, UTF-8).
const FRAGMENTS: [&[u8]; 16] = [
    b"",
    b"0",
    b"-1",
    b"9223372036854775808",
    b" 1",
    b"{}",
    b"[]",
    b"null",
    br#"{"a": "b"}"#,
    br#"{"a": {"b": [1, 2.5e3, -0, "\u00e9\ud800"]}}"#,
    br#"{"a": 1e999}"#,
    br#"{"a": "b""#,
    b"\xff\xfe",
    b"\xc3",
    "\u{e9}t\u{e9}".as_bytes(),
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
];

/// Structure-aware mutation: a well-formed insert whose values are junk,
/// so that the record mapping (not the parser) sees most of the damage.
fn structured_insert(rng: &mut Rng) -> Vec<u8> {
    let mut values: Vec<Value> = [
        &b"42"[..],
        b"order",
        b"o-1",
        b"OrderCreated",
        b"{}",
        br#"{"k": "v"}"#,
        b"topic",
        b"now",
    ]
    .iter()
    .map(|v| Value::Text(Bytes::from_static(v)))
    .collect();
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(values.len() + 1);
        let v = match rng.below(6) {
            0 => Value::Null,
            1 => Value::UnchangedToast,
            2 => Value::Binary(Bytes::from_static(b"\0\0\0\x01")),
            3 => {
                let n = rng.below(12);
                Value::Text((0..n).map(|_| rng.byte()).collect::<Vec<u8>>().into())
            }
            _ => Value::Text(Bytes::from_static(FRAGMENTS[rng.below(FRAGMENTS.len())])),
        };
        match rng.below(10) {
            0 => values.truncate(i),
            1 if i <= values.len() => values.insert(i, v),
            _ => {
                if let Some(slot) = values.get_mut(i) {
                    *slot = v;
                }
            }
        }
    }
    fixtures::insert_message_values(OUTBOX, &values)
}

fn encode(msg: &Message) -> Option<Vec<u8>> {
    match msg {
        Message::Relation(r) => Some(fixtures::relation_message(r)),
        Message::Insert { relation_id, tuple } => {
            Some(fixtures::insert_message_values(*relation_id, &tuple.0))
        }
        Message::Type {
            id,
            namespace,
            name,
        } => Some(fixtures::type_message(*id, namespace, name)),
        Message::Origin { lsn, name } => Some(fixtures::origin_message(*lsn, name)),
        Message::Other(_) => None,
    }
}

fn check(
    input: Vec<u8>,
    mapping: &OutboxMapping,
    default_outbox: &ResolvedRelation,
    cache: &mut RelationCache,
    stats: &mut [usize; 4],
) {
    let data = Bytes::from(input);
    let Ok(msg) = parse(&data) else {
        stats[0] += 1;
        return;
    };
    stats[1] += 1;

    // Values never exceed the input, and Ok messages round-trip.
    if let Some(bytes) = encode(&msg) {
        assert!(bytes.len() <= data.len() + "pg_catalog".len());
        assert_eq!(parse(&Bytes::from(bytes)).as_ref(), Ok(&msg), "{data:?}");
    }

    match msg {
        Message::Relation(rel) => {
            let rel = cache.insert(rel);
            let _ = mapping.resolve(&rel);
        }
        Message::Insert { relation_id, tuple } => {
            stats[2] += 1;
            if default_outbox.record(&tuple).is_ok() {
                stats[3] += 1;
            }
            if let Some(rel) = cache.get(relation_id) {
                if let Ok(Some(resolved)) = mapping.resolve(rel) {
                    let _ = resolved.record(&tuple);
                }
            }
        }
        _ => {}
    }
}

#[test]
fn random_and_mutated_inputs_never_panic() {
    let seeds = seeds();
    let mapping = OutboxMapping::default();
    let default_outbox = mapping
        .resolve(&Arc::new(fixtures::outbox_relation(OUTBOX)))
        .expect("maps")
        .expect("outbox");
    let mut cache = RelationCache::new();
    // Some relations for mutated inserts to find.
    for seed in &seeds {
        if let Ok(Message::Relation(rel)) = parse(&Bytes::from(seed.clone())) {
            cache.insert(rel);
        }
    }

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut stats = [0usize; 4];
    for i in 0..ITERATIONS {
        let input = if i % 3 == 1 {
            structured_insert(&mut rng)
        } else if i % 10 == 0 {
            // Pure noise, biased towards known tags.
            let n = rng.below(64);
            let mut v: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
            if let Some(first) = v.first_mut() {
                if rng.below(2) == 0 {
                    *first = b"RIYO"[rng.below(4)];
                }
            }
            v
        } else {
            let mut v = seeds[rng.below(seeds.len())].clone();
            mutate(&mut rng, &mut v, &seeds);
            v
        };
        check(input, &mapping, &default_outbox, &mut cache, &mut stats);
        if cache.len() > 1000 {
            cache.clear();
        }
    }
    let [errors, ok, inserts, records] = stats;
    eprintln!("robustness: {errors} rejected, {ok} parsed, {inserts} inserts, {records} records");
    assert_eq!(errors + ok, ITERATIONS);
    // The generator must exercise both outcomes, not just reject everything.
    assert!(ok > ITERATIONS / 50, "only {ok} inputs parsed");
    assert!(inserts > ITERATIONS / 100, "only {inserts} inserts");
    assert!(errors > ITERATIONS / 10, "only {errors} rejected");
    assert!(records > ITERATIONS / 100, "only {records} records");
    assert!(records < inserts, "record never failed");
}

#[test]
fn relation_in_pg_catalog_is_not_the_outbox() {
    let mut rel: Relation = fixtures::outbox_relation(1);
    rel.namespace = String::new();
    let Ok(Message::Relation(rel)) = parse(&Bytes::from(fixtures::relation_message(&rel))) else {
        panic!("relation");
    };
    assert_eq!(OutboxMapping::default().resolve(&Arc::new(rel)), Ok(None));
}

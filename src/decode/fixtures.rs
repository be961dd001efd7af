//! Encoders for pgoutput messages, for tests, benches and the fuzz crate.
//!
//! Not part of the supported API. These panic on inputs that cannot be
//! encoded (e.g. more than 65535 columns, strings containing NUL).

#![allow(clippy::expect_used, clippy::panic)]

use super::pgoutput::{Relation, RelationColumn, Value};

/// Type OIDs used by [`outbox_relation`].
const INT8_OID: u32 = 20;
const TEXT_OID: u32 = 25;
const JSONB_OID: u32 = 3802;
const TIMESTAMPTZ_OID: u32 = 1184;

fn put_cstr(out: &mut Vec<u8>, s: &str) {
    assert!(!s.as_bytes().contains(&0), "string contains NUL: {s:?}");
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn put_count(out: &mut Vec<u8>, n: usize) {
    let n = u16::try_from(n).expect("at most 65535 columns");
    out.extend_from_slice(&n.to_be_bytes());
}

fn put_sized(out: &mut Vec<u8>, kind: u8, bytes: &[u8]) {
    out.push(kind);
    let len = i32::try_from(bytes.len()).expect("value below 2 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Encode a Relation (`R`) message. The namespace is written as given (an
/// empty one decodes as `pg_catalog`).
pub fn relation_message(rel: &Relation) -> Vec<u8> {
    let mut out = vec![b'R'];
    out.extend_from_slice(&rel.id.to_be_bytes());
    put_cstr(&mut out, &rel.namespace);
    put_cstr(&mut out, &rel.name);
    out.push(rel.replica_identity);
    put_count(&mut out, rel.columns.len());
    for col in &rel.columns {
        out.push(col.flags);
        put_cstr(&mut out, &col.name);
        out.extend_from_slice(&col.type_id.to_be_bytes());
        out.extend_from_slice(&col.type_modifier.to_be_bytes());
    }
    out
}

/// Encode an Insert (`I`) message with text values; `None` is NULL.
pub fn insert_message(relation_id: u32, values: &[Option<&[u8]>]) -> Vec<u8> {
    let mut out = vec![b'I'];
    out.extend_from_slice(&relation_id.to_be_bytes());
    out.push(b'N');
    put_count(&mut out, values.len());
    for v in values {
        match v {
            None => out.push(b'n'),
            Some(bytes) => put_sized(&mut out, b't', bytes),
        }
    }
    out
}

/// Encode an Insert (`I`) message with arbitrary value kinds.
pub fn insert_message_values(relation_id: u32, values: &[Value]) -> Vec<u8> {
    let mut out = vec![b'I'];
    out.extend_from_slice(&relation_id.to_be_bytes());
    out.push(b'N');
    put_count(&mut out, values.len());
    for v in values {
        match v {
            Value::Null => out.push(b'n'),
            Value::UnchangedToast => out.push(b'u'),
            Value::Text(b) => put_sized(&mut out, b't', b),
            Value::Binary(b) => put_sized(&mut out, b'b', b),
        }
    }
    out
}

/// Encode a Type (`Y`) message.
pub fn type_message(id: u32, namespace: &str, name: &str) -> Vec<u8> {
    let mut out = vec![b'Y'];
    out.extend_from_slice(&id.to_be_bytes());
    put_cstr(&mut out, namespace);
    put_cstr(&mut out, name);
    out
}

/// Encode an Origin (`O`) message.
pub fn origin_message(lsn: u64, name: &str) -> Vec<u8> {
    let mut out = vec![b'O'];
    out.extend_from_slice(&lsn.to_be_bytes());
    put_cstr(&mut out, name);
    out
}

fn column(flags: u8, name: &str, type_id: u32) -> RelationColumn {
    RelationColumn {
        flags,
        name: name.to_owned(),
        type_id,
        type_modifier: -1,
    }
}

/// `public.outbox` with the default column names, in this order: `id`,
/// `aggregate_type`, `aggregate_id`, `event_type`, `event_data`, `headers`,
/// `topic`, `created_at`.
pub fn outbox_relation(id: u32) -> Relation {
    Relation {
        id,
        namespace: "public".to_owned(),
        name: "outbox".to_owned(),
        replica_identity: b'd',
        columns: vec![
            column(1, "id", INT8_OID),
            column(0, "aggregate_type", TEXT_OID),
            column(0, "aggregate_id", TEXT_OID),
            column(0, "event_type", TEXT_OID),
            column(0, "event_data", JSONB_OID),
            column(0, "headers", JSONB_OID),
            column(0, "topic", TEXT_OID),
            column(0, "created_at", TIMESTAMPTZ_OID),
        ],
    }
}

/// An Insert into [`outbox_relation`] with text values for all eight
/// columns; `None` is NULL.
pub fn outbox_insert_message(
    relation_id: u32,
    id: i64,
    headers: Option<&str>,
    topic: Option<&str>,
) -> Vec<u8> {
    let id = id.to_string();
    insert_message(
        relation_id,
        &[
            Some(id.as_bytes()),
            Some(b"order"),
            Some(b"o-1"),
            Some(b"OrderCreated"),
            Some(br#"{"total": 12.5, "items": [1, 2]}"#),
            headers.map(str::as_bytes),
            topic.map(str::as_bytes),
            Some(b"2024-01-01 00:00:00+00"),
        ],
    )
}

use super::*;
use bytes::Bytes;
use std::sync::Arc;

use crate::decode::fixtures;
use crate::decode::pgoutput::{parse, Message, RelationColumn};
use crate::decode::pgoutput::{Relation, Tuple, Value};
use crate::decode::relation::RelationCache;

const OUTBOX: u32 = 16400;

fn decode(data: Vec<u8>) -> Message {
    parse(&Bytes::from(data)).expect("valid message")
}

fn resolved() -> ResolvedRelation {
    let rel = Arc::new(fixtures::outbox_relation(OUTBOX));
    OutboxMapping::default()
        .resolve(&rel)
        .expect("maps")
        .expect("is outbox")
}

fn tuple_of(data: Vec<u8>) -> Tuple {
    match decode(data) {
        Message::Insert { tuple, .. } => tuple,
        other => panic!("not an insert: {other:?}"),
    }
}

fn record(headers: Option<&str>, topic: Option<&str>) -> Result<OutboxRecord, RowError> {
    resolved().record(&tuple_of(fixtures::outbox_insert_message(
        OUTBOX, 42, headers, topic,
    )))
}

/// Record from an outbox insert with these eight text values (None: NULL).
fn row(values: [Option<&[u8]>; 8]) -> Result<OutboxRecord, RowError> {
    resolved().record(&tuple_of(fixtures::insert_message(OUTBOX, &values)))
}

fn header_map(r: &OutboxRecord) -> Vec<(&str, &[u8])> {
    r.headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_ref()))
        .collect()
}

#[test]
fn full_row() {
    let r = record(Some(r#"{"trace": "abc"}"#), Some("orders.v1")).expect("record");
    assert_eq!(r.id, 42);
    assert_eq!(r.aggregate_type, "order");
    assert_eq!(r.aggregate_id, "o-1");
    assert_eq!(r.event_type, "OrderCreated");
    // Payload untouched: jsonb text form with its spaces.
    assert_eq!(
        r.payload,
        Bytes::from_static(br#"{"total": 12.5, "items": [1, 2]}"#)
    );
    assert_eq!(header_map(&r), vec![("trace", &b"abc"[..])]);
    assert_eq!(r.topic.as_deref(), Some("orders.v1"));
}

#[test]
fn headers_variants() {
    let r = record(
        Some(
            r#"{"a": "x\"y\u00e9", "n": 12, "f": 1.5, "t": true, "nested": {"k": [1, null, "s"]}, "z": null}"#,
        ),
        None,
    )
    .expect("record");
    assert_eq!(
        header_map(&r),
        vec![
            ("a", "x\"y\u{e9}".as_bytes()),
            ("n", &b"12"[..]),
            ("f", &b"1.5"[..]),
            ("t", &b"true"[..]),
            ("nested", &br#"{"k":[1,null,"s"]}"#[..]),
        ]
    );

    // Document order is kept (jsonb sends shorter keys first).
    let r = record(Some(r#"{"b": "1", "a": "2", "aa": "3"}"#), None).expect("record");
    let keys: Vec<_> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["b", "a", "aa"]);

    assert!(record(None, None).expect("record").headers.is_empty());
    assert!(record(Some("{}"), None).expect("record").headers.is_empty());

    for bad in [
        "[1, 2]",
        r#""text""#,
        "42",
        "null",
        "{",
        r#"{"a": 1} x"#,
        "",
    ] {
        let err = record(Some(bad), None).expect_err(bad);
        assert_eq!(err.row_id, Some(42), "{bad}");
        assert!(
            matches!(err.kind, RowErrorKind::BadHeaders { .. }),
            "{bad}: {err}"
        );
    }
    let err = record(Some("[1]"), None).unwrap_err();
    assert!(err.to_string().contains("JSON object"), "{err}");
}

#[test]
fn topic_empty_or_null_is_none() {
    assert_eq!(record(None, Some("")).expect("record").topic, None);
    assert_eq!(record(None, None).expect("record").topic, None);
    assert_eq!(
        record(None, Some("t")).expect("record").topic.as_deref(),
        Some("t")
    );
}

#[test]
fn optional_columns_may_be_absent() {
    let mut rel = fixtures::outbox_relation(OUTBOX);
    rel.columns
        .retain(|c| c.name != "headers" && c.name != "topic");
    let resolved = OutboxMapping::default()
        .resolve(&Arc::new(rel))
        .expect("maps")
        .expect("is outbox");
    let tuple = tuple_of(fixtures::insert_message(
        OUTBOX,
        &[
            Some(b"7"),
            Some(b"a"),
            Some(b"b"),
            Some(b"c"),
            Some(b"{}"),
            Some(b"now"),
        ],
    ));
    let r = resolved.record(&tuple).expect("record");
    assert_eq!(r.id, 7);
    assert!(r.headers.is_empty());
    assert_eq!(r.topic, None);

    // Disabled in the configuration: present columns are ignored.
    let columns = ColumnNames {
        headers: None,
        topic: None,
        ..ColumnNames::default()
    };
    let mapping = OutboxMapping::new(TableName::default(), columns);
    let resolved = mapping
        .resolve(&Arc::new(fixtures::outbox_relation(OUTBOX)))
        .expect("maps")
        .expect("is outbox");
    let tuple = tuple_of(fixtures::outbox_insert_message(
        OUTBOX,
        1,
        Some("not json"),
        Some("x"),
    ));
    let r = resolved.record(&tuple).expect("record");
    assert!(r.headers.is_empty());
    assert_eq!(r.topic, None);
}

#[test]
fn event_id_column_is_required_and_not_null_when_configured() {
    let mapping = |col: &str| {
        OutboxMapping::new(
            TableName::default(),
            ColumnNames {
                event_id: Some(col.to_owned()),
                ..ColumnNames::default()
            },
        )
    };
    let rel = Arc::new(fixtures::outbox_relation(OUTBOX));
    assert_eq!(
        mapping("event_uuid").resolve(&rel),
        Err(MappingError::MissingColumn {
            column: "event_uuid".into()
        })
    );
    let resolved = mapping("topic")
        .resolve(&rel)
        .expect("maps")
        .expect("is outbox");
    let with = tuple_of(fixtures::outbox_insert_message(
        OUTBOX,
        3,
        None,
        Some("e-3"),
    ));
    assert_eq!(
        resolved.record(&with).expect("record").event_id.as_deref(),
        Some("e-3")
    );
    let null = tuple_of(fixtures::outbox_insert_message(OUTBOX, 4, None, None));
    assert_eq!(
        resolved.record(&null).unwrap_err(),
        RowError {
            row_id: Some(4),
            kind: RowErrorKind::NullColumn("topic".into())
        }
    );
    // Not configured: not read.
    let plain = OutboxMapping::default()
        .resolve(&rel)
        .expect("maps")
        .expect("is outbox");
    assert_eq!(plain.record(&with).expect("record").event_id, None);
}

#[test]
fn other_table_is_none() {
    let mapping = OutboxMapping::default();
    let mut rel = fixtures::outbox_relation(1);
    rel.name = "orders".into();
    assert_eq!(mapping.resolve(&Arc::new(rel)), Ok(None));
    let mut rel = fixtures::outbox_relation(1);
    rel.namespace = "audit".into();
    assert_eq!(mapping.resolve(&Arc::new(rel)), Ok(None));
    let mut rel = fixtures::outbox_relation(1);
    rel.name = "Outbox".into();
    assert_eq!(mapping.resolve(&Arc::new(rel)), Ok(None));

    let custom = OutboxMapping::new(TableName::new("audit", "events"), ColumnNames::default());
    let mut rel = fixtures::outbox_relation(1);
    rel.namespace = "audit".into();
    rel.name = "events".into();
    assert!(custom.resolve(&Arc::new(rel)).expect("maps").is_some());
}

#[test]
fn missing_required_column() {
    for name in [
        "id",
        "aggregate_type",
        "aggregate_id",
        "event_type",
        "event_data",
    ] {
        let mut rel = fixtures::outbox_relation(1);
        rel.columns.retain(|c| c.name != name);
        let err = OutboxMapping::default()
            .resolve(&Arc::new(rel))
            .expect_err(name);
        assert_eq!(
            err,
            MappingError::MissingColumn {
                column: name.into()
            }
        );
        assert!(err.to_string().contains(name));
    }
}

#[test]
fn alter_table_resend_moves_columns() {
    let mapping = OutboxMapping::default();
    let mut cache = RelationCache::new();

    // v1: the outbox table without a topic column.
    let mut v1 = fixtures::outbox_relation(OUTBOX);
    v1.columns.retain(|c| c.name != "topic");
    let v1 = match decode(fixtures::relation_message(&v1)) {
        Message::Relation(r) => r,
        other => panic!("{other:?}"),
    };
    let rel = cache.insert(v1);
    let resolved = mapping.resolve(&rel).expect("maps").expect("outbox");
    let tuple = tuple_of(fixtures::insert_message(
        OUTBOX,
        &[
            Some(b"2"),
            Some(b"a"),
            Some(b"b"),
            Some(b"c"),
            Some(b"{}"),
            None,
            Some(b"now"),
        ],
    ));
    assert_eq!(resolved.record(&tuple).expect("record").topic, None);

    // ALTER TABLE outbox ADD COLUMN topic text: appended after
    // created_at, so at index 7 instead of the fixture's usual 6.
    let mut v2 = Relation::clone(&rel);
    v2.columns.push(RelationColumn {
        flags: 0,
        name: "topic".into(),
        type_id: 25,
        type_modifier: -1,
    });
    let v2 = match decode(fixtures::relation_message(&v2)) {
        Message::Relation(r) => r,
        other => panic!("{other:?}"),
    };
    cache.insert(v2);
    let rel = cache.get(OUTBOX).expect("cached");
    assert_eq!(rel.columns.len(), 8);
    let resolved = mapping.resolve(rel).expect("maps").expect("outbox");
    let tuple = tuple_of(fixtures::insert_message(
        OUTBOX,
        &[
            Some(b"3"),
            Some(b"a"),
            Some(b"b"),
            Some(b"c"),
            Some(b"{}"),
            None,
            Some(b"now"),
            Some(b"moved.topic"),
        ],
    ));
    let r = resolved.record(&tuple).expect("record");
    assert_eq!(r.id, 3);
    assert_eq!(r.topic.as_deref(), Some("moved.topic"));
}

/// Rows that cannot become records: each error kind and its text.
mod row_errors;

use super::*;
use crate::decode::fixtures;
use bytes::Bytes;

fn users_relation() -> Relation {
    Relation {
        id: 16384,
        namespace: "public".into(),
        name: "users".into(),
        replica_identity: b'd',
        columns: vec![
            RelationColumn {
                flags: 1,
                name: "id".into(),
                type_id: 20,
                type_modifier: -1,
            },
            RelationColumn {
                flags: 0,
                name: "name".into(),
                type_id: 1043,
                type_modifier: 68,
            },
        ],
    }
}

fn parse_vec(v: Vec<u8>) -> Result<Message, DecodeError> {
    parse(&Bytes::from(v))
}

#[test]
fn relation_roundtrip() {
    let rel = users_relation();
    let msg = parse_vec(fixtures::relation_message(&rel)).expect("parse");
    assert_eq!(msg, Message::Relation(rel));
}

#[test]
fn relation_exact_bytes() {
    // Hand-written, independent of the fixture encoder.
    let mut b = vec![b'R', 0, 0, 0x40, 0];
    b.extend_from_slice(b"public\0t\0");
    b.push(b'f');
    b.extend_from_slice(&[0, 1]);
    b.push(1);
    b.extend_from_slice(b"id\0");
    b.extend_from_slice(&23u32.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    let Message::Relation(rel) = parse_vec(b).expect("parse") else {
        panic!("not a relation");
    };
    assert_eq!(rel.id, 0x4000);
    assert_eq!(rel.namespace, "public");
    assert_eq!(rel.name, "t");
    assert_eq!(rel.replica_identity, b'f');
    assert_eq!(
        rel.columns,
        vec![RelationColumn {
            flags: 1,
            name: "id".into(),
            type_id: 23,
            type_modifier: -1
        }]
    );
}

#[test]
fn relation_with_no_columns() {
    let mut rel = users_relation();
    rel.columns.clear();
    let msg = parse_vec(fixtures::relation_message(&rel)).expect("parse");
    assert_eq!(msg, Message::Relation(rel));
}

#[test]
fn empty_namespace_means_pg_catalog() {
    let mut rel = users_relation();
    rel.namespace = String::new();
    let Message::Relation(got) = parse_vec(fixtures::relation_message(&rel)).expect("parse") else {
        panic!("not a relation");
    };
    assert_eq!(got.namespace, "pg_catalog");
    assert_eq!(got.name, "users");

    let ty = parse_vec(fixtures::type_message(7, "", "mytype")).expect("parse");
    assert_eq!(
        ty,
        Message::Type {
            id: 7,
            namespace: "pg_catalog".into(),
            name: "mytype".into()
        }
    );
}

#[test]
fn insert_with_nulls_is_zero_copy() {
    let data = Bytes::from(fixtures::insert_message(
        16384,
        &[Some(b"42"), None, Some(b""), Some("h\u{e9}".as_bytes())],
    ));
    let msg = parse(&data).expect("parse");
    let Message::Insert { relation_id, tuple } = msg else {
        panic!("not an insert");
    };
    assert_eq!(relation_id, 16384);
    assert_eq!(
        tuple.0,
        vec![
            Value::Text(Bytes::from_static(b"42")),
            Value::Null,
            Value::Text(Bytes::new()),
            Value::Text(Bytes::from("h\u{e9}")),
        ]
    );
    // The text value points into the input buffer.
    let Value::Text(first) = &tuple.0[0] else {
        panic!()
    };
    let range = data.as_ptr_range();
    assert!(range.contains(&first.as_ptr()));
}

#[test]
fn insert_unchanged_toast_and_binary() {
    let data = fixtures::insert_message_values(
        1,
        &[
            Value::UnchangedToast,
            Value::Binary(Bytes::from_static(&[0, 0, 0, 1])),
        ],
    );
    let Message::Insert { tuple, .. } = parse_vec(data).expect("parse") else {
        panic!("not an insert");
    };
    assert_eq!(
        tuple.0,
        vec![
            Value::UnchangedToast,
            Value::Binary(Bytes::from_static(&[0, 0, 0, 1]))
        ]
    );
}

#[test]
fn type_and_origin() {
    assert_eq!(
        parse_vec(fixtures::type_message(16500, "public", "mood")).expect("parse"),
        Message::Type {
            id: 16500,
            namespace: "public".into(),
            name: "mood".into()
        }
    );
    assert_eq!(
        parse_vec(fixtures::origin_message(0x0102_0304_0506_0708, "node_a")).expect("parse"),
        Message::Origin {
            lsn: 0x0102_0304_0506_0708,
            name: "node_a".into()
        }
    );
}

#[test]
fn ignored_tags() {
    for tag in [b'U', b'D', b'T', b'B', b'C', b'M'] {
        assert_eq!(parse_vec(vec![tag]), Ok(Message::Other(tag)));
        assert_eq!(parse_vec(vec![tag, 1, 2, 3]), Ok(Message::Other(tag)));
    }
}

#[test]
fn empty_and_unknown_tags() {
    assert_eq!(parse(&Bytes::new()), Err(DecodeError::Empty));
    for tag in [0u8, b'X', b'S', b'E', b'c', b'r', b'i', 0xff] {
        assert_eq!(
            parse_vec(vec![tag, 0, 0]),
            Err(DecodeError::UnknownTag(tag))
        );
    }
    let msg = DecodeError::UnknownTag(0xff).to_string();
    assert!(msg.contains("0xff"), "{msg}");
    let msg = DecodeError::UnknownTag(b'X').to_string();
    assert!(msg.contains("'X'"), "{msg}");
}

#[test]
fn every_prefix_of_valid_messages_is_an_error() {
    let mut rel = users_relation();
    rel.columns[1].name = "display_name".into();
    let messages = [
        fixtures::relation_message(&rel),
        fixtures::insert_message(16384, &[Some(b"42"), None, Some(b"{\"a\": 1}")]),
        fixtures::insert_message_values(
            9,
            &[
                Value::UnchangedToast,
                Value::Binary(Bytes::from_static(b"xy")),
            ],
        ),
        fixtures::type_message(1, "public", "t"),
        fixtures::origin_message(5, "o"),
    ];
    for full in messages {
        assert!(parse_vec(full.clone()).is_ok());
        for len in 0..full.len() {
            let prefix = full.get(..len).expect("prefix").to_vec();
            let err = parse_vec(prefix).expect_err("prefix must not parse");
            assert!(
                matches!(err, DecodeError::Empty | DecodeError::Truncated { .. }),
                "prefix {len} of {full:?}: {err:?}"
            );
        }
    }
}

#[test]
fn truncation_names_the_field() {
    let full = fixtures::insert_message(3, &[Some(b"hello")]);
    // tag(1) oid(4) 'N'(1) ncols(2) kind(1) len(4) -> value starts at 13
    let err = parse_vec(full[..15].to_vec()).unwrap_err();
    assert_eq!(
        err,
        DecodeError::Truncated {
            what: "tuple text value",
            offset: 13
        }
    );
    assert!(err.to_string().contains("tuple text value"));
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut data = fixtures::insert_message(3, &[Some(b"x")]);
    let end = data.len();
    data.extend_from_slice(b"zz");
    assert_eq!(
        parse_vec(data),
        Err(DecodeError::TrailingBytes {
            tag: b'I',
            offset: end,
            count: 2
        })
    );
    let mut data = fixtures::relation_message(&users_relation());
    data.push(0);
    assert!(matches!(
        parse_vec(data),
        Err(DecodeError::TrailingBytes { tag: b'R', .. })
    ));
}

#[test]
fn huge_column_counts_with_tiny_body_fail_fast() {
    let start = std::time::Instant::now();
    // Insert claiming 65535 columns, body ends immediately.
    let mut data = vec![b'I', 0, 0, 0, 1, b'N', 0xff, 0xff];
    assert!(matches!(
        parse_vec(data.clone()),
        Err(DecodeError::Truncated {
            what: "tuple column kind",
            ..
        })
    ));
    // ... with a few valid NULL columns.
    data.extend_from_slice(b"nnn");
    assert!(matches!(
        parse_vec(data),
        Err(DecodeError::Truncated { .. })
    ));
    // Relation claiming 65535 columns.
    let mut rel = fixtures::relation_message(&Relation {
        columns: vec![],
        ..users_relation()
    });
    let n = rel.len();
    rel[n - 2] = 0xff;
    rel[n - 1] = 0xff;
    assert!(matches!(
        parse_vec(rel),
        Err(DecodeError::Truncated {
            what: "relation column flags",
            ..
        })
    ));
    // A text value claiming 2 GiB.
    let data = vec![
        b'I', 0, 0, 0, 1, b'N', 0, 1, b't', 0x7f, 0xff, 0xff, 0xff, b'a',
    ];
    assert!(matches!(
        parse_vec(data),
        Err(DecodeError::Truncated {
            what: "tuple text value",
            ..
        })
    ));
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn negative_length() {
    let data = vec![b'I', 0, 0, 0, 1, b'N', 0, 1, b'b', 0xff, 0xff, 0xff, 0xff];
    assert_eq!(
        parse_vec(data),
        Err(DecodeError::NegativeLength {
            what: "tuple binary value",
            offset: 9,
            len: -1
        })
    );
}

#[test]
fn bad_insert_marker_and_tuple_kind() {
    let data = vec![b'I', 0, 0, 0, 1, b'K', 0, 0];
    assert_eq!(parse_vec(data), Err(DecodeError::BadInsertMarker(b'K')));
    let data = vec![b'I', 0, 0, 0, 1, b'N', 0, 1, b'x'];
    assert_eq!(parse_vec(data), Err(DecodeError::UnknownTupleKind(b'x')));
}

#[test]
fn invalid_utf8_names_the_field() {
    let mut rel = fixtures::relation_message(&users_relation());
    // Corrupt the first byte of the table name "users".
    let pos = rel
        .windows(6)
        .position(|w| w == b"users\0")
        .expect("name present");
    rel[pos] = 0xff;
    let err = parse_vec(rel).unwrap_err();
    assert_eq!(
        err,
        DecodeError::InvalidUtf8 {
            what: "relation name"
        }
    );
    assert!(err.to_string().contains("relation name"));

    let mut origin = fixtures::origin_message(1, "ab");
    let n = origin.len();
    origin[n - 2] = 0xc3; // lone lead byte
    assert_eq!(
        parse_vec(origin),
        Err(DecodeError::InvalidUtf8 {
            what: "origin name"
        })
    );
}

#[test]
fn missing_nul_terminator_is_truncation() {
    let data = vec![b'Y', 0, 0, 0, 1, b'p', b'u', b'b'];
    assert_eq!(
        parse_vec(data),
        Err(DecodeError::Truncated {
            what: "type namespace",
            offset: 5
        })
    );
}

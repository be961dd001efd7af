//! Row-level error tests, apart from the mapping tests in the parent so
//! that neither file grows past what one reads at once.

use super::*;
#[test]
fn column_count_mismatch() {
    let tuple = tuple_of(fixtures::insert_message(OUTBOX, &[Some(b"1"), Some(b"a")]));
    let err = resolved().record(&tuple).unwrap_err();
    assert_eq!(
        err,
        RowError {
            row_id: None,
            kind: RowErrorKind::ColumnCountMismatch {
                expected: 8,
                got: 2
            }
        }
    );
    assert_eq!(
        err.to_string(),
        "outbox row (id unknown): tuple has 2 columns but the relation has 8"
    );
    let err = resolved().record(&Tuple::default()).unwrap_err();
    assert!(matches!(
        err.kind,
        RowErrorKind::ColumnCountMismatch { got: 0, .. }
    ));
}

#[test]
fn bad_id() {
    for id in [&b"abc"[..], b"", b"1.5", b"99999999999999999999", b"\xff"] {
        let err = row([
            Some(id),
            Some(b"a"),
            Some(b"b"),
            Some(b"c"),
            Some(b"{}"),
            None,
            None,
            None,
        ])
        .unwrap_err();
        assert_eq!(err.row_id, None);
        assert!(matches!(err.kind, RowErrorKind::BadId(_)), "{err}");
    }
    let long = "x".repeat(1000);
    let err = row([
        Some(long.as_bytes()),
        Some(b"a"),
        Some(b"b"),
        Some(b"c"),
        Some(b"{}"),
        None,
        None,
        None,
    ])
    .unwrap_err();
    assert!(err.to_string().len() < 200, "{err}");
    assert!(err
        .to_string()
        .starts_with("outbox row (id unknown): id \"xxx"));

    let err = row([
        None,
        Some(b"a"),
        Some(b"b"),
        Some(b"c"),
        Some(b"{}"),
        None,
        None,
        None,
    ])
    .unwrap_err();
    assert_eq!(err.row_id, None);
    assert_eq!(err.kind, RowErrorKind::NullColumn("id".into()));

    let r = row([
        Some(b"-9223372036854775808"),
        Some(b"a"),
        Some(b"b"),
        Some(b"c"),
        Some(b"{}"),
        None,
        None,
        None,
    ])
    .expect("record");
    assert_eq!(r.id, i64::MIN);
}

#[test]
fn null_required_column_names_row() {
    let err = row([
        Some(b"42"),
        Some(b"a"),
        None,
        Some(b"c"),
        Some(b"{}"),
        None,
        None,
        None,
    ])
    .unwrap_err();
    assert_eq!(
        err,
        RowError {
            row_id: Some(42),
            kind: RowErrorKind::NullColumn("aggregate_id".into())
        }
    );
    assert_eq!(
        err.to_string(),
        "outbox row id=42: column aggregate_id is NULL"
    );
    let err = row([
        Some(b"42"),
        Some(b"a"),
        Some(b"b"),
        Some(b"c"),
        None,
        None,
        None,
        None,
    ])
    .unwrap_err();
    assert_eq!(err.kind, RowErrorKind::NullColumn("event_data".into()));
}

#[test]
fn invalid_utf8_and_binary_and_toast() {
    let err = row([
        Some(b"5"),
        Some(b"a\xff"),
        Some(b"b"),
        Some(b"c"),
        Some(b"{}"),
        None,
        None,
        None,
    ])
    .unwrap_err();
    assert_eq!(err.row_id, Some(5));
    assert_eq!(
        err.kind,
        RowErrorKind::InvalidUtf8 {
            column: "aggregate_type".into()
        }
    );
    let err = row([
        Some(b"5"),
        Some(b"a"),
        Some(b"b"),
        Some(b"c"),
        Some(b"{}"),
        None,
        Some(b"\xc3"),
        None,
    ])
    .unwrap_err();
    assert_eq!(
        err.kind,
        RowErrorKind::InvalidUtf8 {
            column: "topic".into()
        }
    );

    let text = |s: &'static [u8]| Value::Text(Bytes::from_static(s));
    let base = vec![
        text(b"6"),
        text(b"a"),
        text(b"b"),
        text(b"c"),
        text(b"{}"),
        Value::Null,
        Value::Null,
        Value::Null,
    ];
    let mut values = base.clone();
    values[3] = Value::Binary(Bytes::from_static(b"\0\0"));
    let err = resolved().record(&Tuple(values)).unwrap_err();
    assert_eq!(
        err,
        RowError {
            row_id: Some(6),
            kind: RowErrorKind::NotText {
                column: "event_type".into()
            }
        }
    );
    let mut values = base.clone();
    values[4] = Value::UnchangedToast;
    let err = resolved().record(&Tuple(values)).unwrap_err();
    assert_eq!(
        err.kind,
        RowErrorKind::UnchangedToast {
            column: "event_data".into()
        }
    );
    let mut values = base;
    values[0] = Value::Binary(Bytes::from_static(&[0; 8]));
    let err = resolved().record(&Tuple(values)).unwrap_err();
    assert_eq!(err.row_id, None);
    assert_eq!(
        err.kind,
        RowErrorKind::NotText {
            column: "id".into()
        }
    );
}

#[test]
fn payload_is_zero_copy() {
    let data = Bytes::from(fixtures::outbox_insert_message(OUTBOX, 1, None, None));
    let Ok(Message::Insert { tuple, .. }) = parse(&data) else {
        panic!("insert");
    };
    let r = resolved().record(&tuple).expect("record");
    assert!(data.as_ptr_range().contains(&r.payload.as_ptr()));
}

#[test]
fn row_error_is_clone_and_error() {
    fn assert_error<E: std::error::Error + Clone + Send + Sync + 'static>() {}
    assert_error::<RowError>();
    assert_error::<MappingError>();
    assert_error::<crate::decode::DecodeError>();
}

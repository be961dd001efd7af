//! Mapping inserted outbox rows to [`OutboxRecord`]s.
//!
//! [`OutboxMapping`] knows the outbox table's name and column names (from
//! configuration). For each [`Relation`] it either says "not the outbox
//! table" or resolves the column positions once into a [`ResolvedRelation`],
//! which is cheap to clone and keep next to the relation cache. The resolved
//! relation turns each inserted [`Tuple`] into a record.
//!
//! Names compare exactly (case-sensitive), as PostgreSQL stores them: an
//! unquoted `CREATE TABLE Outbox` is `outbox` in the catalog.
//!
//! All values must arrive in text format (the relay never asks pgoutput for
//! binary). Errors here are row-level ([`RowError`]): the stream is fine, one
//! row cannot be published.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::{Deserializer, MapAccess, Visitor};

use super::pgoutput::{Relation, Tuple, Value};

/// Schema-qualified table name, e.g. `public.outbox`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    /// Schema, e.g. `public`.
    pub schema: String,
    /// Table name, e.g. `outbox`.
    pub name: String,
}

impl TableName {
    /// Build a table name.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }
}

impl Default for TableName {
    /// `public.outbox`.
    fn default() -> Self {
        Self::new("public", "outbox")
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Names of the outbox table's columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnNames {
    /// Row id (`bigint`), required.
    pub id: String,
    /// Aggregate type, required.
    pub aggregate_type: String,
    /// Aggregate id (the Kafka key), required.
    pub aggregate_id: String,
    /// Event type, required.
    pub event_type: String,
    /// Event payload (the Kafka value), required.
    pub payload: String,
    /// Optional `jsonb` object of Kafka headers; `None` disables headers.
    pub headers: Option<String>,
    /// Optional per-row topic override; `None` disables it.
    pub topic: Option<String>,
    /// Column holding the event id (CloudEvents `id`); `None`: not read.
    /// When set, the column is required and must not be NULL.
    pub event_id: Option<String>,
}

impl Default for ColumnNames {
    /// `id`, `aggregate_type`, `aggregate_id`, `event_type`, `event_data`,
    /// `headers`, `topic`.
    fn default() -> Self {
        Self {
            id: "id".to_owned(),
            aggregate_type: "aggregate_type".to_owned(),
            aggregate_id: "aggregate_id".to_owned(),
            event_type: "event_type".to_owned(),
            payload: "event_data".to_owned(),
            headers: Some("headers".to_owned()),
            topic: Some("topic".to_owned()),
            event_id: None,
        }
    }
}

/// The outbox table is present but cannot be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// A required column is not in the relation.
    #[error("outbox table has no column {column:?} (check the configured column names)")]
    MissingColumn {
        /// Configured column name.
        column: String,
    },
}

/// Which table is the outbox and what its columns are called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMapping {
    table: TableName,
    columns: ColumnNames,
}

impl Default for OutboxMapping {
    /// `public.outbox` with [`ColumnNames::default`].
    fn default() -> Self {
        Self::new(TableName::default(), ColumnNames::default())
    }
}

impl OutboxMapping {
    /// A mapping for `table` with the given column names.
    pub fn new(table: TableName, columns: ColumnNames) -> Self {
        Self { table, columns }
    }

    /// The outbox table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The configured column names.
    pub fn columns(&self) -> &ColumnNames {
        &self.columns
    }

    /// Whether `rel` is the outbox table (schema and name match exactly).
    pub fn is_outbox(&self, rel: &Relation) -> bool {
        rel.namespace == self.table.schema && rel.name == self.table.name
    }

    /// Resolve column positions for a relation.
    ///
    /// `Ok(None)` if the relation is not the outbox table.
    /// `Err(MappingError::MissingColumn)` if it is but a required column is
    /// absent. Optional columns (headers, topic) may be absent.
    pub fn resolve(&self, rel: &Arc<Relation>) -> Result<Option<ResolvedRelation>, MappingError> {
        if !self.is_outbox(rel) {
            return Ok(None);
        }
        let find = |name: &str| rel.columns.iter().position(|c| c.name == name);
        let required = |name: &String| {
            find(name).ok_or_else(|| MappingError::MissingColumn {
                column: name.clone(),
            })
        };
        let indices = Indices {
            id: required(&self.columns.id)?,
            aggregate_type: required(&self.columns.aggregate_type)?,
            aggregate_id: required(&self.columns.aggregate_id)?,
            event_type: required(&self.columns.event_type)?,
            payload: required(&self.columns.payload)?,
            headers: self.columns.headers.as_deref().and_then(find),
            topic: self.columns.topic.as_deref().and_then(find),
            event_id: match &self.columns.event_id {
                Some(name) => Some(required(name)?),
                None => None,
            },
        };
        Ok(Some(ResolvedRelation {
            relation: Arc::clone(rel),
            indices,
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Indices {
    id: usize,
    aggregate_type: usize,
    aggregate_id: usize,
    event_type: usize,
    payload: usize,
    headers: Option<usize>,
    topic: Option<usize>,
    event_id: Option<usize>,
}

/// The outbox relation with column positions resolved. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRelation {
    relation: Arc<Relation>,
    indices: Indices,
}

/// One outbox row, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Row id.
    pub id: i64,
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Event type.
    pub event_type: String,
    /// Payload exactly as PostgreSQL sent it (jsonb text form), unchanged.
    pub payload: Bytes,
    /// Entries of the `headers` object, in the order PostgreSQL sent them.
    /// String values are unescaped without quotes; other values are compact
    /// JSON text; `null` entries are skipped.
    pub headers: Vec<(String, Bytes)>,
    /// Per-row topic; `None` when the column is absent, NULL or empty.
    pub topic: Option<String>,
    /// Event id from [`ColumnNames::event_id`]; `None` when not configured.
    pub event_id: Option<String>,
}

/// One outbox row cannot be turned into a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outbox row {}: {kind}", RowLabel(*.row_id))]
pub struct RowError {
    /// The row id, when it could be decoded.
    pub row_id: Option<i64>,
    /// What is wrong.
    pub kind: RowErrorKind,
}

struct RowLabel(Option<i64>);

impl fmt::Display for RowLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "id={id}"),
            None => f.write_str("(id unknown)"),
        }
    }
}

/// What is wrong with a row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowErrorKind {
    /// A required column is NULL.
    #[error("column {0} is NULL")]
    NullColumn(String),
    /// A value arrived in binary format.
    #[error("column {column} is not in text format")]
    NotText {
        /// Column name.
        column: String,
    },
    /// A text value is not valid UTF-8.
    #[error("column {column} is not valid UTF-8")]
    InvalidUtf8 {
        /// Column name.
        column: String,
    },
    /// The id is not a 64-bit integer; carries (the start of) the value.
    #[error("id {0:?} is not a 64-bit integer")]
    BadId(String),
    /// The headers column is not a JSON object.
    #[error("headers are not a JSON object: {reason}")]
    BadHeaders {
        /// Parser message.
        reason: String,
    },
    /// The tuple's column count differs from the relation's.
    #[error("tuple has {got} columns but the relation has {expected}")]
    ColumnCountMismatch {
        /// Relation column count.
        expected: usize,
        /// Tuple column count.
        got: usize,
    },
    /// A value was not sent because it is an unchanged TOASTed value.
    #[error("column {column} is an unchanged TOASTed value that was not sent")]
    UnchangedToast {
        /// Column name.
        column: String,
    },
}

/// Longest id text quoted in [`RowErrorKind::BadId`].
const BAD_ID_MAX_CHARS: usize = 64;

impl ResolvedRelation {
    /// The relation this was resolved against.
    pub fn relation(&self) -> &Arc<Relation> {
        &self.relation
    }

    /// Turn the tuple into a record. Errors are row-level and name the row id
    /// when it could be decoded (never on a column-count mismatch, where
    /// positions cannot be trusted).
    pub fn record(&self, tuple: &Tuple) -> Result<OutboxRecord, RowError> {
        let values = tuple.0.as_slice();
        let expected = self.relation.columns.len();
        if values.len() != expected {
            return Err(RowError {
                row_id: None,
                kind: RowErrorKind::ColumnCountMismatch {
                    expected,
                    got: values.len(),
                },
            });
        }
        let ix = self.indices;
        let id = self
            .id(values)
            .map_err(|kind| RowError { row_id: None, kind })?;
        let row_error = |kind| RowError {
            row_id: Some(id),
            kind,
        };
        let string = |i| {
            let bytes = self.required(values, i)?;
            self.utf8(i, bytes)
        };
        let aggregate_type = string(ix.aggregate_type).map_err(row_error)?;
        let aggregate_id = string(ix.aggregate_id).map_err(row_error)?;
        let event_type = string(ix.event_type).map_err(row_error)?;
        let payload = self
            .required(values, ix.payload)
            .map_err(row_error)?
            .clone();
        let headers = match ix.headers {
            None => Vec::new(),
            Some(i) => match self.text(values, i).map_err(row_error)? {
                None => Vec::new(),
                Some(raw) => parse_headers(raw).map_err(row_error)?,
            },
        };
        let topic = match ix.topic {
            None => None,
            Some(i) => match self.text(values, i).map_err(row_error)? {
                None => None,
                Some(raw) => Some(self.utf8(i, raw).map_err(row_error)?),
            },
        }
        .filter(|t| !t.is_empty());
        let event_id = match ix.event_id {
            None => None,
            Some(i) => Some(string(i).map_err(row_error)?),
        };
        Ok(OutboxRecord {
            id,
            aggregate_type,
            aggregate_id,
            event_type,
            payload,
            headers,
            topic,
            event_id,
        })
    }

    fn column_name(&self, i: usize) -> String {
        self.relation
            .columns
            .get(i)
            .map(|c| c.name.clone())
            .unwrap_or_else(|| format!("#{i}"))
    }

    /// The text value at `i`; `None` for NULL.
    fn text<'t>(&self, values: &'t [Value], i: usize) -> Result<Option<&'t Bytes>, RowErrorKind> {
        match values.get(i) {
            Some(Value::Text(b)) => Ok(Some(b)),
            Some(Value::Null) => Ok(None),
            Some(Value::Binary(_)) => Err(RowErrorKind::NotText {
                column: self.column_name(i),
            }),
            Some(Value::UnchangedToast) => Err(RowErrorKind::UnchangedToast {
                column: self.column_name(i),
            }),
            // Unreachable after the count check; still no panic.
            None => Err(RowErrorKind::ColumnCountMismatch {
                expected: self.relation.columns.len(),
                got: values.len(),
            }),
        }
    }

    fn required<'t>(&self, values: &'t [Value], i: usize) -> Result<&'t Bytes, RowErrorKind> {
        self.text(values, i)?
            .ok_or_else(|| RowErrorKind::NullColumn(self.column_name(i)))
    }

    fn utf8(&self, i: usize, bytes: &Bytes) -> Result<String, RowErrorKind> {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| RowErrorKind::InvalidUtf8 {
                column: self.column_name(i),
            })
    }

    fn id(&self, values: &[Value]) -> Result<i64, RowErrorKind> {
        let raw = self.required(values, self.indices.id)?;
        let text = String::from_utf8_lossy(raw);
        text.parse::<i64>().map_err(|_| {
            let mut shown: String = text.chars().take(BAD_ID_MAX_CHARS).collect();
            if text.chars().nth(BAD_ID_MAX_CHARS).is_some() {
                shown.push('…');
            }
            RowErrorKind::BadId(shown)
        })
    }
}

/// Parse the headers column: a JSON object whose entries become
/// `(key, value)` pairs in document order.
fn parse_headers(raw: &[u8]) -> Result<Vec<(String, Bytes)>, RowErrorKind> {
    let bad = |e: serde_json::Error| RowErrorKind::BadHeaders {
        reason: e.to_string(),
    };
    let HeaderEntries(entries) = serde_json::from_slice(raw).map_err(bad)?;
    let mut out = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let bytes = match value {
            serde_json::Value::Null => continue,
            serde_json::Value::String(s) => Bytes::from(s),
            other => Bytes::from(serde_json::to_vec(&other).map_err(bad)?),
        };
        out.push((key, bytes));
    }
    Ok(out)
}

/// A JSON object as an ordered list of entries (duplicates kept), without
/// depending on serde_json's `preserve_order` feature.
struct HeaderEntries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for HeaderEntries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(HeaderEntriesVisitor)
    }
}

struct HeaderEntriesVisitor;

impl<'de> Visitor<'de> for HeaderEntriesVisitor {
    type Value = HeaderEntries;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
            entries.push(entry);
        }
        Ok(HeaderEntries(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::fixtures;
    use crate::decode::pgoutput::{parse, Message, RelationColumn};
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
}

//! One inserted tuple → one typed [`OutboxRecord`]: column extraction,
//! text/NULL/UTF-8 checks and the id's integer parse.
//!
//! This is the per-row hot path; it stays separate from resolving
//! ([`mapping`](super::mapping)), which runs once per relation, so the
//! checks a row can fail sit together here (the headers JSON apart, in
//! [`headers`](super::headers)).

use std::sync::Arc;

use bytes::Bytes;

use super::error::{RowError, RowErrorKind};
use super::headers::parse_headers;
use super::mapping::ResolvedRelation;
use crate::decode::pgoutput::{Relation, Tuple, Value};
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
    /// Event id from [`ColumnNames::event_id`](super::ColumnNames::event_id); `None` when not configured.
    pub event_id: Option<String>,
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

//! The `headers` column (a `jsonb` object) → ordered Kafka headers.
//!
//! Kept apart because it is the only JSON parsing in the decoder and brings
//! its own serde visitor, needed to keep document order without serde_json's
//! `preserve_order` feature.

use std::fmt;

use bytes::Bytes;
use serde::de::{Deserializer, MapAccess, Visitor};

use super::error::RowErrorKind;
/// Parse the headers column: a JSON object whose entries become
/// `(key, value)` pairs in document order.
pub(super) fn parse_headers(raw: &[u8]) -> Result<Vec<(String, Bytes)>, RowErrorKind> {
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

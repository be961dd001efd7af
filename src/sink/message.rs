//! Record → Kafka message: key, value and headers.
//!
//! Headers the relay always sets, in this order: `id`, `event_type`,
//! `aggregate_type`, `aggregate_id`, `lsn` (commit LSN, `X/Y`),
//! `commit_timestamp` (RFC 3339, UTC). Then, with a CloudEvents
//! `kafka.format`, the attributes of [`crate::sink::cloudevents`]. Then
//! every entry of the row's `headers` object, so `traceparent` and friends
//! pass through unchanged.
//!
//! The value is `event_data` unchanged, or the JSON event in CloudEvents
//! structured mode: always take it from [`value`].

use std::borrow::Cow;
use std::sync::Arc;

use rdkafka::message::{Header, OwnedHeaders};

use crate::decode::OutboxRecord;
use crate::sink::cloudevents::CloudEvents;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// What every message of one transaction shares, formatted once per
/// transaction rather than once per row.
#[derive(Debug, Clone)]
pub struct TxnMeta {
    /// Commit LSN (the `final_lsn` of Begin).
    pub commit_lsn: u64,
    /// `commit_lsn` as PostgreSQL prints it.
    pub lsn_text: String,
    /// Commit time, Unix milliseconds (also the Kafka message timestamp).
    pub commit_unix_millis: i64,
    /// Commit time, RFC 3339.
    pub commit_text: String,
    /// CloudEvents encoder (`kafka.format`); `None`: raw messages.
    pub cloudevents: Option<Arc<CloudEvents>>,
}

impl TxnMeta {
    /// From the Begin message's fields.
    pub fn new(commit_lsn: u64, commit_time_pg_micros: i64) -> Self {
        let unix_micros = commit_time_pg_micros.saturating_add(PG_EPOCH_OFFSET_MICROS);
        let commit_text = u64::try_from(unix_micros)
            .ok()
            .map(|us| {
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us);
                humantime::format_rfc3339_micros(t).to_string()
            })
            .unwrap_or_default();
        Self {
            commit_lsn,
            lsn_text: format_lsn(commit_lsn),
            commit_unix_millis: unix_micros / 1000,
            commit_text,
            cloudevents: None,
        }
    }

    /// The same, with messages shaped as CloudEvents when `ce` is set.
    pub fn with_cloudevents(mut self, ce: Option<Arc<CloudEvents>>) -> Self {
        self.cloudevents = ce;
        self
    }
}

/// The message value for one record: `event_data` as PostgreSQL rendered
/// it, or the CloudEvents JSON event in structured mode.
pub fn value<'r>(rec: &'r OutboxRecord, meta: &TxnMeta) -> Cow<'r, [u8]> {
    match &meta.cloudevents {
        Some(ce) => ce.value(rec, meta),
        None => Cow::Borrowed(&rec.payload),
    }
}

/// `X/Y` hex form of an LSN, as PostgreSQL prints it.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parse `X/Y` into an LSN.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    if hi > u32::MAX as u64 || lo > u32::MAX as u64 {
        return None;
    }
    Some((hi << 32) | lo)
}

/// How many headers the relay itself sets before the row's own.
pub const RELAY_HEADER_COUNT: usize = 6;

/// Build the header set for one record.
pub fn headers(rec: &OutboxRecord, meta: &TxnMeta) -> OwnedHeaders {
    let id = rec.id.to_string();
    let mut h = OwnedHeaders::new_with_capacity(6 + rec.headers.len())
        .insert(Header {
            key: "id",
            value: Some(id.as_bytes()),
        })
        .insert(Header {
            key: "event_type",
            value: Some(rec.event_type.as_bytes()),
        })
        .insert(Header {
            key: "aggregate_type",
            value: Some(rec.aggregate_type.as_bytes()),
        })
        .insert(Header {
            key: "aggregate_id",
            value: Some(rec.aggregate_id.as_bytes()),
        })
        .insert(Header {
            key: "lsn",
            value: Some(meta.lsn_text.as_bytes()),
        })
        .insert(Header {
            key: "commit_timestamp",
            value: Some(meta.commit_text.as_bytes()),
        });
    let ce = meta.cloudevents.as_deref();
    if let Some(ce) = ce {
        for (key, value) in ce.headers(rec, meta) {
            h = h.insert(Header {
                key,
                value: Some(value.as_ref()),
            });
        }
    }
    for (k, v) in &rec.headers {
        if ce.is_some_and(|ce| ce.shadows(k)) {
            continue;
        }
        h = h.insert(Header {
            key: k.as_str(),
            value: Some(v.as_ref()),
        });
    }
    h
}

/// The same headers as owned `(name, value)` pairs: what a retry or a DLQ
/// copy is built from.
pub fn header_pairs(rec: &OutboxRecord, meta: &TxnMeta) -> Vec<(String, Vec<u8>)> {
    use rdkafka::message::Headers;
    headers(rec, meta)
        .iter()
        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_roundtrip() {
        assert_eq!(format_lsn(0x016B_3748), "0/16B3748");
        assert_eq!(parse_lsn("1/A"), Some((1 << 32) | 10));
        assert_eq!(parse_lsn(&format_lsn(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_lsn("zz"), None);
    }

    #[test]
    fn meta_time() {
        // 2000-01-01T00:00:01Z
        let m = TxnMeta::new(1, 1_000_000);
        assert_eq!(m.commit_unix_millis, 946_684_801_000);
        assert_eq!(m.commit_text, "2000-01-01T00:00:01.000000Z");
    }

    #[test]
    fn header_order_and_passthrough() {
        let rec = OutboxRecord {
            id: 42,
            aggregate_type: "order".into(),
            aggregate_id: "o-1".into(),
            event_type: "created".into(),
            payload: bytes::Bytes::from_static(b"{}"),
            headers: vec![(
                "traceparent".into(),
                bytes::Bytes::from_static(b"00-abc-01"),
            )],
            topic: None,
            event_id: None,
        };
        let got = header_pairs(&rec, &TxnMeta::new(0x10, 0));
        assert_eq!(got[0], ("id".into(), b"42".to_vec()));
        assert_eq!(got[4], ("lsn".into(), b"0/10".to_vec()));
        assert_eq!(got[6], ("traceparent".into(), b"00-abc-01".to_vec()));
    }

    #[test]
    fn cloudevents_keep_the_relay_headers_and_drop_shadowing_row_headers() {
        use crate::sink::cloudevents::{CloudEventsConfig, MessageFormat};
        let rec = OutboxRecord {
            id: 7,
            aggregate_type: "order".into(),
            aggregate_id: "o-7".into(),
            event_type: "created".into(),
            payload: bytes::Bytes::from_static(b"{\"a\":1}"),
            headers: vec![
                (
                    "traceparent".into(),
                    bytes::Bytes::from_static(b"00-abc-01"),
                ),
                ("ce_id".into(), bytes::Bytes::from_static(b"forged")),
                (
                    "content-type".into(),
                    bytes::Bytes::from_static(b"text/xml"),
                ),
            ],
            topic: None,
            event_id: None,
        };
        for format in [
            MessageFormat::CloudeventsBinary,
            MessageFormat::CloudeventsStructured,
        ] {
            let ce = CloudEvents::new(format, &CloudEventsConfig::default(), "outbox").unwrap();
            let meta = TxnMeta::new(0x10, 0).with_cloudevents(ce);
            let got = header_pairs(&rec, &meta);
            let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(
                names[..RELAY_HEADER_COUNT],
                [
                    "id",
                    "event_type",
                    "aggregate_type",
                    "aggregate_id",
                    "lsn",
                    "commit_timestamp"
                ]
            );
            assert_eq!(
                got.iter().filter(|(k, _)| k == "ce_id").count(),
                usize::from(format == MessageFormat::CloudeventsBinary)
            );
            assert!(
                got.iter().all(|(_, v)| v != b"forged" && v != b"text/xml"),
                "{names:?}"
            );
            assert_eq!(
                got.last().unwrap(),
                &("traceparent".to_string(), b"00-abc-01".to_vec())
            );
            let v = value(&rec, &meta);
            if format == MessageFormat::CloudeventsBinary {
                assert_eq!(&*v, b"{\"a\":1}");
            } else {
                let env: serde_json::Value = serde_json::from_slice(&v).unwrap();
                assert_eq!(env["data"], serde_json::json!({"a": 1}));
                assert_eq!(env["id"], "7");
            }
        }
        // Raw: the payload itself, borrowed.
        assert!(matches!(value(&rec, &TxnMeta::new(1, 0)), Cow::Borrowed(_)));
    }
}

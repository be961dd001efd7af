//! CloudEvents on the wire (`kafka.format`), per the CloudEvents 1.0 Kafka
//! protocol binding.
//!
//! * `raw` (default): the message as it always was — value `event_data`,
//!   the relay's headers and the row's own. Nothing here runs.
//! * `cloudevents-binary`: value `event_data` unchanged; the attributes as
//!   `ce_*` headers — `ce_specversion` (`1.0`), `ce_id` (the row id, or the
//!   column `kafka.cloudevents.id-column`), `ce_source`
//!   (`kafka.cloudevents.source` rendered for the row), `ce_type`
//!   (event type), `ce_subject` (aggregate id), `ce_time` (commit time,
//!   RFC 3339) — and `content-type: application/json` (the binding's name
//!   for `datacontenttype`). A `traceparent`/`tracestate` entry of the row's
//!   headers also becomes `ce_traceparent`/`ce_tracestate` (the
//!   distributed-tracing extension), besides passing through as is.
//! * `cloudevents-structured`: value is the JSON event format — the same
//!   attributes and `data` holding the payload as JSON — with
//!   `content-type: application/cloudevents+json`.
//!
//! In every mode the key stays `aggregate_id` (the binding's `partitionkey`)
//! and the relay's own headers (`id`, `lsn`, …) stay: consumers dedupe by
//! them and `outbox-relay verify` matches messages to rows by them. The
//! row's headers pass through too, except `content-type` and `ce_*` ones,
//! which would shadow the attributes set here (the row cannot forge the
//! event's identity) or make a consumer take a structured message for a
//! binary one.
//!
//! The encoder is built once per session from the configuration and rides
//! on [`TxnMeta`]; [`crate::sink::message`] asks it for the headers and
//! the value of each record.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::decode::OutboxRecord;
use crate::error::ConfigError;
use crate::sink::message::TxnMeta;
use crate::sink::route::{RouteFields, TopicTemplate};

/// `kafka.format`: what a message looks like on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MessageFormat {
    /// Value `event_data`, the relay's and the row's headers.
    #[default]
    Raw,
    /// CloudEvents binary content mode: attributes as `ce_*` headers.
    CloudeventsBinary,
    /// CloudEvents structured content mode: the JSON event as the value.
    CloudeventsStructured,
}

/// `kafka.cloudevents`: how attributes are derived from a row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct CloudEventsConfig {
    /// The `source` attribute (a URI reference). Placeholders `{table}`,
    /// `{aggregate_type}`, `{event_type}`; values are percent-encoded.
    pub source: String,
    /// Column whose text is the `id` attribute (e.g. a uuid column); empty:
    /// the row id.
    pub id_column: String,
}

impl Default for CloudEventsConfig {
    fn default() -> Self {
        Self {
            source: "/outbox/{table}".into(),
            id_column: String::new(),
        }
    }
}

impl CloudEventsConfig {
    /// Check the keys; errors name `kafka.cloudevents.*`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const KEY: &str = "kafka.cloudevents.source";
        let template = TopicTemplate::parse(&self.source).map_err(|m| ConfigError::new(KEY, m))?;
        // The fixed text must be legal in a URI reference (RFC 3986);
        // placeholder values are percent-encoded when rendered.
        let sample = template.render(&RouteFields {
            aggregate_type: "a",
            event_type: "a",
            table: "a",
        });
        if let Some(c) = sample.chars().find(|c| !is_uri_char(*c)) {
            return Err(ConfigError::new(
                KEY,
                format!("must be a URI reference; {c:?} is not allowed (percent-encode it)"),
            ));
        }
        if !self.id_column.is_empty() {
            crate::config::validate_ident("kafka.cloudevents.id-column", &self.id_column)?;
        }
        Ok(())
    }
}

fn is_uri_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c)
}

/// Binary or structured content mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Attributes in `ce_*` headers, value unchanged.
    Binary,
    /// The JSON event format as the value.
    Structured,
}

/// Media type of the JSON event format (structured mode's `content-type`).
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
/// `datacontenttype` of the payload: the outbox holds jsonb.
pub const DATA_CONTENT_TYPE: &str = "application/json";
/// The CloudEvents version written.
pub const SPEC_VERSION: &str = "1.0";

/// Attributes of the distributed-tracing extension taken from the row's
/// headers.
const TRACE_ATTRIBUTES: [&str; 2] = ["traceparent", "tracestate"];

/// Builds CloudEvents attributes for records; one per session.
#[derive(Debug)]
pub struct CloudEvents {
    mode: Mode,
    source: Source,
    id_from_column: bool,
}

/// The `source` template, pre-rendered when it does not depend on the row.
#[derive(Debug)]
enum Source {
    Fixed(String),
    PerRow {
        template: TopicTemplate,
        table: String,
    },
}

impl CloudEvents {
    /// The encoder for `format`, `None` for raw. `table` is the outbox
    /// table's name (without schema), for `{table}`.
    pub fn new(
        format: MessageFormat,
        cfg: &CloudEventsConfig,
        table: &str,
    ) -> Result<Option<Arc<Self>>, ConfigError> {
        let mode = match format {
            MessageFormat::Raw => return Ok(None),
            MessageFormat::CloudeventsBinary => Mode::Binary,
            MessageFormat::CloudeventsStructured => Mode::Structured,
        };
        let template = TopicTemplate::parse(&cfg.source)
            .map_err(|m| ConfigError::new("kafka.cloudevents.source", m))?;
        let per_row =
            cfg.source.contains("{aggregate_type}") || cfg.source.contains("{event_type}");
        let source = if per_row {
            Source::PerRow {
                template,
                table: percent_encode(table).into_owned(),
            }
        } else {
            Source::Fixed(template.render(&RouteFields {
                aggregate_type: "",
                event_type: "",
                table: &percent_encode(table),
            }))
        };
        Ok(Some(Arc::new(Self {
            mode,
            source,
            id_from_column: !cfg.id_column.is_empty(),
        })))
    }

    /// Binary or structured.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The `source` attribute for `rec`.
    pub fn source(&self, rec: &OutboxRecord) -> Cow<'_, str> {
        match &self.source {
            Source::Fixed(s) => Cow::Borrowed(s),
            Source::PerRow { template, table } => Cow::Owned(template.render(&RouteFields {
                aggregate_type: &percent_encode(&rec.aggregate_type),
                event_type: &percent_encode(&rec.event_type),
                table,
            })),
        }
    }

    /// The `id` attribute for `rec`: the configured column's value, else the
    /// row id.
    pub fn id<'r>(&self, rec: &'r OutboxRecord) -> Cow<'r, str> {
        match (&rec.event_id, self.id_from_column) {
            (Some(id), true) => Cow::Borrowed(id.as_str()),
            _ => Cow::Owned(rec.id.to_string()),
        }
    }

    /// Whether a row header of this name is left out because a header set
    /// here takes its place.
    pub fn shadows(&self, name: &str) -> bool {
        // In structured mode too: a consumer that auto-detects the mode
        // takes any `ce_` header for binary mode.
        name.eq_ignore_ascii_case("content-type")
            || name.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("ce_"))
    }

    /// The headers this mode adds after the relay's own, in order.
    pub fn headers<'r>(
        &'r self,
        rec: &'r OutboxRecord,
        meta: &'r TxnMeta,
    ) -> Vec<(&'static str, Cow<'r, [u8]>)> {
        let b = |s: Cow<'r, str>| match s {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        };
        match self.mode {
            Mode::Structured => vec![(
                "content-type",
                Cow::Borrowed(STRUCTURED_CONTENT_TYPE.as_bytes()),
            )],
            Mode::Binary => {
                let mut h = Vec::with_capacity(9);
                h.push(("ce_specversion", Cow::Borrowed(SPEC_VERSION.as_bytes())));
                h.push(("ce_id", b(self.id(rec))));
                h.push(("ce_source", b(self.source(rec))));
                h.push(("ce_type", Cow::Borrowed(rec.event_type.as_bytes())));
                h.push(("ce_subject", Cow::Borrowed(rec.aggregate_id.as_bytes())));
                if !meta.commit_text.is_empty() {
                    h.push(("ce_time", Cow::Borrowed(meta.commit_text.as_bytes())));
                }
                h.push(("content-type", Cow::Borrowed(DATA_CONTENT_TYPE.as_bytes())));
                for (name, value) in trace_context(rec) {
                    let header = if name == "traceparent" {
                        "ce_traceparent"
                    } else {
                        "ce_tracestate"
                    };
                    h.push((header, Cow::Borrowed(value)));
                }
                h
            }
        }
    }

    /// The message value: `event_data` in binary mode, the JSON event in
    /// structured mode.
    pub fn value<'r>(&self, rec: &'r OutboxRecord, meta: &TxnMeta) -> Cow<'r, [u8]> {
        match self.mode {
            Mode::Binary => Cow::Borrowed(&rec.payload),
            Mode::Structured => Cow::Owned(self.envelope(rec, meta)),
        }
    }

    /// The JSON event format. `data` is the payload itself when it is JSON
    /// (jsonb always is); anything else is carried as a JSON string with
    /// `datacontenttype` `text/plain`, so the envelope stays valid JSON.
    pub fn envelope(&self, rec: &OutboxRecord, meta: &TxnMeta) -> Vec<u8> {
        let mut out = String::with_capacity(rec.payload.len() + 256);
        let mut field = |name: &str, value: &str| {
            out.push(if out.is_empty() { '{' } else { ',' });
            push_json_str(&mut out, name);
            out.push(':');
            push_json_str(&mut out, value);
        };
        field("specversion", SPEC_VERSION);
        field("id", &self.id(rec));
        field("source", &self.source(rec));
        field("type", &rec.event_type);
        field("subject", &rec.aggregate_id);
        if !meta.commit_text.is_empty() {
            field("time", &meta.commit_text);
        }
        for (name, value) in trace_context(rec) {
            field(name, &String::from_utf8_lossy(value));
        }
        let json = std::str::from_utf8(&rec.payload)
            .ok()
            .filter(|s| serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok());
        match json {
            Some(data) => {
                field("datacontenttype", DATA_CONTENT_TYPE);
                out.push_str(",\"data\":");
                out.push_str(data);
            }
            None => {
                let text = String::from_utf8_lossy(&rec.payload).into_owned();
                field("datacontenttype", "text/plain; charset=utf-8");
                field("data", &text);
            }
        }
        out.push('}');
        out.into_bytes()
    }
}

/// `traceparent` and `tracestate` entries of the row's headers (first of
/// each), with their canonical names.
fn trace_context(rec: &OutboxRecord) -> impl Iterator<Item = (&'static str, &[u8])> {
    TRACE_ATTRIBUTES.into_iter().filter_map(|attr| {
        rec.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(attr))
            .map(|(_, v)| (attr, v.as_ref()))
    })
}

fn push_json_str(out: &mut String, s: &str) {
    // serde_json's escaping, without an intermediate Value.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

/// Percent-encode everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> Cow<'_, str> {
    let keep = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if s.bytes().all(keep) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec() -> OutboxRecord {
        OutboxRecord {
            id: 42,
            aggregate_type: "order".into(),
            aggregate_id: "o-1".into(),
            event_type: "OrderCreated".into(),
            payload: Bytes::from_static(br#"{"total": 42, "note": "a \"b\""}"#),
            headers: vec![
                (
                    "traceparent".into(),
                    Bytes::from_static(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                ),
                (
                    "tracestate".into(),
                    Bytes::from_static(b"congo=t61rcWkgMzE"),
                ),
                ("tenant".into(), Bytes::from_static(b"acme")),
            ],
            topic: None,
            event_id: None,
        }
    }

    fn meta() -> TxnMeta {
        // 2000-01-01T00:00:01Z
        TxnMeta::new(0x16B_3748, 1_000_000)
    }

    fn encoder(format: MessageFormat, cfg: CloudEventsConfig) -> Arc<CloudEvents> {
        CloudEvents::new(format, &cfg, "outbox").unwrap().unwrap()
    }

    fn text(h: &[(&'static str, Cow<'_, [u8]>)], name: &str) -> Option<String> {
        h.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| String::from_utf8(v.to_vec()).unwrap())
    }

    #[test]
    fn raw_builds_nothing() {
        assert!(
            CloudEvents::new(MessageFormat::Raw, &CloudEventsConfig::default(), "outbox")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn binary_headers_map_the_row() {
        let ce = encoder(
            MessageFormat::CloudeventsBinary,
            CloudEventsConfig::default(),
        );
        let (r, m) = (rec(), meta());
        let h = ce.headers(&r, &m);
        let names: Vec<_> = h.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "ce_specversion",
                "ce_id",
                "ce_source",
                "ce_type",
                "ce_subject",
                "ce_time",
                "content-type",
                "ce_traceparent",
                "ce_tracestate"
            ]
        );
        assert_eq!(text(&h, "ce_specversion").unwrap(), "1.0");
        assert_eq!(text(&h, "ce_id").unwrap(), "42");
        assert_eq!(text(&h, "ce_source").unwrap(), "/outbox/outbox");
        assert_eq!(text(&h, "ce_type").unwrap(), "OrderCreated");
        assert_eq!(text(&h, "ce_subject").unwrap(), "o-1");
        assert_eq!(text(&h, "ce_time").unwrap(), "2000-01-01T00:00:01.000000Z");
        assert_eq!(text(&h, "content-type").unwrap(), "application/json");
        assert_eq!(
            text(&h, "ce_traceparent").unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(text(&h, "ce_tracestate").unwrap(), "congo=t61rcWkgMzE");
        // The value is the payload, untouched.
        assert_eq!(&*ce.value(&r, &m), &r.payload[..]);
    }

    #[test]
    fn structured_envelope_is_the_json_event_format() {
        let ce = encoder(
            MessageFormat::CloudeventsStructured,
            CloudEventsConfig::default(),
        );
        let (r, m) = (rec(), meta());
        let h = ce.headers(&r, &m);
        assert_eq!(h.len(), 1);
        assert_eq!(text(&h, "content-type").unwrap(), STRUCTURED_CONTENT_TYPE);
        let v: serde_json::Value = serde_json::from_slice(&ce.value(&r, &m)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "specversion": "1.0",
                "id": "42",
                "source": "/outbox/outbox",
                "type": "OrderCreated",
                "subject": "o-1",
                "time": "2000-01-01T00:00:01.000000Z",
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "tracestate": "congo=t61rcWkgMzE",
                "datacontenttype": "application/json",
                "data": {"total": 42, "note": "a \"b\""}
            })
        );
    }

    #[test]
    fn non_json_payload_stays_a_valid_envelope() {
        let ce = encoder(
            MessageFormat::CloudeventsStructured,
            CloudEventsConfig::default(),
        );
        let mut r = rec();
        r.payload = Bytes::from_static(b"not json \"quoted\"");
        let v: serde_json::Value = serde_json::from_slice(&ce.value(&r, &meta())).unwrap();
        assert_eq!(v["data"], "not json \"quoted\"");
        assert_eq!(v["datacontenttype"], "text/plain; charset=utf-8");
    }

    #[test]
    fn id_column_and_source_template() {
        let ce = encoder(
            MessageFormat::CloudeventsBinary,
            CloudEventsConfig {
                source: "urn:shop:{table}/{aggregate_type}/{event_type}".into(),
                id_column: "event_id".into(),
            },
        );
        let mut r = rec();
        r.aggregate_type = "order line/eu".into();
        r.event_id = Some("7d8e7a4c-uuid".into());
        assert_eq!(ce.id(&r), "7d8e7a4c-uuid");
        assert_eq!(
            ce.source(&r),
            "urn:shop:outbox/order%20line%2Feu/OrderCreated"
        );
        // Without a value from the column (not configured) the row id is used.
        let plain = encoder(
            MessageFormat::CloudeventsBinary,
            CloudEventsConfig::default(),
        );
        assert_eq!(plain.id(&r), "42");
    }

    #[test]
    fn row_headers_cannot_shadow_attributes() {
        let bin = encoder(
            MessageFormat::CloudeventsBinary,
            CloudEventsConfig::default(),
        );
        assert!(bin.shadows("ce_id"));
        assert!(bin.shadows("CE_Source"));
        assert!(bin.shadows("Content-Type"));
        assert!(!bin.shadows("traceparent"));
        assert!(!bin.shadows("ce"));
        let st = encoder(
            MessageFormat::CloudeventsStructured,
            CloudEventsConfig::default(),
        );
        assert!(st.shadows("content-type"));
        assert!(st.shadows("ce_myext"));
        assert!(!st.shadows("tenant"));
    }

    #[test]
    fn no_time_attribute_without_a_commit_time() {
        let ce = encoder(
            MessageFormat::CloudeventsBinary,
            CloudEventsConfig::default(),
        );
        let r = rec();
        let mut m = meta();
        m.commit_text.clear();
        assert!(text(&ce.headers(&r, &m), "ce_time").is_none());
    }

    #[test]
    fn config_validation_names_the_key() {
        let bad = |source: &str, id_column: &str| {
            CloudEventsConfig {
                source: source.into(),
                id_column: id_column.into(),
            }
            .validate()
            .unwrap_err()
            .key
        };
        assert_eq!(bad("/outbox/{nope}", ""), "kafka.cloudevents.source");
        assert_eq!(bad("", ""), "kafka.cloudevents.source");
        assert_eq!(bad("/out box", ""), "kafka.cloudevents.source");
        assert_eq!(bad("/outbox", "event id"), "kafka.cloudevents.id-column");
        CloudEventsConfig::default().validate().unwrap();
    }
}

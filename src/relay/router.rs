//! The router: relation + inserted row → publish to a topic, reject, or
//! ignore. Pure: no I/O, no clock.
//!
//! Relation messages go through the decoder's [`RelationCache`] (the path
//! the fuzz target and benches exercise); each relation is resolved once
//! against the outbox tables (`outbox.table`, or every `outbox.tables`
//! entry with its own columns and topic template), and every Insert of it
//! is mapped with that result: one hash lookup by relation id per row,
//! whatever the number of tables. Rows of all tables share the one stream,
//! so they keep one commit order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::Config;
use crate::dead_letter::{self, DeadLetter, Reason};
use crate::decode::{
    self, Message, OutboxMapping, OutboxRecord, Relation, RelationCache, ResolvedRelation, Tuple,
};
use crate::error::{ConfigError, RelayError, Result};
use crate::sink::message::TxnMeta;
use crate::sink::route::{validate_topic, RouteFields, TopicTemplate};

/// Where a row goes.
#[derive(Debug)]
pub(crate) enum Route {
    /// Publish `rec` to `topic`.
    Publish {
        /// The decoded row.
        rec: Box<OutboxRecord>,
        /// Its topic (the row's `topic` column or the template).
        topic: String,
    },
    /// The row can never be published as it is (decoding, topic name or
    /// size): dead-letter it (one attempt: the check is deterministic) or
    /// block.
    Reject {
        /// The row id, when it could be read.
        row_id: Option<i64>,
        /// Its DLQ copy.
        dl: Box<DeadLetter>,
        /// Why, naming the row.
        message: String,
    },
    /// Another table in the publication.
    Ignore,
}

/// One outbox table: how its rows are read and routed.
struct Table {
    mapping: OutboxMapping,
    template: TopicTemplate,
    /// The table's name for the template's `{table}`.
    name: String,
    /// How errors name its rows: `outbox row` with one table (as always),
    /// `outbox row schema.table` with several (ids repeat across tables).
    row_label: String,
}

/// A relation of an outbox table, resolved.
struct Target {
    resolved: ResolvedRelation,
    /// Index into [`Router::tables`].
    table: usize,
}

/// Maps inserts of the outbox tables to topics.
pub(crate) struct Router {
    relations: RelationCache,
    tables: Vec<Table>,
    /// Per relation OID: its outbox table's mapping, or `None` for other
    /// tables.
    resolved: HashMap<u32, Option<Arc<Target>>>,
    max_payload_bytes: usize,
}

impl Router {
    /// The router for the outbox table(s) in `cfg`.
    pub(crate) fn new(cfg: &Config) -> Result<Self> {
        let multi = cfg.multi_table();
        let tables = cfg
            .per_table()
            .iter()
            .enumerate()
            .map(|(i, view)| {
                let template = TopicTemplate::parse(&view.kafka.topic_template).map_err(|msg| {
                    let key = if multi {
                        format!("outbox.tables[{i}].topic-template")
                    } else {
                        "kafka.topic-template".into()
                    };
                    ConfigError::new(key, msg)
                })?;
                let table = view.outbox_table();
                Ok(Table {
                    name: table.name.clone(),
                    row_label: if multi {
                        format!("outbox row {table}")
                    } else {
                        "outbox row".into()
                    },
                    mapping: OutboxMapping::new(table, view.column_names()),
                    template,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            relations: RelationCache::new(),
            tables,
            resolved: HashMap::new(),
            max_payload_bytes: cfg.relay.max_payload_bytes,
        })
    }

    /// One pgoutput row message (both delivery modes): a Relation is taken
    /// in here, an Insert comes back for routing, and the rest (types,
    /// origins, what the relay does not act on) is nothing to do.
    pub(crate) fn insert_of(&mut self, data: &bytes::Bytes) -> Result<Option<(u32, Tuple)>> {
        match decode::parse(data)? {
            Message::Relation(rel) => {
                self.relation(rel)?;
                Ok(None)
            }
            Message::Insert { relation_id, tuple } => Ok(Some((relation_id, tuple))),
            Message::Type { .. } | Message::Origin { .. } | Message::Other(_) => Ok(None),
        }
    }

    /// A Relation message: remember it and resolve it against the mapping
    /// of its table (if it is an outbox table).
    pub(crate) fn relation(&mut self, rel: Relation) -> Result<()> {
        let rel = self.relations.insert(rel);
        let mut target = None;
        for (i, t) in self.tables.iter().enumerate() {
            let resolved = t.mapping.resolve(&rel).map_err(|e| {
                RelayError::Environment(format!(
                    "outbox table {}.{} does not match its column mapping (outbox.columns): {e}",
                    rel.namespace, rel.name
                ))
            })?;
            if let Some(resolved) = resolved {
                target = Some(Arc::new(Target { resolved, table: i }));
                break;
            }
        }
        self.resolved.insert(rel.id, target);
        Ok(())
    }

    /// Route one inserted row of transaction `meta`.
    pub(crate) fn route(&self, relation_id: u32, tuple: &Tuple, meta: &TxnMeta) -> Result<Route> {
        let target = match self.resolved.get(&relation_id) {
            Some(Some(r)) => r,
            Some(None) => return Ok(Route::Ignore),
            None => {
                return Err(RelayError::Replication(
                    pgwire_replication::PgWireError::Protocol(format!(
                        "Insert for relation {relation_id} before its Relation message"
                    )),
                ))
            }
        };
        let table = &self.tables[target.table];
        let rec = match target.resolved.record(tuple) {
            Ok(rec) => rec,
            Err(row_err) => {
                let message = if self.tables.len() > 1 {
                    let id = row_err
                        .row_id
                        .map_or_else(|| "(id unknown)".to_string(), |id| format!("id={id}"));
                    format!("{} {id}: {}", table.row_label, row_err.kind)
                } else {
                    row_err.to_string()
                };
                let reason = reason(message, String::new(), true);
                let dl = dead_letter::from_row_error(&row_err, meta, &reason);
                return Ok(Route::Reject {
                    row_id: row_err.row_id,
                    dl: Box::new(dl),
                    message: reason.message,
                });
            }
        };
        let topic = match &rec.topic {
            Some(t) => t.clone(),
            None => table.template.render(&RouteFields {
                aggregate_type: &rec.aggregate_type,
                event_type: &rec.event_type,
                table: &table.name,
            }),
        };
        if let Some((problem, drop_value)) = self.local_check(&rec, &topic) {
            let reason = reason(
                format!("{} id={}: {problem}", table.row_label, rec.id),
                topic,
                drop_value,
            );
            let dl = dead_letter::from_record(&rec, meta, &reason);
            return Ok(Route::Reject {
                row_id: Some(rec.id),
                dl: Box::new(dl),
                message: reason.message,
            });
        }
        Ok(Route::Publish {
            rec: Box::new(rec),
            topic,
        })
    }

    /// Checks that fail before the broker is asked: the topic name and the
    /// payload size. Returns the problem and whether the value is at fault.
    fn local_check(&self, rec: &OutboxRecord, topic: &str) -> Option<(String, bool)> {
        if let Err(msg) = validate_topic(topic) {
            return Some((msg, false));
        }
        let limit = self.max_payload_bytes;
        if rec.payload.len() > limit {
            return Some((
                format!(
                    "event_data is {} bytes, over relay.max-payload-bytes = {limit}",
                    rec.payload.len()
                ),
                true,
            ));
        }
        None
    }
}

fn reason(message: String, original_topic: String, drop_value: bool) -> Reason {
    Reason {
        class: "permanent",
        message,
        original_topic,
        attempts: 1,
        first_failure: SystemTime::now(),
        drop_value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::fixtures::{outbox_insert_message, outbox_relation, relation_message};
    use crate::decode::{parse, Message};

    fn insert(router: &Router, id: i64, topic: Option<&str>) -> Route {
        let bytes = bytes::Bytes::from(outbox_insert_message(16384, id, None, topic));
        let Ok(Message::Insert { relation_id, tuple }) = parse(&bytes) else {
            panic!("not an insert")
        };
        router
            .route(relation_id, &tuple, &TxnMeta::new(100, 0))
            .unwrap()
    }

    fn router() -> Router {
        let mut c = Config::default();
        c.postgres.url = Some("postgres://u@h/d".into());
        let mut r = Router::new(&c).unwrap();
        let bytes = bytes::Bytes::from(relation_message(&outbox_relation(16384)));
        let Ok(Message::Relation(rel)) = parse(&bytes) else {
            panic!("not a relation")
        };
        r.relation(rel).unwrap();
        r
    }

    #[test]
    fn routes_by_template_or_column_and_rejects_bad_topics() {
        let r = router();
        match insert(&r, 1, None) {
            Route::Publish { topic, rec } => {
                assert_eq!(topic, "outbox.order");
                assert_eq!(rec.id, 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(insert(&r, 2, Some("custom")), Route::Publish { topic, .. } if topic == "custom")
        );
        assert!(matches!(
            insert(&r, 3, Some("bad topic!")),
            Route::Reject {
                row_id: Some(3),
                ..
            }
        ));
    }

    #[test]
    fn several_tables_route_by_relation_with_their_own_template() {
        let toml = r#"
            [postgres]
            url = "postgres://u@h/d"
            [kafka]
            brokers = "h:1"
            [[outbox.tables]]
            table = "public.outbox"
            [[outbox.tables]]
            table = "billing.outbox"
            topic-template = "billing.{table}.{aggregate_type}"
        "#;
        let c = Config::from_sources(Some(toml), &[], &Default::default()).unwrap();
        let mut r = Router::new(&c).unwrap();
        let mut billing = outbox_relation(2);
        billing.namespace = "billing".into();
        let mut other = outbox_relation(3);
        other.name = "orders".into();
        for rel in [outbox_relation(1), billing, other] {
            let bytes = bytes::Bytes::from(relation_message(&rel));
            let Ok(Message::Relation(rel)) = parse(&bytes) else {
                panic!()
            };
            r.relation(rel).unwrap();
        }
        let route = |oid, id| {
            let bytes = bytes::Bytes::from(outbox_insert_message(oid, id, None, None));
            let Ok(Message::Insert { relation_id, tuple }) = parse(&bytes) else {
                panic!()
            };
            r.route(relation_id, &tuple, &TxnMeta::new(1, 0)).unwrap()
        };
        assert!(matches!(route(1, 1), Route::Publish { topic, .. } if topic == "outbox.order"));
        assert!(
            matches!(route(2, 2), Route::Publish { topic, .. } if topic == "billing.outbox.order")
        );
        assert!(matches!(route(3, 3), Route::Ignore));
        // A row error names the table and the id.
        let bytes = bytes::Bytes::from(outbox_insert_message(2, 4, None, Some("bad topic!")));
        let Ok(Message::Insert { relation_id, tuple }) = parse(&bytes) else {
            panic!()
        };
        match r.route(relation_id, &tuple, &TxnMeta::new(1, 0)).unwrap() {
            Route::Reject { message, .. } => {
                assert!(message.contains("billing.outbox id=4"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_insert_before_its_relation_is_a_stream_error() {
        let c = {
            let mut c = Config::default();
            c.postgres.url = Some("postgres://u@h/d".into());
            c
        };
        let r = Router::new(&c).unwrap();
        let bytes = bytes::Bytes::from(outbox_insert_message(16384, 1, None, None));
        let Ok(Message::Insert { relation_id, tuple }) = parse(&bytes) else {
            panic!()
        };
        assert!(r.route(relation_id, &tuple, &TxnMeta::new(1, 0)).is_err());
    }
}

//! The per-session cache of Relation messages.
//!
//! pgoutput sends a Relation message before the first change of a table in a
//! replication session, and again whenever the table's definition changed
//! (e.g. `ALTER TABLE ... ADD COLUMN`). Inserts only carry the relation OID, so
//! the latest Relation per OID must be remembered; a re-sent Relation
//! replaces the previous entry and its column list is the one to use from
//! then on. The cache is only valid for one session: start a fresh one (or
//! [`RelationCache::clear`]) on reconnect.

use std::collections::HashMap;
use std::sync::Arc;

use super::pgoutput::Relation;

/// Latest [`Relation`] per relation OID.
#[derive(Debug, Clone, Default)]
pub struct RelationCache {
    relations: HashMap<u32, Arc<Relation>>,
}

impl RelationCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Store `relation`, replacing any earlier entry with the same OID, and
    /// return the shared handle now in the cache.
    pub fn insert(&mut self, relation: Relation) -> Arc<Relation> {
        let relation = Arc::new(relation);
        self.relations.insert(relation.id, Arc::clone(&relation));
        relation
    }

    /// The latest relation with this OID.
    pub fn get(&self, id: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&id)
    }

    /// Forget one relation.
    pub fn remove(&mut self, id: u32) -> Option<Arc<Relation>> {
        self.relations.remove(&id)
    }

    /// Forget everything (new replication session).
    pub fn clear(&mut self) {
        self.relations.clear();
    }

    /// Number of cached relations.
    pub fn len(&self) -> usize {
        self.relations.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::fixtures;
    use crate::decode::pgoutput::{parse, Message, RelationColumn};
    use bytes::Bytes;

    fn decode_relation(rel: &Relation) -> Relation {
        match parse(&Bytes::from(fixtures::relation_message(rel))) {
            Ok(Message::Relation(r)) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn insert_get_remove() {
        let mut cache = RelationCache::new();
        assert!(cache.is_empty());
        assert!(cache.get(1).is_none());
        let rel = fixtures::outbox_relation(100);
        let handle = cache.insert(rel.clone());
        assert_eq!(*handle, rel);
        assert_eq!(cache.len(), 1);
        assert!(Arc::ptr_eq(cache.get(100).expect("cached"), &handle));
        assert!(cache.get(101).is_none());
        assert!(cache.remove(100).is_some());
        assert!(cache.is_empty());
        cache.insert(rel);
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn resent_relation_replaces_entry() {
        let mut cache = RelationCache::new();
        let before = decode_relation(&fixtures::outbox_relation(100));
        let old = cache.insert(before.clone());

        // ALTER TABLE outbox ADD COLUMN tenant text: pgoutput re-sends R.
        let mut after = before.clone();
        after.columns.push(RelationColumn {
            flags: 0,
            name: "tenant".into(),
            type_id: 25,
            type_modifier: -1,
        });
        let after = decode_relation(&after);
        cache.insert(after.clone());

        assert_eq!(cache.len(), 1);
        let current = cache.get(100).expect("cached");
        assert_eq!(**current, after);
        assert_eq!(current.columns.len(), before.columns.len() + 1);
        // Holders of the old handle still see the old definition.
        assert_eq!(*old, before);
    }
}

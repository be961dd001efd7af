//! Which relation is the outbox table, and where its columns are.
//!
//! Resolving happens once per Relation message (at most once per schema
//! change), so the per-row path in [`extract`](super::extract) only indexes
//! by position and never searches column names.

use std::sync::Arc;

use super::names::{ColumnNames, TableName};
use crate::decode::pgoutput::Relation;
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
pub(super) struct Indices {
    pub(super) id: usize,
    pub(super) aggregate_type: usize,
    pub(super) aggregate_id: usize,
    pub(super) event_type: usize,
    pub(super) payload: usize,
    pub(super) headers: Option<usize>,
    pub(super) topic: Option<usize>,
    pub(super) event_id: Option<usize>,
}

/// The outbox relation with column positions resolved. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRelation {
    pub(super) relation: Arc<Relation>,
    pub(super) indices: Indices,
}

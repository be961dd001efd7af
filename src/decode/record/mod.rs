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
//!
//! The module is cut by concept, one file each:
//!
//! * `names`: the configured table and column names ([`TableName`],
//!   [`ColumnNames`]).
//! * `mapping`: recognising the outbox relation and resolving column
//!   positions once ([`OutboxMapping`], [`ResolvedRelation`]).
//! * `extract`: one tuple → one typed [`OutboxRecord`].
//! * `headers`: the `headers` JSON object → ordered Kafka headers.
//! * `error`: the row-level errors and their text ([`RowError`]).
//!
//! [`Relation`]: crate::decode::Relation
//! [`Tuple`]: crate::decode::Tuple

mod error;
mod extract;
mod headers;
mod mapping;
mod names;

#[cfg(test)]
mod tests;

pub use error::{RowError, RowErrorKind};
pub use extract::OutboxRecord;
pub use mapping::{MappingError, OutboxMapping, ResolvedRelation};
pub use names::{ColumnNames, TableName};

//! Decoding of the logical replication stream: pgoutput bytes → typed
//! messages → outbox records.
//!
//! `pgwire-replication` hands us Begin/Commit/logical-message events already
//! typed; every other pgoutput message (protocol version 1, text format)
//! arrives as the raw XLogData body and is decoded here in three steps:
//!
//! 1. [`parse`] turns one XLogData body into a [`Message`]
//!    ([`pgoutput`]).
//! 2. [`RelationCache`] remembers the latest [`Relation`] per OID; pgoutput
//!    sends one before the first change of a table in a session and again
//!    after every schema change ([`relation`]).
//! 3. [`OutboxMapping`] recognises the outbox table and resolves column
//!    positions once per relation ([`ResolvedRelation`]), which then maps each
//!    inserted [`Tuple`] to an [`OutboxRecord`] ([`record`]).
//!
//! Design constraints, and why:
//!
//! * **Pure.** No I/O, no clocks, no globals: everything here is unit-testable
//!   with hand-built byte fixtures and fuzzable.
//! * **Panic-free on any input.** The bytes come from the network; a corrupt
//!   or unexpected message must become a [`DecodeError`] (stream-level, fatal)
//!   or a [`RowError`] (row-level, permanent), never a crash that would
//!   restart the relay into the same message forever. Outside tests, the
//!   module denies indexing, `unwrap`/`expect` and explicit panics via clippy,
//!   and allocation sizes taken from the input are capped by the bytes that
//!   remain.
//! * **Zero-copy where cheap.** Column values are [`bytes::Bytes`] slices of
//!   the received buffer (a reference-count bump, no copy); the event payload
//!   is forwarded to Kafka exactly as PostgreSQL rendered it. Short names
//!   (schema, table, columns, keys) are copied into `String`s.

#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]

#[doc(hidden)]
pub mod fixtures;
pub mod pgoutput;
pub mod record;
pub mod relation;

#[cfg(test)]
mod robustness_tests;

pub use pgoutput::{parse, DecodeError, Message, Relation, RelationColumn, Tuple, Value};
pub use record::{
    ColumnNames, MappingError, OutboxMapping, OutboxRecord, ResolvedRelation, RowError,
    RowErrorKind, TableName,
};
pub use relation::RelationCache;

//! The decoded pgoutput messages: the types the rest of the relay sees,
//! kept apart from the byte layout that produces them.
use bytes::Bytes;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `R`: table metadata, sent before the first change of a table in a
    /// session and again after it changes.
    Relation(Relation),
    /// `I`: a new row.
    Insert {
        /// OID of the relation; look it up in the
        /// [`RelationCache`](crate::decode::RelationCache).
        relation_id: u32,
        /// The new tuple, one value per relation column.
        tuple: Tuple,
    },
    /// `Y`: a non-builtin data type used by a following Relation.
    Type {
        /// Type OID.
        id: u32,
        /// Schema of the type (`pg_catalog` when PostgreSQL sent it empty).
        namespace: String,
        /// Type name.
        name: String,
    },
    /// `O`: the changes that follow originated on another node.
    Origin {
        /// Commit LSN on the origin server.
        lsn: u64,
        /// Origin name.
        name: String,
    },
    /// A known message we deliberately ignore (`U`, `D`, `T`, `B`, `C`,
    /// `M`); carries the tag byte. Its body is not inspected.
    Other(u8),
}

/// Metadata of one table, from a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Relation OID.
    pub id: u32,
    /// Schema. PostgreSQL sends an empty string for `pg_catalog`; [`parse`]
    /// substitutes `pg_catalog` so names compare as written.
    ///
    /// [`parse`]: super::parse
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Replica identity setting: `d` default, `n` nothing, `f` full,
    /// `i` index.
    pub replica_identity: u8,
    /// Columns in tuple order (dropped and generated columns are not sent).
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Bit 0 set: the column is part of the replica identity key.
    pub flags: u8,
    /// Column name as stored in the catalog (case-sensitive).
    pub name: String,
    /// Data type OID.
    pub type_id: u32,
    /// Type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
}

/// The column values of one row, in relation column order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tuple(pub Vec<Value>);

/// One column value of a [`Tuple`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `n`: SQL NULL.
    Null,
    /// `u`: an unchanged TOASTed value whose content was not sent (updates
    /// only; never part of an insert).
    UnchangedToast,
    /// `t`: the value in PostgreSQL text output format; a slice of the input.
    Text(Bytes),
    /// `b`: the value in binary format (only with the `binary` option, which
    /// the relay does not request); a slice of the input.
    Binary(Bytes),
}

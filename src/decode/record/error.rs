//! Row-level errors: one outbox row cannot be published, the stream is
//! fine. Their text is what operators see in logs and the DLQ, so it lives
//! in one place and names the row id whenever it is known.

use std::fmt;
/// One outbox row cannot be turned into a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outbox row {}: {kind}", RowLabel(*.row_id))]
pub struct RowError {
    /// The row id, when it could be decoded.
    pub row_id: Option<i64>,
    /// What is wrong.
    pub kind: RowErrorKind,
}

struct RowLabel(Option<i64>);

impl fmt::Display for RowLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "id={id}"),
            None => f.write_str("(id unknown)"),
        }
    }
}

/// What is wrong with a row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowErrorKind {
    /// A required column is NULL.
    #[error("column {0} is NULL")]
    NullColumn(String),
    /// A value arrived in binary format.
    #[error("column {column} is not in text format")]
    NotText {
        /// Column name.
        column: String,
    },
    /// A text value is not valid UTF-8.
    #[error("column {column} is not valid UTF-8")]
    InvalidUtf8 {
        /// Column name.
        column: String,
    },
    /// The id is not a 64-bit integer; carries (the start of) the value.
    #[error("id {0:?} is not a 64-bit integer")]
    BadId(String),
    /// The headers column is not a JSON object.
    #[error("headers are not a JSON object: {reason}")]
    BadHeaders {
        /// Parser message.
        reason: String,
    },
    /// The tuple's column count differs from the relation's.
    #[error("tuple has {got} columns but the relation has {expected}")]
    ColumnCountMismatch {
        /// Relation column count.
        expected: usize,
        /// Tuple column count.
        got: usize,
    },
    /// A value was not sent because it is an unchanged TOASTed value.
    #[error("column {column} is an unchanged TOASTed value that was not sent")]
    UnchangedToast {
        /// Column name.
        column: String,
    },
}

//! pgoutput message decoding (protocol version 1, text format).
//!
//! Reference: PostgreSQL documentation, "Logical Replication Message
//! Formats". All integers are big-endian; strings are NUL-terminated and
//! decoded as UTF-8.
//!
//! Only the messages the relay needs are decoded in full: Relation (`R`),
//! Insert (`I`), Type (`Y`) and Origin (`O`). Update, Delete, Truncate (the
//! outbox is append-only) and Begin, Commit, logical Message (already typed by
//! `pgwire-replication`) are recognised by tag and returned as
//! [`Message::Other`] without inspecting their body. Any other tag, including
//! the streaming and two-phase messages of protocol versions 2+, is an
//! [`DecodeError::UnknownTag`]: we asked for version 1, so seeing one means
//! the stream is not what we think it is.
//!
//! Files: `message` (the decoded types), `error` ([`DecodeError`] and
//! its text), `parser` (the per-tag body layouts, [`parse`]) and
//! `reader` (the bounds-checked cursor that makes parsing panic-free).

mod error;
mod message;
mod parser;
mod reader;

#[cfg(test)]
mod tests;

pub use error::DecodeError;
pub use message::{Message, Relation, RelationColumn, Tuple, Value};
pub use parser::parse;

//! Stream-level decode errors. Each one means the stream is corrupt or not
//! protocol version 1 (fatal for the stream, never a row error), and its
//! text names the field and byte offset so a bad message can be found.
/// A pgoutput message that cannot be decoded. This means the stream is
/// corrupt or not protocol version 1, never that one row is bad.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Zero-length message.
    #[error("empty pgoutput message")]
    Empty,
    /// First byte is not a protocol version 1 message tag.
    #[error("unknown pgoutput message tag {}", tag_label(.0))]
    UnknownTag(u8),
    /// The message ended (or a string lacked its NUL) while reading a field.
    #[error("pgoutput message truncated while reading {what} at byte offset {offset}")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Byte offset in the message where the field starts.
        offset: usize,
    },
    /// A string field is not valid UTF-8.
    #[error("pgoutput {what} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field being read.
        what: &'static str,
    },
    /// A TupleData column kind other than `n`, `u`, `t`, `b`.
    #[error("unknown tuple column kind {}", tag_label(.0))]
    UnknownTupleKind(u8),
    /// A length field is negative.
    #[error("negative length {len} for {what} at byte offset {offset}")]
    NegativeLength {
        /// The field whose length it is.
        what: &'static str,
        /// Byte offset of the length field.
        offset: usize,
        /// The value read.
        len: i32,
    },
    /// Bytes left over after a complete message.
    #[error("{count} trailing byte(s) after a complete {} message (at byte offset {offset})", tag_label(.tag))]
    TrailingBytes {
        /// Tag of the message.
        tag: u8,
        /// Where the message ended.
        offset: usize,
        /// How many bytes follow.
        count: usize,
    },
    /// An Insert whose tuple marker is not `N`.
    #[error("insert message: expected new-tuple marker 'N', found {}", tag_label(.0))]
    BadInsertMarker(u8),
}

/// `'R'` for printable ASCII, `0x07` otherwise.
fn tag_label(b: &u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", char::from(*b))
    } else {
        format!("0x{b:02x}")
    }
}

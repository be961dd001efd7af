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
        /// [`RelationCache`](super::RelationCache).
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

/// Smallest encoding of one Relation column: flags (1), empty name (1),
/// type OID (4), typmod (4).
const MIN_RELATION_COLUMN_LEN: usize = 10;
/// Smallest encoding of one TupleData column: the kind byte.
const MIN_TUPLE_COLUMN_LEN: usize = 1;

/// Decode one pgoutput message (an XLogData body, tag byte first).
///
/// Panic-free on any input; the returned [`Value`]s share `data`'s buffer.
pub fn parse(data: &Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader { buf: data, pos: 0 };
    let tag = match r.u8("message tag") {
        Ok(tag) => tag,
        Err(_) => return Err(DecodeError::Empty),
    };
    let msg = match tag {
        b'R' => Message::Relation(relation(&mut r)?),
        b'I' => insert(&mut r)?,
        b'Y' => Message::Type {
            id: r.u32("type oid")?,
            namespace: namespace(r.cstring("type namespace")?),
            name: r.cstring("type name")?,
        },
        b'O' => Message::Origin {
            lsn: r.u64("origin lsn")?,
            name: r.cstring("origin name")?,
        },
        b'U' | b'D' | b'T' | b'B' | b'C' | b'M' => return Ok(Message::Other(tag)),
        other => return Err(DecodeError::UnknownTag(other)),
    };
    r.finish(tag)?;
    Ok(msg)
}

fn namespace(s: String) -> String {
    if s.is_empty() {
        "pg_catalog".to_owned()
    } else {
        s
    }
}

fn relation(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
    let id = r.u32("relation oid")?;
    let namespace = namespace(r.cstring("relation namespace")?);
    let name = r.cstring("relation name")?;
    let replica_identity = r.u8("relation replica identity")?;
    let ncols = usize::from(r.u16("relation column count")?);
    let cap = ncols.min(r.remaining() / MIN_RELATION_COLUMN_LEN);
    let mut columns = Vec::with_capacity(cap);
    for _ in 0..ncols {
        columns.push(RelationColumn {
            flags: r.u8("relation column flags")?,
            name: r.cstring("relation column name")?,
            type_id: r.u32("relation column type oid")?,
            type_modifier: r.i32("relation column type modifier")?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn insert(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let relation_id = r.u32("insert relation oid")?;
    match r.u8("insert tuple marker")? {
        b'N' => {}
        other => return Err(DecodeError::BadInsertMarker(other)),
    }
    let tuple = tuple_data(r)?;
    Ok(Message::Insert { relation_id, tuple })
}

fn tuple_data(r: &mut Reader<'_>) -> Result<Tuple, DecodeError> {
    let ncols = usize::from(r.u16("tuple column count")?);
    let cap = ncols.min(r.remaining() / MIN_TUPLE_COLUMN_LEN);
    let mut values = Vec::with_capacity(cap);
    for _ in 0..ncols {
        let value = match r.u8("tuple column kind")? {
            b'n' => Value::Null,
            b'u' => Value::UnchangedToast,
            b't' => Value::Text(r.sized("tuple text value")?),
            b'b' => Value::Binary(r.sized("tuple binary value")?),
            other => return Err(DecodeError::UnknownTupleKind(other)),
        };
        values.push(value);
    }
    Ok(Tuple(values))
}

/// Bounds-checked cursor over one message.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let offset = self.pos;
        let truncated = DecodeError::Truncated { what, offset };
        let end = offset.checked_add(n).ok_or(truncated.clone())?;
        let s = self.buf.get(offset..end).ok_or(truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let offset = self.pos;
        let s = self.take(N, what)?;
        <[u8; N]>::try_from(s).map_err(|_| DecodeError::Truncated { what, offset })
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(what).map(u8::from_be_bytes)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.array(what).map(u16::from_be_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_be_bytes)
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.array(what).map(i32::from_be_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.array(what).map(u64::from_be_bytes)
    }

    /// NUL-terminated UTF-8 string; the NUL is consumed.
    fn cstring(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let rest = self.rest();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated { what, offset })?;
        let raw = self.take(nul, what)?;
        self.take(1, what)?;
        let s = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8 { what })?;
        Ok(s.to_owned())
    }

    /// Int32 length followed by that many bytes, returned as a slice of the
    /// input buffer.
    fn sized(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len_offset = self.pos;
        let len = self.i32(what)?;
        let len = usize::try_from(len).map_err(|_| DecodeError::NegativeLength {
            what,
            offset: len_offset,
            len,
        })?;
        let start = self.pos;
        self.take(len, what)?;
        // `take` proved start..self.pos is within the buffer.
        Ok(self.buf.slice(start..self.pos))
    }

    fn finish(&self, tag: u8) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                tag,
                offset: self.pos,
                count,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::fixtures;

    fn users_relation() -> Relation {
        Relation {
            id: 16384,
            namespace: "public".into(),
            name: "users".into(),
            replica_identity: b'd',
            columns: vec![
                RelationColumn {
                    flags: 1,
                    name: "id".into(),
                    type_id: 20,
                    type_modifier: -1,
                },
                RelationColumn {
                    flags: 0,
                    name: "name".into(),
                    type_id: 1043,
                    type_modifier: 68,
                },
            ],
        }
    }

    fn parse_vec(v: Vec<u8>) -> Result<Message, DecodeError> {
        parse(&Bytes::from(v))
    }

    #[test]
    fn relation_roundtrip() {
        let rel = users_relation();
        let msg = parse_vec(fixtures::relation_message(&rel)).expect("parse");
        assert_eq!(msg, Message::Relation(rel));
    }

    #[test]
    fn relation_exact_bytes() {
        // Hand-written, independent of the fixture encoder.
        let mut b = vec![b'R', 0, 0, 0x40, 0];
        b.extend_from_slice(b"public\0t\0");
        b.push(b'f');
        b.extend_from_slice(&[0, 1]);
        b.push(1);
        b.extend_from_slice(b"id\0");
        b.extend_from_slice(&23u32.to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        let Message::Relation(rel) = parse_vec(b).expect("parse") else {
            panic!("not a relation");
        };
        assert_eq!(rel.id, 0x4000);
        assert_eq!(rel.namespace, "public");
        assert_eq!(rel.name, "t");
        assert_eq!(rel.replica_identity, b'f');
        assert_eq!(
            rel.columns,
            vec![RelationColumn {
                flags: 1,
                name: "id".into(),
                type_id: 23,
                type_modifier: -1
            }]
        );
    }

    #[test]
    fn relation_with_no_columns() {
        let mut rel = users_relation();
        rel.columns.clear();
        let msg = parse_vec(fixtures::relation_message(&rel)).expect("parse");
        assert_eq!(msg, Message::Relation(rel));
    }

    #[test]
    fn empty_namespace_means_pg_catalog() {
        let mut rel = users_relation();
        rel.namespace = String::new();
        let Message::Relation(got) = parse_vec(fixtures::relation_message(&rel)).expect("parse")
        else {
            panic!("not a relation");
        };
        assert_eq!(got.namespace, "pg_catalog");
        assert_eq!(got.name, "users");

        let ty = parse_vec(fixtures::type_message(7, "", "mytype")).expect("parse");
        assert_eq!(
            ty,
            Message::Type {
                id: 7,
                namespace: "pg_catalog".into(),
                name: "mytype".into()
            }
        );
    }

    #[test]
    fn insert_with_nulls_is_zero_copy() {
        let data = Bytes::from(fixtures::insert_message(
            16384,
            &[Some(b"42"), None, Some(b""), Some("h\u{e9}".as_bytes())],
        ));
        let msg = parse(&data).expect("parse");
        let Message::Insert { relation_id, tuple } = msg else {
            panic!("not an insert");
        };
        assert_eq!(relation_id, 16384);
        assert_eq!(
            tuple.0,
            vec![
                Value::Text(Bytes::from_static(b"42")),
                Value::Null,
                Value::Text(Bytes::new()),
                Value::Text(Bytes::from("h\u{e9}")),
            ]
        );
        // The text value points into the input buffer.
        let Value::Text(first) = &tuple.0[0] else {
            panic!()
        };
        let range = data.as_ptr_range();
        assert!(range.contains(&first.as_ptr()));
    }

    #[test]
    fn insert_unchanged_toast_and_binary() {
        let data = fixtures::insert_message_values(
            1,
            &[
                Value::UnchangedToast,
                Value::Binary(Bytes::from_static(&[0, 0, 0, 1])),
            ],
        );
        let Message::Insert { tuple, .. } = parse_vec(data).expect("parse") else {
            panic!("not an insert");
        };
        assert_eq!(
            tuple.0,
            vec![
                Value::UnchangedToast,
                Value::Binary(Bytes::from_static(&[0, 0, 0, 1]))
            ]
        );
    }

    #[test]
    fn type_and_origin() {
        assert_eq!(
            parse_vec(fixtures::type_message(16500, "public", "mood")).expect("parse"),
            Message::Type {
                id: 16500,
                namespace: "public".into(),
                name: "mood".into()
            }
        );
        assert_eq!(
            parse_vec(fixtures::origin_message(0x0102_0304_0506_0708, "node_a")).expect("parse"),
            Message::Origin {
                lsn: 0x0102_0304_0506_0708,
                name: "node_a".into()
            }
        );
    }

    #[test]
    fn ignored_tags() {
        for tag in [b'U', b'D', b'T', b'B', b'C', b'M'] {
            assert_eq!(parse_vec(vec![tag]), Ok(Message::Other(tag)));
            assert_eq!(parse_vec(vec![tag, 1, 2, 3]), Ok(Message::Other(tag)));
        }
    }

    #[test]
    fn empty_and_unknown_tags() {
        assert_eq!(parse(&Bytes::new()), Err(DecodeError::Empty));
        for tag in [0u8, b'X', b'S', b'E', b'c', b'r', b'i', 0xff] {
            assert_eq!(
                parse_vec(vec![tag, 0, 0]),
                Err(DecodeError::UnknownTag(tag))
            );
        }
        let msg = DecodeError::UnknownTag(0xff).to_string();
        assert!(msg.contains("0xff"), "{msg}");
        let msg = DecodeError::UnknownTag(b'X').to_string();
        assert!(msg.contains("'X'"), "{msg}");
    }

    #[test]
    fn every_prefix_of_valid_messages_is_an_error() {
        let mut rel = users_relation();
        rel.columns[1].name = "display_name".into();
        let messages = [
            fixtures::relation_message(&rel),
            fixtures::insert_message(16384, &[Some(b"42"), None, Some(b"{\"a\": 1}")]),
            fixtures::insert_message_values(
                9,
                &[
                    Value::UnchangedToast,
                    Value::Binary(Bytes::from_static(b"xy")),
                ],
            ),
            fixtures::type_message(1, "public", "t"),
            fixtures::origin_message(5, "o"),
        ];
        for full in messages {
            assert!(parse_vec(full.clone()).is_ok());
            for len in 0..full.len() {
                let prefix = full.get(..len).expect("prefix").to_vec();
                let err = parse_vec(prefix).expect_err("prefix must not parse");
                assert!(
                    matches!(err, DecodeError::Empty | DecodeError::Truncated { .. }),
                    "prefix {len} of {full:?}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn truncation_names_the_field() {
        let full = fixtures::insert_message(3, &[Some(b"hello")]);
        // tag(1) oid(4) 'N'(1) ncols(2) kind(1) len(4) -> value starts at 13
        let err = parse_vec(full[..15].to_vec()).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Truncated {
                what: "tuple text value",
                offset: 13
            }
        );
        assert!(err.to_string().contains("tuple text value"));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut data = fixtures::insert_message(3, &[Some(b"x")]);
        let end = data.len();
        data.extend_from_slice(b"zz");
        assert_eq!(
            parse_vec(data),
            Err(DecodeError::TrailingBytes {
                tag: b'I',
                offset: end,
                count: 2
            })
        );
        let mut data = fixtures::relation_message(&users_relation());
        data.push(0);
        assert!(matches!(
            parse_vec(data),
            Err(DecodeError::TrailingBytes { tag: b'R', .. })
        ));
    }

    #[test]
    fn huge_column_counts_with_tiny_body_fail_fast() {
        let start = std::time::Instant::now();
        // Insert claiming 65535 columns, body ends immediately.
        let mut data = vec![b'I', 0, 0, 0, 1, b'N', 0xff, 0xff];
        assert!(matches!(
            parse_vec(data.clone()),
            Err(DecodeError::Truncated {
                what: "tuple column kind",
                ..
            })
        ));
        // ... with a few valid NULL columns.
        data.extend_from_slice(b"nnn");
        assert!(matches!(
            parse_vec(data),
            Err(DecodeError::Truncated { .. })
        ));
        // Relation claiming 65535 columns.
        let mut rel = fixtures::relation_message(&Relation {
            columns: vec![],
            ..users_relation()
        });
        let n = rel.len();
        rel[n - 2] = 0xff;
        rel[n - 1] = 0xff;
        assert!(matches!(
            parse_vec(rel),
            Err(DecodeError::Truncated {
                what: "relation column flags",
                ..
            })
        ));
        // A text value claiming 2 GiB.
        let data = vec![
            b'I', 0, 0, 0, 1, b'N', 0, 1, b't', 0x7f, 0xff, 0xff, 0xff, b'a',
        ];
        assert!(matches!(
            parse_vec(data),
            Err(DecodeError::Truncated {
                what: "tuple text value",
                ..
            })
        ));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn negative_length() {
        let data = vec![b'I', 0, 0, 0, 1, b'N', 0, 1, b'b', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            parse_vec(data),
            Err(DecodeError::NegativeLength {
                what: "tuple binary value",
                offset: 9,
                len: -1
            })
        );
    }

    #[test]
    fn bad_insert_marker_and_tuple_kind() {
        let data = vec![b'I', 0, 0, 0, 1, b'K', 0, 0];
        assert_eq!(parse_vec(data), Err(DecodeError::BadInsertMarker(b'K')));
        let data = vec![b'I', 0, 0, 0, 1, b'N', 0, 1, b'x'];
        assert_eq!(parse_vec(data), Err(DecodeError::UnknownTupleKind(b'x')));
    }

    #[test]
    fn invalid_utf8_names_the_field() {
        let mut rel = fixtures::relation_message(&users_relation());
        // Corrupt the first byte of the table name "users".
        let pos = rel
            .windows(6)
            .position(|w| w == b"users\0")
            .expect("name present");
        rel[pos] = 0xff;
        let err = parse_vec(rel).unwrap_err();
        assert_eq!(
            err,
            DecodeError::InvalidUtf8 {
                what: "relation name"
            }
        );
        assert!(err.to_string().contains("relation name"));

        let mut origin = fixtures::origin_message(1, "ab");
        let n = origin.len();
        origin[n - 2] = 0xc3; // lone lead byte
        assert_eq!(
            parse_vec(origin),
            Err(DecodeError::InvalidUtf8 {
                what: "origin name"
            })
        );
    }

    #[test]
    fn missing_nul_terminator_is_truncation() {
        let data = vec![b'Y', 0, 0, 0, 1, b'p', b'u', b'b'];
        assert_eq!(
            parse_vec(data),
            Err(DecodeError::Truncated {
                what: "type namespace",
                offset: 5
            })
        );
    }
}

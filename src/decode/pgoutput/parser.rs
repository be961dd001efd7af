//! [`parse`]: the tag dispatch and the body layout of each message the
//! relay decodes in full (Relation, Insert with its TupleData, Type, Origin).
//!
//! Every read goes through [`Reader`], so this file is only about layout;
//! allocation sizes taken from the input are capped by the bytes that remain.
use bytes::Bytes;

use super::error::DecodeError;
use super::message::{Message, Relation, RelationColumn, Tuple, Value};
use super::reader::Reader;
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

//! The bounds-checked cursor every pgoutput field is read through. Every
//! access to the input bytes happens here, through `get` and checked
//! arithmetic, so the decoder stays panic-free on any input.
use bytes::Bytes;

use super::error::DecodeError;
/// Bounds-checked cursor over one message.
pub(super) struct Reader<'a> {
    pub(super) buf: &'a Bytes,
    pub(super) pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn remaining(&self) -> usize {
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

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(what).map(u8::from_be_bytes)
    }

    pub(super) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.array(what).map(u16::from_be_bytes)
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_be_bytes)
    }

    pub(super) fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.array(what).map(i32::from_be_bytes)
    }

    pub(super) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.array(what).map(u64::from_be_bytes)
    }

    /// NUL-terminated UTF-8 string; the NUL is consumed.
    pub(super) fn cstring(&mut self, what: &'static str) -> Result<String, DecodeError> {
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
    pub(super) fn sized(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
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

    pub(super) fn finish(&self, tag: u8) -> Result<(), DecodeError> {
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

//! Little-endian encoding with bounds-checked decoding: every structure read from disk goes
//! through [`Dec`], which names the structure in the error when bytes run out or a value is
//! out of range.

use crate::error::{Error, Result};

/// Appends little-endian values to a byte vector.
#[derive(Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    /// An empty encoder.
    pub fn new() -> Self {
        Self(Vec::new())
    }
    /// Appends a byte.
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    /// Appends a u16.
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a u32.
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a u64.
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends an i64.
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a u32 length and the bytes.
    pub fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Reads little-endian values from a slice, failing with [`Error::Corrupt`] naming
/// `structure` instead of reading past the end.
pub struct Dec<'a> {
    buf: &'a [u8],
    at: usize,
    /// The structure being decoded, for error messages.
    pub structure: &'static str,
}

impl<'a> Dec<'a> {
    /// Decodes `buf` as `structure`.
    pub fn new(buf: &'a [u8], structure: &'static str) -> Self {
        Self {
            buf,
            at: 0,
            structure,
        }
    }

    /// A corruption error for this structure.
    pub fn err(&self, detail: impl Into<String>) -> Error {
        Error::corrupt(self.structure, detail)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(self.err(format!(
                "ends after {} bytes, {} more needed at offset {}",
                self.buf.len(),
                n,
                self.at
            )));
        };
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// Reads a byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    /// Reads a u16.
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    /// Reads a u32.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// Reads a u64.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// Reads an i64.
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    /// Reads a u32 length and that many bytes, at most `max`.
    pub fn bytes(&mut self, max: usize, what: &str) -> Result<Vec<u8>> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(self.err(format!("{what} is {n} bytes long, at most {max} allowed")));
        }
        Ok(self.take(n)?.to_vec())
    }
    /// Reads a count of items, each at least `min_item` bytes, refusing counts the remaining
    /// bytes cannot hold (so an absurd count cannot make us allocate).
    pub fn count(&mut self, min_item: usize, what: &str) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item.max(1)) > self.remaining() {
            return Err(self.err(format!(
                "claims {n} {what}, more than its remaining {} bytes can hold",
                self.remaining()
            )));
        }
        Ok(n)
    }
    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.at
    }
    /// Offset of the next byte.
    pub fn pos(&self) -> usize {
        self.at
    }
}

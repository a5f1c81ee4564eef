//! SEEK_DATA and SEEK_HOLE over the filesystem's mapping and the cache.
//!
//! Holes are holes; unwritten extents are holes except where the cache holds uptodate blocks
//! over them; everything else (mapped, delalloc, inline) is data.

use crate::error::{Error, Result};
use crate::iomap::{IomapKind, IomapOps, IterFlags};
use crate::iter::IomapIter;
use crate::mapping::Mapping;

/// The first offset at or after `pos` that holds data; `NoSuchOffset` (ENXIO) when `pos` is
/// at or past EOF or only holes follow.
pub fn seek_data(mapping: &Mapping, ops: &dyn IomapOps, pos: u64) -> Result<u64> {
    seek(mapping, ops, pos, true)?.ok_or(Error::NoSuchOffset(pos))
}

/// The first offset at or after `pos` that starts a hole, or EOF (every file ends in an
/// implicit hole); `NoSuchOffset` (ENXIO) when `pos` is at or past EOF.
pub fn seek_hole(mapping: &Mapping, ops: &dyn IomapOps, pos: u64) -> Result<u64> {
    let size = mapping.size();
    Ok(seek(mapping, ops, pos, false)?.unwrap_or(size).min(size))
}

/// The first offset at or after `pos` holding data (`want_data`) or a hole, if any before EOF.
fn seek(mapping: &Mapping, ops: &dyn IomapOps, pos: u64, want_data: bool) -> Result<Option<u64>> {
    let size = mapping.size();
    if pos >= size {
        return Err(Error::NoSuchOffset(pos));
    }
    let mut found = None;
    let (_, res) = IomapIter::new(ops, pos, size - pos, IterFlags::REPORT).run(|it| {
        let end = it.pos() + it.length();
        let at = match it.iomap().kind {
            IomapKind::Hole => (!want_data).then_some(it.pos()),
            IomapKind::Unwritten => mapping.seek_cached(it.pos(), end, want_data),
            _ => want_data.then_some(it.pos()),
        };
        match at {
            Some(at) => found = Some(at), // no progress: iteration stops here
            None => it.advance_full(),
        }
        Ok(())
    });
    res?;
    Ok(found)
}

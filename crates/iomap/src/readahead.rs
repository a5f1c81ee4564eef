//! On-demand readahead with Linux's semantics (`mm/readahead.c`): state per open file, a
//! synchronous window when a read misses the cache, an asynchronous one when a read reaches
//! the folio carrying the readahead marker, a window that ramps up to a maximum, random reads
//! left alone, and the hints of `posix_fadvise`.
//!
//! A window is `[start, start + size)`; its last `async_size` bytes are read ahead of need,
//! and the folio at `start + size - async_size` carries the marker. A reader that reaches the
//! marker starts the next window, so a sequential reader finds its data already read (or in
//! flight) and the device sees one large request per window. Lock order: the state's lock,
//! then the mapping's invalidate lock (taken by [`readahead`]), then folio locks.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::Result;
use crate::iomap::IomapOps;
use crate::mapping::Mapping;
use crate::read::{buffered_read, read_stream, readahead, readahead_marked};
use crate::writeback::{writepages, WritebackControl, WritebackOps};

/// The default largest window: 4 MiB, four full device requests on most devices here, so a
/// sequential reader keeps several in flight (Linux's default is 128 KiB, raised to the
/// device's optimal I/O size). With a window of one request the device waits while the reader
/// copies: a cold 4 GiB read ran at about 0.6x `O_DIRECT` reads of 1 MiB, against about 1x with
/// 4 MiB (`iomapfs bench --only cold-read`).
pub const DEFAULT_MAX_READAHEAD: u64 = 4 << 20;

/// What `posix_fadvise` says of the coming access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    /// No particular pattern: readahead as usual.
    Normal,
    /// Sequential: windows up to twice the maximum.
    Sequential,
    /// Random: no readahead, each read reads what it asks for.
    Random,
}

#[derive(Debug, Default)]
struct Window {
    start: u64,
    size: u64,
    async_size: u64,
    /// Where the last read ended: a read starting here continues a sequential stream.
    prev_end: u64,
}

/// Readahead state of one open file (the kernel's `file_ra_state`).
#[derive(Debug)]
pub struct RaState {
    max: u64,
    inner: Mutex<(Window, Advice)>,
}

impl Default for RaState {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_READAHEAD)
    }
}

/// The first window for a read of `req` bytes: four times the read for small reads, twice for
/// medium ones, the maximum for large ones.
fn init_size(req: u64, max: u64) -> u64 {
    let size = req.max(1).next_power_of_two();
    let size = if size <= max / 32 {
        size * 4
    } else if size <= max / 4 {
        size * 2
    } else {
        max
    };
    size.min(max)
}

/// The window after one of `cur` bytes: quadruple while small, then double, up to `max`.
fn next_size(cur: u64, max: u64) -> u64 {
    let next = if cur < max / 16 {
        cur * 4
    } else if cur <= max / 2 {
        cur * 2
    } else {
        max
    };
    next.min(max)
}

impl RaState {
    /// State with windows of at most `max_bytes` (0 turns readahead off).
    pub fn new(max_bytes: u64) -> Self {
        Self {
            max: max_bytes,
            inner: Mutex::new((Window::default(), Advice::Normal)),
        }
    }

    /// Applies a `posix_fadvise` hint to later reads.
    pub fn advise(&self, advice: Advice) {
        self.inner.lock().1 = advice;
    }

    /// The current window `(start, size, async_size)`, for tests and statistics.
    pub fn window(&self) -> (u64, u64, u64) {
        let g = self.inner.lock();
        (g.0.start, g.0.size, g.0.async_size)
    }

    fn max_for(&self, advice: Advice) -> u64 {
        match advice {
            Advice::Sequential => self.max.saturating_mul(2),
            _ => self.max,
        }
    }
}

/// A window to submit: `[start, start + size)`, with the marker on the folio at `mark`.
#[derive(Clone, Copy, Debug)]
struct Plan {
    start: u64,
    size: u64,
    mark: Option<u64>,
}

/// Reads up to `dst.len()` bytes at `pos` as [`buffered_read`] does, first starting the
/// readahead `ra` calls for: a window from the first missing folio when the read misses the
/// cache, the next window when it reaches the readahead marker. The windows are worked out
/// under the state's lock and submitted after it is dropped, so readers of one file do not
/// wait on each other's extent lookups.
pub fn buffered_read_ra(
    mapping: &Mapping,
    ops: &dyn IomapOps,
    ra: &RaState,
    pos: u64,
    dst: &mut [u8],
) -> Result<usize> {
    let size = mapping.size();
    let end = pos.saturating_add(dst.len() as u64).min(size);
    let mut plans: Vec<Plan> = Vec::new();
    if pos < end && ra.max > 0 {
        let mut g = ra.inner.lock();
        let (w, advice) = &mut *g;
        let max = ra.max_for(*advice);
        // Random advice reads what is asked for and leaves the state alone.
        if *advice != Advice::Random {
            let granule = mapping.min_folio_size() as u64;
            if let Some(gap) = first_gap(mapping, pos, end) {
                if sync_window(w, *advice, max, granule, pos, gap, end) {
                    mapping.cache().stats().readahead_sync.add(1);
                    let mark = (w.start + w.size).saturating_sub(w.async_size);
                    if mark < end {
                        // The read is as large as the window: its marker would be reached
                        // at once, so the next window goes out now too.
                        plans.push(Plan {
                            start: w.start,
                            size: w.size,
                            mark: None,
                        });
                        next_window(w, max);
                    }
                    plans.push(plan_of(w));
                }
            } else if let Some((mpos, mend)) = take_marker(mapping, pos, end) {
                if async_window(mapping, w, max, mpos, mend, end) {
                    mapping.cache().stats().readahead_async.add(1);
                    plans.push(plan_of(w));
                }
            }
        }
    }
    let stats = mapping.cache().stats();
    for p in &plans {
        stats.readahead_bytes.add(p.size);
    }
    // A failed readahead leaves its folios not uptodate: the read below tries them again and
    // reports the error (R5), so it is not reported here.
    for p in plans {
        let _ = readahead_marked(mapping, ops, p.start, p.size, p.mark);
    }
    let prev_end = ra.inner.lock().0.prev_end;
    let n = read_stream(mapping, ops, pos, dst, (prev_end > 0).then_some(prev_end))?;
    ra.inner.lock().0.prev_end = pos + n as u64;
    Ok(n)
}

fn plan_of(w: &Window) -> Plan {
    Plan {
        start: w.start,
        size: w.size,
        mark: (w.async_size > 0).then(|| w.start + w.size - w.async_size),
    }
}

/// The window after `w`, read ahead in full.
fn next_window(w: &mut Window, max: u64) {
    w.start += w.size;
    w.size = next_size(w.size, max);
    w.async_size = w.size;
}

/// The first byte of `[pos, end)`, rounded down to the smallest folio, that no cached folio
/// holds.
fn first_gap(mapping: &Mapping, pos: u64, end: u64) -> Option<u64> {
    let granule = mapping.min_folio_size() as u64;
    let mut at = pos / granule * granule;
    for f in mapping.folios_in(at, end) {
        if f.pos() > at {
            return Some(at);
        }
        at = at.max(f.end());
    }
    (at < end).then_some(at)
}

/// Finds and clears a readahead marker on a folio in `[pos, end)`; the folio's range.
fn take_marker(mapping: &Mapping, pos: u64, end: u64) -> Option<(u64, u64)> {
    mapping
        .folios_in(pos, end)
        .into_iter()
        .find(|f| f.test_clear_readahead())
        .map(|f| (f.pos(), f.end()))
}

/// A read of `[pos, end)` missed the cache at `gap`. A read that continues the last one (in
/// the same or the next smallest folio, as Linux compares page indices) or starts the file
/// gets a window; the window that follows the current one exactly grows it. A random read
/// gets none (false), and leaves the state alone.
fn sync_window(
    w: &mut Window,
    advice: Advice,
    max: u64,
    granule: u64,
    pos: u64,
    gap: u64,
    end: u64,
) -> bool {
    let last = w.prev_end.checked_sub(1).map(|b| b / granule);
    let sequential = advice == Advice::Sequential
        || pos == 0
        || last.is_some_and(|l| (l..=l + 1).contains(&(pos / granule)));
    if w.size > 0 && gap == w.start + w.size {
        // The reader outran the marker: the next window, as if it had been reached.
        next_window(w, max);
        return true;
    }
    if !sequential {
        return false;
    }
    let req = end.div_ceil(granule) * granule - gap;
    w.start = gap;
    w.size = init_size(req, max).max(req.min(max));
    w.async_size = if w.size > req { w.size - req } else { w.size };
    true
}

/// A read reached the marker on the folio `[mpos, mend)`: the next window of the stream the
/// marker belongs to. A marker from another stream, or left by an older window, starts one
/// from the first uncached folio within a window's reach (none if all of that is cached),
/// sized by what is cached already, as Linux does.
fn async_window(
    mapping: &Mapping,
    w: &mut Window,
    max: u64,
    mpos: u64,
    mend: u64,
    end: u64,
) -> bool {
    let expected = (w.start + w.size).saturating_sub(w.async_size);
    if w.size > 0 && mpos <= expected && expected < mend {
        next_window(w, max);
        return true;
    }
    let Some(from) = first_gap(mapping, mend, mend.saturating_add(max)) else {
        return false;
    };
    w.start = from;
    w.size = next_size((from - mpos).max(end - mpos), max);
    w.async_size = w.size;
    true
}

/// `POSIX_FADV_WILLNEED`: starts reading `[start, start + len)` into the cache now.
pub fn fadvise_willneed(mapping: &Mapping, ops: &dyn IomapOps, start: u64, len: u64) -> Result<()> {
    readahead(mapping, ops, start, len)
}

/// `POSIX_FADV_DONTNEED`: starts writeback of the dirty data in `[start, start + len)` and
/// drops the range's clean folios (those still dirty or under writeback stay, as in Linux).
pub fn fadvise_dontneed(
    mapping: &Arc<Mapping>,
    wb: &Arc<dyn WritebackOps>,
    start: u64,
    len: u64,
) -> Result<()> {
    let end = start.saturating_add(len);
    let mut wbc = WritebackControl::background_range(start, end);
    let written = writepages(mapping, wb, &mut wbc);
    mapping.release_clean(start, end);
    written
}

/// An uncached read (Linux's `RWF_DONTCACHE`): reads as [`buffered_read`] does, then drops
/// the folios the read brought in, so a one-off scan does not push out what others use.
/// Folios that were cached before stay.
pub fn buffered_read_uncached(
    mapping: &Mapping,
    ops: &dyn IomapOps,
    pos: u64,
    dst: &mut [u8],
) -> Result<usize> {
    let end = pos.saturating_add(dst.len() as u64);
    let before: HashSet<u64> = mapping
        .folios_in(pos, end)
        .iter()
        .map(|f| f.pos())
        .collect();
    let n = buffered_read(mapping, ops, pos, dst)?;
    for f in mapping.folios_in(pos, end) {
        if !before.contains(&f.pos()) {
            mapping.release_clean(f.pos(), f.end());
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_start_at_two_or_four_times_the_read_and_ramp_to_the_maximum() {
        let max = 1 << 20;
        assert_eq!(init_size(4096, max), 16384);
        assert_eq!(init_size(64 << 10, max), 128 << 10);
        assert_eq!(init_size(100_000, max), 256 << 10);
        assert_eq!(init_size(512 << 10, max), max);
        assert_eq!(init_size(4 << 20, max), max);
        assert_eq!(next_size(16384, max), 65536);
        assert_eq!(next_size(128 << 10, max), 256 << 10);
        assert_eq!(next_size(512 << 10, max), max);
        assert_eq!(next_size(max, max), max);
    }
}

//! Bugs found by review, each kept as a test that fails without its fix.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{Ext, TestFs};
use iomap::iomap_dev::{BlockDeviceExt, DevAddr};
use iomap::{
    buffered_read, buffered_write, zero_range, FolioGuard, Ioend, Iomap, IomapFlags, IomapKind,
    IomapOps, IomapPair, IterFlags, Mapping, Result, SliceSource, WritebackControl, WritebackCtx,
    WritebackOps,
};
use parking_lot::Mutex;

/// An inline write into a folio not yet cached filled only the written bytes from the inline
/// data, then marked the whole single-block folio uptodate: the bytes before the write showed
/// whatever the folio held.
#[test]
fn inline_write_begin_fills_the_whole_inline_span_of_the_folio() {
    let fs = TestFs::new_inline(4096);
    fs.state
        .lock()
        .inline
        .as_ref()
        .unwrap()
        .write()
        .extend_from_slice(b"0123456789abcdef");
    fs.mapping.set_size(16);
    assert_eq!(fs.mapping.nr_folios(), 0);
    fs.write(10, b"XY").unwrap();
    assert_eq!(fs.read(0, 100).unwrap(), b"0123456789XYcdef");
}

/// Writeback that converted an unwritten extent and cleaned its folio between zero_range's
/// `begin` and its look at the cache made zero_range skip data that was by then written.
struct ConvertAfterBegin<'a>(&'a TestFs);

impl IomapOps for ConvertAfterBegin<'_> {
    fn begin(&self, pos: u64, len: u64, flags: IterFlags) -> Result<IomapPair> {
        let pair = self.0.begin(pos, len, flags)?;
        if flags.contains(IterFlags::ZERO) {
            self.0.flush_all(); // background writeback completes now
        }
        Ok(pair)
    }
    fn end(&self, pos: u64, len: u64, done: u64, flags: IterFlags, iomap: &Iomap) -> Result<()> {
        self.0.end(pos, len, done, flags, iomap)
    }
    fn valid(&self, iomap: &Iomap) -> bool {
        self.0.valid(iomap)
    }
}

#[test]
fn zero_range_remaps_when_writeback_converts_the_extent_after_begin() {
    let fs = TestFs::new(1024, 4096);
    fs.fallocate_blocks(0, 4).unwrap();
    fs.mapping.set_size(4096);
    fs.write(0, &[5u8; 4096]).unwrap();
    assert!(matches!(fs.ext(0), Some(Ext::Unwritten { .. })));
    assert!(zero_range(&fs.mapping, &ConvertAfterBegin(&fs), 0, 4096).unwrap());
    fs.flush_all();
    assert!(fs.read(0, 4096).unwrap().iter().all(|&b| b == 0));
    let Some(Ext::Mapped { block, .. }) = fs.ext(0) else {
        panic!("{:?}", fs.ext(0))
    };
    let mut dev = vec![1u8; 1024];
    fs.mem().read_at(fs.dev_addr(block), &mut dev).unwrap();
    assert!(dev.iter().all(|&b| b == 0));
}

/// An fsync range that ends before it starts panicked in the dirty-tag lookup.
#[test]
fn an_inverted_fsync_range_is_einval_not_a_panic() {
    let fs = TestFs::new(4096, 4096);
    fs.write(0, b"x").unwrap();
    let file = fs.open();
    assert_eq!(
        file.fsync(&fs.wb, 8192, 4096, false).unwrap_err().errno(),
        22
    );
    let mut wbc = WritebackControl::integrity(8192, 4096);
    fs.writeback(&mut wbc).unwrap();
    assert_eq!(wbc.written_bytes, 0);
}

/// Region arithmetic overflowed for ranges ending near the largest offset.
#[test]
fn cache_scans_near_the_largest_offset_do_not_overflow() {
    let fs = TestFs::new(4096, 2 << 20);
    fs.write(0, b"x").unwrap();
    assert_eq!(fs.mapping.release_clean(u64::MAX - 10, u64::MAX), 0);
    assert!(fs
        .mapping
        .folios_in(u64::MAX - (3 << 20), u64::MAX)
        .is_empty());
    fs.mapping.truncate_range(u64::MAX - 4096, u64::MAX);
    assert_eq!(fs.mapping.nr_folios(), 1);
}

/// Hands out one fixed mapping.
struct Fixed(Iomap, Option<Iomap>);

impl IomapOps for Fixed {
    fn begin(&self, pos: u64, _: u64, _: IterFlags) -> Result<IomapPair> {
        if pos >= self.0.end() {
            return Ok(Iomap::new(IomapKind::Delalloc, self.0.end(), 1 << 30)
                .with_flags(IomapFlags::NEW)
                .into());
        }
        // Past the srcmap's end the old data is a hole, as XFS reports its data fork.
        let srcmap = self.1.clone().map(|src| {
            if pos < src.end() {
                src
            } else {
                Iomap::hole(src.end(), self.0.end() - src.end())
            }
        });
        Ok(IomapPair {
            iomap: self.0.clone(),
            srcmap,
        })
    }
}

/// A mapping whose device address runs past `u64::MAX` panicked computing an address.
#[test]
fn a_mapping_past_the_largest_device_address_is_eio() {
    let fs = TestFs::new(4096, 4096);
    fs.mapping.set_size(1 << 20);
    let ops = Fixed(Iomap::mapped(0, 1 << 20, DevAddr(u64::MAX - 4095)), None);
    let mut buf = [0u8; 100];
    let err = buffered_read(&fs.mapping, &ops, 8192, &mut buf).unwrap_err();
    assert_eq!(err.errno(), 5, "{err}");
}

/// A read error in a later folio threw away the bytes already copied out; Linux returns them.
#[test]
fn a_read_error_in_a_later_folio_returns_what_was_read() {
    let fs = TestFs::new(4096, 4096);
    fs.map_blocks(0, 1, |_| 1);
    fs.map_blocks(100, 1, |_| 0); // a device gap
    let d = fs.map_blocks(1, 1, |_| 2);
    fs.state.lock().blocks.remove(&100);
    fs.mapping.set_size(8192);
    fs.fail_reads(d * 4096, (d + 1) * 4096, 5);
    assert_eq!(fs.read(0, 8192).unwrap(), vec![1u8; 4096]);
    assert_eq!(fs.read(4096, 4096).unwrap_err().errno(), 5);
}

/// Readahead failing to map a later part of its window failed a read whose own block was fine.
#[test]
fn a_readahead_mapping_error_past_the_wanted_block_does_not_fail_the_read() {
    let fs = TestFs::new(4096, 4096);
    fs.map_blocks(0, 2, |_| 3);
    fs.map_blocks(100, 1, |_| 0); // a device gap: a second mapping
    fs.map_blocks(2, 2, |_| 4);
    fs.state.lock().blocks.remove(&100);
    fs.mapping.set_size(4 * 4096);
    fs.state.lock().fail_begin = Some((8192, u64::MAX, 5));
    assert_eq!(fs.read(0, 4 * 4096).unwrap(), vec![3u8; 8192]);
    assert_eq!(fs.read(8192, 4096).unwrap_err().errno(), 5);
}

/// With a srcmap shorter than the mapping (XFS's copy-on-write fork extent reaching past the
/// data fork extent), the step ran to the mapping's end and read old data past the srcmap's
/// end: another file's block. Linux trims the step to the srcmap.
#[test]
fn a_srcmap_shorter_than_the_mapping_bounds_the_step() {
    let fs = TestFs::new(4096, 4096);
    let x = fs.map_blocks(0, 1, |_| 7);
    fs.mem()
        .write_at(fs.dev_addr(x + 1), &[0xEE; 4096])
        .unwrap(); // the next device block belongs to someone else
    let ops = Fixed(
        Iomap::new(IomapKind::Delalloc, 0, 8192).with_flags(IomapFlags::SHARED),
        Some(Iomap::mapped(0, 4096, fs.dev_addr(x))),
    );
    fs.mapping.set_size(8192); // the second block is inside the file: it must be prepared
    let data = [1u8; 5000];
    let n = buffered_write(&fs.mapping, &ops, 100, 5000, &mut SliceSource::new(&data)).unwrap();
    assert_eq!(n, 5000);
    let mut back = vec![0u8; 8192];
    buffered_read(&fs.mapping, &ops, 0, &mut back).unwrap();
    assert!(
        back[..100].iter().all(|&b| b == 7),
        "old data from the srcmap"
    );
    assert!(
        back[5100..].iter().all(|&b| b == 0),
        "past the srcmap: new, zeroed, never 0xEE"
    );
}

/// Asks for completion work on every ioend and records what it is handed.
struct AlwaysComplete {
    inner: Arc<dyn WritebackOps>,
    seen: Mutex<Vec<Ioend>>,
}

impl WritebackOps for AlwaysComplete {
    fn writeback_range(
        &self,
        ctx: &mut WritebackCtx<'_>,
        folio: &FolioGuard,
        pos: u64,
        len: u64,
        end_pos: u64,
    ) -> Result<u64> {
        self.inner.writeback_range(ctx, folio, pos, len, end_pos)
    }
    fn ioend_needs_completion(&self, _: &Ioend) -> bool {
        true
    }
    fn ioend_complete(&self, _: &Mapping, ioend: &Ioend) -> Result<()> {
        self.seen.lock().push(ioend.clone());
        Ok(())
    }
}

/// The completion worker merged an ioend that starts a BOUNDARY mapping into the one before.
#[test]
fn completions_do_not_merge_across_a_boundary() {
    let fs = TestFs::new(1024, 4096);
    fs.map_blocks(0, 4, |_| 0);
    fs.state.lock().boundary.push(2);
    fs.write(0, &[9u8; 4096]).unwrap();
    let wb = Arc::new(AlwaysComplete {
        inner: Arc::clone(&fs.wb),
        seen: Mutex::new(Vec::new()),
    });
    let ops: Arc<dyn WritebackOps> = wb.clone();
    {
        let _hold = fs.mapping.cache().hold_completions();
        iomap::writepages(&fs.mapping, &ops, &mut WritebackControl::integrity(0, 4096)).unwrap();
    }
    fs.mapping.cache().drain_completions();
    let seen: Vec<(u64, u64)> = wb.seen.lock().iter().map(|c| (c.offset, c.size)).collect();
    assert_eq!(seen, [(0, 2048), (2048, 2048)]);
}

/// Eviction took a clean folio out of the index, let go of the index, and only then cleared
/// the folio's tags by offset: a writer could add a new folio at that offset and dirty it in
/// between, and lose its dirty tag, so no writeback (fsync included) ever wrote it. Found by
/// the engine's test over io_uring once reads held their folios longer.
#[test]
fn evicting_a_folio_never_untags_the_folio_that_replaced_it() {
    let fs = TestFs::new(4096, 4096);
    fs.map_blocks(0, 1, |_| 0);
    fs.mapping.set_size(4096);
    /// Stops the other threads however the checking loop ends, so a failure is not a hang.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                fs.mapping.release_clean(0, u64::MAX);
            }
        });
        // Contends for the tags lock, widening the gap between the index and the tags.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                std::hint::black_box(fs.mapping.dirty_folios(0, u64::MAX));
            }
        });
        let _stop = StopOnDrop(&stop);
        for round in 0..100_000u32 {
            fs.write(0, &round.to_le_bytes()).unwrap();
            fs.flush_all();
            let f = fs.mapping.find_folio(0);
            assert!(
                f.is_none_or(|f| !f.is_dirty()),
                "round {round}: a dirty folio was left untagged, out of writeback's reach"
            );
        }
    });
}

//! The cache within its memory limits: a budget kept by reclaim as folios are added, dirty
//! data held under its limits by throttled writers and the flusher, and dirty data written
//! back when it expires. Figures come from the cache's own gauges and its memory pool's
//! counters.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use iomap::iomap_dev::{
    BlockDevice, BlockDeviceExt, CrashDevice, CrashEvent, DevAddr, FaultDevice, FaultRule,
    MemDevice, Op,
};
use iomap::{
    buffered_read, buffered_write, buffered_write_uncached, CacheConfig, LinearMap, Mapping,
    MemoryLimits, PageCache, SliceSource, WritebackOps,
};

const MIB: u64 = 1 << 20;

/// Files of `file_size` bytes each, side by side on one device, registered with their cache
/// for reclaim and the flusher.
struct Files {
    cache: Arc<PageCache>,
    dev: Arc<dyn BlockDevice>,
    files: Vec<(Arc<Mapping>, Arc<LinearMap>)>,
}

impl Files {
    fn new(dev: Arc<dyn BlockDevice>, n: u64, file_size: u64, limits: MemoryLimits) -> Self {
        let cache = PageCache::new(CacheConfig {
            page_size: 4096,
            max_folio_size: 256 << 10,
        })
        .unwrap();
        cache.set_limits(limits).unwrap();
        let files = (0..n)
            .map(|i| {
                let map = Arc::new(LinearMap::new(DevAddr(i * file_size), file_size));
                let m = Arc::new(Mapping::new(Arc::clone(&cache), Arc::clone(&dev), 4096).unwrap());
                m.set_size(file_size);
                let wb: Arc<dyn WritebackOps> = map.clone();
                assert!(m.set_writeback_ops(wb));
                cache.register(&m);
                (m, map)
            })
            .collect();
        Self { cache, dev, files }
    }

    fn mem(n: u64, file_size: u64, limits: MemoryLimits) -> Self {
        Self::new(
            Arc::new(MemDevice::new(n * file_size)),
            n,
            file_size,
            limits,
        )
    }

    fn write(&self, file: usize, pos: u64, data: &[u8]) {
        let (m, map) = &self.files[file];
        let len = data.len() as u64;
        let n = buffered_write(m, &**map, pos, len, &mut SliceSource::new(data)).unwrap();
        assert_eq!(n, len);
    }

    fn read(&self, file: usize, pos: u64, buf: &mut [u8]) {
        let (m, map) = &self.files[file];
        assert_eq!(buffered_read(m, &**map, pos, buf).unwrap(), buf.len());
    }

    fn dirty(&self) -> u64 {
        let u = self.cache.usage();
        u.dirty_bytes + u.writeback_bytes
    }
}

fn pattern(file: usize, pos: u64) -> u8 {
    (pos / 4096) as u8 ^ (pos as u8).rotate_left(3) ^ file as u8
}

fn chunk(file: usize, pos: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern(file, pos + i)).collect()
}

#[test]
fn writing_four_times_the_budget_keeps_the_cache_within_it() {
    let budget = 8 * MIB;
    let files = Files::mem(1, 4 * budget, MemoryLimits::with_budget(budget));
    files.cache.start_flusher().unwrap();
    // Buffers in use and pooled ones stay within a sixteenth past the budget; the margin is
    // one largest folio, added before allocation looks at the budget.
    let margin = budget / 16 + (256 << 10);
    let mut peak = 0;
    for pos in (0..4 * budget).step_by(64 << 10) {
        files.write(0, pos, &chunk(0, pos, 64 << 10));
        let p = files.cache.pool_stats();
        let total = p.live_bytes + p.held_bytes;
        assert!(
            total <= budget + margin,
            "{total} bytes of folio buffers at {pos}"
        );
        assert!(
            p.live_bytes <= budget + (256 << 10),
            "{p:?} in use at {pos}"
        );
        peak = peak.max(total);
    }
    assert!(peak > budget / 2, "the budget was never approached: {peak}");
    let s = files.cache.stats().snapshot();
    assert!(
        s.direct_reclaims > 0 && s.reclaimed_bytes >= 2 * budget,
        "{s:?}"
    );
    let p = files.cache.pool_stats();
    assert!(
        p.reused > p.allocated,
        "evicted buffers were not reused: {p:?}"
    );
    files.cache.sync_all().unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let dev = &files.dev;
    for pos in (0..4 * budget).step_by(MIB as usize) {
        dev.read_at(DevAddr(pos), &mut buf).unwrap();
        assert!(buf == chunk(0, pos, buf.len()), "device differs at {pos}");
    }
}

#[test]
fn reading_four_times_the_budget_keeps_the_cache_within_it_and_the_hot_file_cached() {
    let budget = 4 * MIB;
    let files = Files::mem(2, 4 * budget, MemoryLimits::with_budget(budget));
    for pos in (0..4 * budget).step_by(MIB as usize) {
        files.write(1, pos, &chunk(1, pos, MIB as usize));
        files.cache.sync_all().unwrap();
    }
    files.cache.reclaim(u64::MAX);
    let mut buf = vec![0u8; 64 << 10];
    // The hot data: the first 512 KiB of file 1, read twice.
    for _ in 0..2 {
        for pos in (0..512 << 10).step_by(buf.len()) {
            files.read(1, pos, &mut buf);
        }
    }
    let reads_before = files.cache.stats().snapshot().dev_read_requests;
    for pos in (0..4 * budget).step_by(buf.len()) {
        files.read(0, pos, &mut buf);
        assert!(buf.iter().all(|&b| b == 0));
        let cached = files.cache.usage().cached_bytes;
        assert!(cached <= budget + budget / 64 + (256 << 10), "{cached}");
    }
    let scan_reads = files.cache.stats().snapshot().dev_read_requests;
    assert!(scan_reads > reads_before);
    for pos in (0..512 << 10).step_by(buf.len()) {
        files.read(1, pos, &mut buf);
        assert!(buf == chunk(1, pos, buf.len()));
    }
    assert_eq!(
        files.cache.stats().snapshot().dev_read_requests,
        scan_reads,
        "the hot data was evicted by the scan"
    );
}

/// Readers of several files under a budget far smaller than what they read, each read's
/// allocations reclaiming the others' folios: every read completes with the right bytes.
#[test]
fn readers_under_a_tiny_budget_all_complete() {
    let budget = MIB;
    let files = Files::mem(4, 8 * MIB, MemoryLimits::with_budget(budget));
    for f in 0..4 {
        for pos in (0..8 * MIB).step_by(MIB as usize) {
            files.write(f, pos, &chunk(f, pos, MIB as usize));
        }
    }
    files.cache.sync_all().unwrap();
    std::thread::scope(|s| {
        for f in 0..4 {
            let files = &files;
            s.spawn(move || {
                let mut buf = vec![0u8; 3 * MIB as usize / 2];
                for round in 0..3u64 {
                    let mut pos = round * 4096;
                    while pos + buf.len() as u64 <= 8 * MIB {
                        files.read(f, pos, &mut buf);
                        assert!(buf == chunk(f, pos, buf.len()), "file {f} at {pos}");
                        pos += buf.len() as u64;
                    }
                }
            });
        }
    });
}

/// A device whose writes each take a while, so that dirty data builds up faster than it is
/// cleaned.
fn slow_writes(capacity: u64) -> Arc<dyn BlockDevice> {
    let dev = FaultDevice::new(MemDevice::new(capacity));
    dev.add_rule(FaultRule::on(Op::Write).delay(Duration::from_millis(25)));
    Arc::new(dev)
}

#[test]
fn throttled_writers_on_several_threads_all_make_progress_within_the_limit() {
    const THREADS: usize = 4;
    const WRITE: usize = 64 << 10;
    let budget = 16 * MIB;
    let limits = MemoryLimits::with_budget(budget); // dirty 3.2 MiB, background 1.6 MiB
    let per_file = 8 * MIB;
    let files = Files::new(
        slow_writes(THREADS as u64 * per_file),
        THREADS as u64,
        per_file,
        limits,
    );
    files.cache.start_flusher().unwrap();
    let done: Vec<AtomicU64> = (0..THREADS).map(|_| AtomicU64::new(0)).collect();
    let peak = AtomicU64::new(0);
    let start = Barrier::new(THREADS);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (files, done, peak, start) = (&files, &done, &peak, &start);
            s.spawn(move || {
                start.wait();
                for pos in (0..per_file).step_by(WRITE) {
                    files.write(t, pos, &chunk(t, pos, WRITE));
                    done[t].fetch_add(1, Ordering::Relaxed);
                    peak.fetch_max(files.dirty(), Ordering::Relaxed);
                }
            });
        }
    });
    let s = files.cache.stats().snapshot();
    assert!(s.throttled_writes > 0, "nobody was throttled: {s:?}");
    assert!(s.throttled_micros > 0);
    assert!(s.threshold_writebacks > 0, "{s:?}");
    // Each writer may dirty one write (and one largest folio) past the limit before it is
    // throttled.
    let bound = limits.dirty_bytes + THREADS as u64 * (WRITE as u64 + (256 << 10));
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak <= bound, "dirty data peaked at {peak}, limit {bound}");
    for d in &done {
        assert_eq!(d.load(Ordering::Relaxed), per_file / WRITE as u64);
    }
    files.cache.sync_all().unwrap();
    let mut buf = vec![0u8; per_file as usize];
    for t in 0..THREADS {
        files
            .dev
            .read_at(DevAddr(t as u64 * per_file), &mut buf)
            .unwrap();
        assert!(buf == chunk(t, 0, buf.len()), "file {t} on the device");
    }
}

#[test]
fn the_flusher_writes_back_expired_data_oldest_file_first_and_leaves_young_data() {
    let mut limits = MemoryLimits::with_budget(64 * MIB);
    limits.dirty_expire = Duration::from_secs(3600);
    let dev = Arc::new(CrashDevice::new(MemDevice::new(3 * MIB)).unwrap());
    let files = Files::new(dev.clone(), 3, MIB, limits);
    files.cache.start_flusher().unwrap();
    // Dirtied in the order 2, 0 (files are registered, and held, in the order 0, 1, 2).
    files.write(2, 0, &chunk(2, 0, 256 << 10));
    files.write(0, 0, &chunk(0, 0, 256 << 10));
    let first = files.files[2].0.dirtied_when().unwrap();
    let second = files.files[0].0.dirtied_when().unwrap();
    assert!(first <= second);
    assert_eq!(files.files[1].0.dirtied_when(), None);
    // Young data under the background threshold stays dirty through a pass.
    assert!(files.cache.flush_pass());
    assert_eq!(files.cache.usage().dirty_bytes, 512 << 10);
    assert_eq!(files.cache.stats().snapshot().dev_write_requests, 0);
    // Once it has expired it is written back, oldest file first.
    limits.dirty_expire = Duration::ZERO;
    files.cache.set_limits(limits).unwrap();
    assert!(files.cache.flush_pass());
    files.cache.drain_completions();
    for (m, _) in &files.files {
        m.wait_writeback_range(0, u64::MAX);
        assert_eq!(m.dirtied_when(), None);
    }
    let u = files.cache.usage();
    assert_eq!((u.dirty_bytes, u.writeback_bytes), (0, 0));
    let s = files.cache.stats().snapshot();
    assert_eq!(s.expired_writebacks, 2);
    assert_eq!(s.dev_write_bytes, 512 << 10);
    let order: Vec<u64> = dev
        .event_log()
        .into_iter()
        .filter_map(|e| match e {
            CrashEvent::WriteSubmitted { addr, .. } => Some(addr.0 / MIB),
            _ => None,
        })
        .collect();
    assert!(!order.is_empty());
    assert!(
        order.windows(2).all(|w| w[0] >= w[1]) && order[0] == 2,
        "written back in file order {order:?}, not oldest first"
    );
    let mut buf = vec![0u8; 256 << 10];
    files.dev.read_at(DevAddr(0), &mut buf).unwrap();
    assert!(buf == chunk(0, 0, buf.len()));
}

#[test]
fn a_file_still_dirty_after_writeback_waits_a_whole_expiry_again() {
    let mut limits = MemoryLimits::with_budget(64 * MIB);
    limits.dirty_expire = Duration::from_secs(3600);
    let files = Files::mem(1, MIB, limits);
    files.cache.start_flusher().unwrap();
    files.write(0, 0, &chunk(0, 0, 64 << 10));
    let dirtied = files.files[0].0.dirtied_when().unwrap();
    // More dirty data while it is young, then it all expires and is written back.
    files.write(0, 128 << 10, &chunk(0, 128 << 10, 64 << 10));
    assert_eq!(files.files[0].0.dirtied_when(), Some(dirtied));
    limits.dirty_expire = Duration::ZERO;
    files.cache.set_limits(limits).unwrap();
    assert!(files.cache.flush_pass());
    files.files[0].0.wait_writeback_range(0, u64::MAX);
    assert_eq!(
        files.files[0].0.dirtied_when(),
        None,
        "clean once written back"
    );
}

/// A folio a reader has filled but not yet copied from is pinned: reclaim passes it over, and
/// takes it once the pin is gone.
#[test]
fn reclaim_passes_over_a_pinned_folio() {
    let files = Files::mem(1, MIB, MemoryLimits::default());
    let mut buf = vec![0u8; 64 << 10];
    files.read(0, 0, &mut buf);
    let (m, _) = &files.files[0];
    let before = m.nr_folios();
    assert!(before > 0);
    let pin = m.find_pinned(0).unwrap();
    let folio = (*pin).clone();
    files.cache.reclaim(u64::MAX);
    assert_eq!(m.nr_folios(), 1, "only the pinned folio stays");
    assert!(!folio.is_detached());
    drop(pin);
    files.cache.reclaim(u64::MAX);
    assert_eq!(m.nr_folios(), 0);
    assert!(folio.is_detached());
}

/// Dirty data no flusher can write (a mapping without writeback ops) over the hard limit:
/// the writer waits one pause for writeback that never comes, then goes on, rather than
/// waiting forever.
#[test]
fn writers_and_zeroing_over_the_limit_with_nothing_to_write_back_are_not_stopped_for_good() {
    let cache = PageCache::new(CacheConfig::default()).unwrap();
    cache
        .set_limits(MemoryLimits::with_budget(8 * MIB))
        .unwrap(); // dirty limit 1.6 MiB
    cache.start_flusher().unwrap();
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(8 * MIB));
    let map = LinearMap::new(DevAddr(0), 8 * MIB);
    let m = Mapping::new(Arc::clone(&cache), dev, 4096).unwrap();
    m.set_size(8 * MIB);
    let data = chunk(0, 0, 4 * MIB as usize);
    let n = buffered_write(&m, &map, 0, data.len() as u64, &mut SliceSource::new(&data)).unwrap();
    assert_eq!(n, data.len() as u64);
    let s = cache.stats().snapshot();
    assert!(s.throttled_writes > 0, "the writer was never held: {s:?}");
    assert_eq!(cache.usage().dirty_bytes, 4 * MIB);
    // Zeroing dirties data as a write does, and is throttled alike.
    assert!(iomap::zero_range(&m, &map, 4 * MIB, 4 * MIB).unwrap());
    assert_eq!(cache.usage().dirty_bytes, 8 * MIB);
    let after = cache.stats().snapshot().throttled_writes;
    assert!(after > s.throttled_writes, "zeroing was never held");
}

#[test]
fn the_flusher_writes_back_down_to_the_background_threshold() {
    let mut limits = MemoryLimits::with_budget(64 * MIB); // background 6.4 MiB
    limits.dirty_expire = Duration::from_secs(3600);
    let files = Files::mem(1, 16 * MIB, limits);
    // No flusher yet: nothing throttles or writes back while the data is written.
    for pos in (0..10 * MIB).step_by(MIB as usize) {
        files.write(0, pos, &chunk(0, pos, MIB as usize));
    }
    assert_eq!(files.cache.usage().dirty_bytes, 10 * MIB);
    files.cache.start_flusher().unwrap();
    assert!(files.cache.flush_pass());
    let u = files.cache.usage();
    assert!(
        u.dirty_bytes <= limits.dirty_background_bytes,
        "{u:?} over the background threshold"
    );
    assert!(
        u.dirty_bytes > 0,
        "more than the excess was written back: {u:?}"
    );
    // The oldest data (file order within a file) went first.
    assert!(files.files[0].0.dirty_folios(0, MIB).is_empty());
}

#[test]
fn limits_out_of_order_are_refused_and_leave_the_old_ones() {
    let files = Files::mem(1, MIB, MemoryLimits::with_budget(64 * MIB));
    let mut bad = MemoryLimits::with_budget(64 * MIB);
    bad.dirty_bytes = 128 * MIB;
    assert!(files.cache.set_limits(bad).is_err());
    assert_eq!(files.cache.limits(), MemoryLimits::with_budget(64 * MIB));
}

#[test]
fn an_uncached_write_leaves_only_what_was_cached_before_once_written_back() {
    let files = Files::mem(1, 8 * MIB, MemoryLimits::default());
    files.write(0, 0, &chunk(0, 0, 64 << 10));
    let (m, map) = &files.files[0];
    let wb: Arc<dyn WritebackOps> = map.clone();
    let data = chunk(0, 0, 4 * MIB as usize);
    let n = buffered_write_uncached(
        m,
        &**map,
        &wb,
        0,
        data.len() as u64,
        &mut SliceSource::new(&data),
    )
    .unwrap();
    assert_eq!(n, data.len() as u64);
    files.cache.drain_completions();
    m.wait_writeback_range(0, u64::MAX);
    let cached: Vec<(u64, usize)> = m
        .folios_in(0, u64::MAX)
        .iter()
        .map(|f| (f.pos(), f.size()))
        .collect();
    assert_eq!(
        cached,
        vec![(0, 64 << 10)],
        "only the folio cached before stays"
    );
    assert!(
        !m.find_folio(0).unwrap().is_dirty(),
        "the write was written back"
    );
    assert_eq!(files.cache.usage().cached_bytes, 64 << 10);
    let mut buf = vec![0u8; data.len()];
    files.dev.read_at(DevAddr(0), &mut buf[..]).unwrap();
    assert!(buf == data, "the device holds the write");
    files.read(0, 0, &mut buf);
    assert!(buf == data);
}

/// The filesystem's release hook is asked before a clean folio is evicted, and a folio it
/// refuses stays.
#[test]
fn reclaim_honours_the_filesystems_release_hook() {
    let files = Files::mem(1, MIB, MemoryLimits::default());
    let (m, _) = &files.files[0];
    let asked = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&asked);
    // Keeps the folios in the first 256 KiB.
    assert!(m.set_release_hook(Arc::new(move |f: &iomap::Folio| {
        seen.fetch_add(1, Ordering::Relaxed);
        f.pos() >= 256 << 10
    })));
    let mut buf = vec![0u8; 64 << 10];
    for pos in (0..MIB).step_by(buf.len()) {
        files.read(0, pos, &mut buf);
    }
    let before = m.nr_folios();
    files.cache.reclaim(u64::MAX);
    assert!(asked.load(Ordering::Relaxed) >= before as u64);
    let left: Vec<u64> = m.folios_in(0, u64::MAX).iter().map(|f| f.end()).collect();
    assert!(!left.is_empty(), "the refused folios were evicted");
    assert!(left.iter().all(|&end| end <= 256 << 10), "{left:?}");
    assert_eq!(m.release_clean(0, u64::MAX), 0, "release_clean asks too");
}

/// A write source that reads each chunk it hands over from another file through the cache.
struct ReadingSource<'a> {
    files: &'a Files,
    from: usize,
    pos: u64,
}

impl iomap::WriteSource for ReadingSource<'_> {
    /// Many small reads, so the source keeps adding folios (and reclaiming) for a while.
    fn copy_to(&mut self, dst: &mut [u8]) -> std::io::Result<usize> {
        let len = dst.len().min(64 << 10);
        for chunk in dst[..len].chunks_mut(4096) {
            self.files.read(self.from, self.pos, chunk);
            self.pos = (self.pos + 68 * 1024) % (4 * MIB - 4096);
        }
        Ok(len)
    }

    fn unread(&mut self, _bytes: &[u8]) {}
}

/// Found in review: direct reclaim waited for index shards. A writer holding a folio's data
/// lock while its source read another file (whose folios, over the budget, reclaimed) could
/// queue for a shard behind a thread waiting to add a folio there, which waited for a reader
/// holding the shard while it waited for the writer's folio. Reclaim now skips busy shards.
#[test]
fn regression_direct_reclaim_never_waits_for_a_shard_a_blocked_reader_holds() {
    let files = Files::mem(2, 4 * MIB, MemoryLimits::with_budget(MIB));
    let mut buf = vec![0u8; 4096];
    files.read(0, 0, &mut buf);
    let stop = AtomicBool::new(false);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let (files, stop) = (&files, &stop);
        // Reads the folio the writer holds, inside the shard's read lock.
        s.spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                files.read(0, 0, &mut buf);
            }
        });
        // Adds folios to the same shard (the first 256 KiB of file 0), and drops them again.
        s.spawn(move || {
            let mut buf = vec![0u8; 4096];
            let mut pos = 64 << 10;
            while !stop.load(Ordering::Relaxed) {
                files.read(0, pos, &mut buf);
                files.files[0].0.release_clean(64 << 10, 256 << 10);
                pos = if pos + 4096 >= 256 << 10 {
                    64 << 10
                } else {
                    pos + 4096
                };
            }
        });
        s.spawn(move || {
            let (m, map) = &files.files[0];
            for i in 0..2000u64 {
                let mut src = ReadingSource {
                    files,
                    from: 1,
                    pos: (i * (64 << 10)) % (4 * MIB),
                };
                buffered_write(m, &**map, 0, 64 << 10, &mut src).unwrap();
            }
            stop.store(true, Ordering::Relaxed);
            done_tx.send(()).unwrap();
        });
        // A watchdog, not a race: a deadlock never finishes.
        if done_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            eprintln!("deadlocked: the writer did not finish");
            std::process::abort();
        }
    });
    assert!(files.cache.stats().snapshot().direct_reclaims > 0);
}

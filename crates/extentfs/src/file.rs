//! How extentfs maps file ranges for the engine: [`FileMap`] (`IomapOps`) hands out holes,
//! delalloc reservations, unwritten and written extents, inline data and shared extents with
//! their srcmap; [`FileWb`] (`WritebackOps`) allocates at writeback, converts and remaps at
//! ioend completion, and discards reservations of failed writeback.

use std::sync::Arc;

use iomap::{
    Folio, FolioGuard, Ioend, Iomap, IomapFlags, IomapKind, IomapOps, IomapPair, IterFlags,
    Mapping, WritebackCtx, WritebackOps,
};
use iomap_dev::DevAddr;
use tracing::warn;

use crate::error::Error;
use crate::journal::{Shared, State};
use crate::meta::{Cow, Ext, FileData, Ino, Op, Target};

type EResult<T> = iomap::Result<T>;

/// The engine's view of one file's mapping.
pub(crate) struct FileMap {
    pub shared: Arc<Shared>,
    pub ino: Ino,
    pub mapping: Arc<Mapping>,
}

/// Writeback for one file.
pub(crate) struct FileWb {
    pub shared: Arc<Shared>,
    pub ino: Ino,
}

fn file(st: &mut State, ino: Ino) -> EResult<&mut FileData> {
    st.meta
        .inodes
        .get_mut(&ino)
        .and_then(|i| i.file_mut())
        .ok_or_else(|| Error::NotFound.into())
}

/// Length of the run from `b` (at most `n` blocks) before the next extent of `map` starts.
fn hole_run<V: crate::rangemap::Extent>(map: &crate::rangemap::RangeMap<V>, b: u64, n: u64) -> u64 {
    match map.next_from(b) {
        Some((s, _, _)) if s < b + n => s - b,
        _ => n,
    }
}

impl FileMap {
    fn dev(&self, block: u64) -> DevAddr {
        DevAddr(block * self.shared.bs)
    }

    fn map_inner(
        &self,
        st: &mut State,
        pos: u64,
        len: u64,
        flags: IterFlags,
    ) -> EResult<IomapPair> {
        let bs = self.shared.bs;
        let b = pos / bs;
        let n = ((pos.saturating_add(len)).div_ceil(bs) - b).max(1);
        let off = b * bs;
        let available = st.available();
        let f = file(st, self.ino)?;
        if let Some(inline) = &f.inline {
            if pos < bs {
                return Ok(Iomap::inline(0, bs, Arc::clone(inline))
                    .with_cookie(f.cookie)
                    .into());
            }
            return Ok(Iomap::hole(bs, u64::MAX - bs).with_cookie(f.cookie).into());
        }
        let write = flags.intersects(IterFlags::WRITE | IterFlags::FAULT);
        let cow_write = write || flags.intersects(IterFlags::ZERO | IterFlags::UNSHARE);
        let cookie = f.cookie;
        // Blocks already staged for copy-on-write: writes go to the new copy.
        if let Some((cs, cl, _)) = f.cow.lookup(b) {
            debug_assert_eq!(cs, b);
            let (ds, dl, dv) = f.map.lookup(b).ok_or_else(|| {
                iomap::Error::BadMapping(format!("copy-on-write staging over a hole at block {b}"))
            })?;
            let run = cl.min(dl).min(n);
            let Ext::Written(old) = dv else {
                return Err(iomap::Error::BadMapping(format!(
                    "copy-on-write staging over {dv:?} at {ds}"
                )));
            };
            let src = Iomap::mapped(off, run * bs, self.dev(old)).with_cookie(cookie);
            if cow_write {
                return Ok(IomapPair {
                    iomap: Iomap::new(IomapKind::Delalloc, off, run * bs)
                        .with_flags(IomapFlags::SHARED)
                        .with_cookie(cookie),
                    srcmap: Some(src),
                });
            }
            return Ok(src.with_flags(IomapFlags::SHARED).into());
        }
        let cow_end = f.cow.next_from(b).map_or(u64::MAX, |(s, _, _)| s);
        let n = n.min(cow_end - b);
        match f.map.lookup(b) {
            None => {
                let run = hole_run(&f.map, b, n);
                if !write {
                    return Ok(Iomap::hole(off, run * bs).with_cookie(cookie).into());
                }
                let run = run.min(available);
                if run == 0 {
                    return Err(Error::NoSpace.into());
                }
                f.map.insert(b, run, Ext::Delalloc);
                f.cookie += 1;
                let cookie = f.cookie;
                st.reserved += run;
                Ok(Iomap::new(IomapKind::Delalloc, off, run * bs)
                    .with_flags(IomapFlags::NEW)
                    .with_cookie(cookie)
                    .into())
            }
            Some((_, l, Ext::Delalloc)) => Ok(Iomap::new(IomapKind::Delalloc, off, l.min(n) * bs)
                .with_cookie(cookie)
                .into()),
            Some((_, l, Ext::Unwritten(p))) => {
                Ok(Iomap::unwritten(off, l.min(n) * bs, self.dev(p))
                    .with_cookie(cookie)
                    .into())
            }
            Some((_, l, Ext::Written(p))) => {
                let (shared, run) = st.meta.shared_run(p, l.min(n));
                if !shared {
                    return Ok(Iomap::mapped(off, run * bs, self.dev(p))
                        .with_cookie(cookie)
                        .into());
                }
                if !cow_write {
                    return Ok(Iomap::mapped(off, run * bs, self.dev(p))
                        .with_flags(IomapFlags::SHARED)
                        .with_cookie(cookie)
                        .into());
                }
                if flags.contains(IterFlags::ZERO) && !write {
                    // Zeroing reports shared blocks; the write that zeroes them reserves.
                }
                let run = run.min(available);
                if run == 0 {
                    return Err(Error::NoSpace.into());
                }
                st.reserved += run;
                let f = file(st, self.ino)?;
                f.cow.insert(b, run, Cow::Reserved);
                f.cookie += 1;
                let cookie = f.cookie;
                Ok(IomapPair {
                    iomap: Iomap::new(IomapKind::Delalloc, off, run * bs)
                        .with_flags(IomapFlags::SHARED)
                        .with_cookie(cookie),
                    srcmap: Some(Iomap::mapped(off, run * bs, self.dev(p)).with_cookie(cookie)),
                })
            }
        }
    }
}

impl IomapOps for FileMap {
    fn begin(&self, pos: u64, len: u64, flags: IterFlags) -> EResult<IomapPair> {
        self.shared.check_live()?;
        if flags.intersects(IterFlags::WRITE | IterFlags::FAULT) && self.shared.read_only {
            return Err(Error::ReadOnly.into());
        }
        let mut st = self.shared.state.lock();
        self.map_inner(&mut st, pos, len, flags)
    }

    fn end(&self, pos: u64, len: u64, done: u64, flags: IterFlags, iomap: &Iomap) -> EResult<()> {
        if !flags.contains(IterFlags::WRITE)
            || !iomap.flags.contains(IomapFlags::NEW)
            || done >= len
        {
            return Ok(());
        }
        // Give back the reservation past what was written, where the cache holds nothing
        // dirty: dirty blocks still need their space at writeback (R9).
        let bs = self.shared.bs;
        let start = (pos + done).div_ceil(bs) * bs;
        let mut ranges = Vec::new();
        self.mapping.punch_clean_ranges(start, pos + len, |s, e| {
            ranges.push((s, e));
            Ok(())
        })?;
        let mut st = self.shared.state.lock();
        let mut released = 0;
        if let Ok(f) = file(&mut st, self.ino) {
            for (s, e) in ranges {
                for (ps, pl, v) in f.map.range(s / bs, e / bs).collect::<Vec<_>>() {
                    if v == Ext::Delalloc {
                        f.map.remove(ps, pl);
                        released += pl;
                    }
                }
            }
            f.cookie += 1;
        }
        st.reserved = st.reserved.saturating_sub(released);
        Ok(())
    }

    fn valid(&self, iomap: &Iomap) -> bool {
        let mut st = self.shared.state.lock();
        file(&mut st, self.ino).is_ok_and(|f| f.cookie == iomap.cookie)
    }
}

impl FileWb {
    /// Maps (allocating) the dirty blocks at `pos` for writeback.
    fn map_for_writeback(&self, pos: u64, len: u64) -> EResult<Iomap> {
        let bs = self.shared.bs;
        let b = pos / bs;
        let n = ((pos + len).div_ceil(bs) - b).max(1);
        let off = b * bs;
        let dev = |blk: u64| DevAddr(blk * bs);
        let mut retried = false;
        loop {
            let res = self.shared.txn(|t| {
                let st = &mut *t.st;
                let hint = {
                    let f = file(st, self.ino)?;
                    match b.checked_sub(1).and_then(|p| f.map.lookup(p)) {
                        Some((_, _, v)) => v.block().map_or(st.meta.data_start, |x| x + 1),
                        None => st.meta.data_start,
                    }
                };
                let f = file(st, self.ino)?;
                if let Some((_, cl, c)) = f.cow.lookup(b) {
                    let run = cl.min(n);
                    let new = match c {
                        Cow::Staged(p) => {
                            return Ok(Some(
                                Iomap::mapped(off, run * bs, dev(p)).with_flags(IomapFlags::SHARED),
                            ))
                        }
                        Cow::Reserved => st.meta.free.alloc(run, hint),
                    };
                    let Some((p, got)) = new else { return Ok(None) };
                    st.reserved = st.reserved.saturating_sub(got);
                    let f = file(st, self.ino)?;
                    f.cow.insert(b, got, Cow::Staged(p));
                    f.cookie += 1;
                    return Ok(Some(
                        Iomap::mapped(off, got * bs, dev(p)).with_flags(IomapFlags::SHARED),
                    ));
                }
                let cow_end = f.cow.next_from(b).map_or(u64::MAX, |(s, _, _)| s);
                let n = n.min(cow_end - b);
                match f.map.lookup(b) {
                    Some((_, l, Ext::Unwritten(p))) => {
                        Ok(Some(Iomap::unwritten(off, l.min(n) * bs, dev(p))))
                    }
                    Some((_, l, Ext::Written(p))) => {
                        let (shared, run) = st.meta.shared_run(p, l.min(n));
                        if shared {
                            // Dirty data over shared blocks without a reservation: copy now.
                            let Some((np, got)) = st.meta.free.alloc(run, hint) else {
                                return Ok(None);
                            };
                            let f = file(st, self.ino)?;
                            f.cow.insert(b, got, Cow::Staged(np));
                            f.cookie += 1;
                            return Ok(Some(
                                Iomap::mapped(off, got * bs, dev(np))
                                    .with_flags(IomapFlags::SHARED),
                            ));
                        }
                        Ok(Some(Iomap::mapped(off, run * bs, dev(p))))
                    }
                    found => {
                        // Delalloc (reserved) or, defensively, a hole under dirty data. The
                        // op gives back the reservation of the delalloc it replaces.
                        let run = match found {
                            Some((_, l, _)) => l.min(n),
                            None => hole_run(&f.map, b, n),
                        };
                        let Some((p, got)) = st.meta.free.alloc(run, hint) else {
                            return Ok(None);
                        };
                        t.op(Op::Map {
                            ino: self.ino,
                            lblk: b,
                            len: got,
                            to: Target::Unwritten(p),
                        })?;
                        Ok(Some(Iomap::unwritten(off, got * bs, dev(p))))
                    }
                }
            });
            match res {
                Ok(Some(iomap)) => return Ok(iomap),
                Ok(None) if !retried => {
                    // Free space is busy until the log commits the transactions that freed it.
                    retried = true;
                    self.shared.commit()?;
                }
                Ok(None) => return Err(Error::NoSpace.into()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl WritebackOps for FileWb {
    fn writeback_range(
        &self,
        ctx: &mut WritebackCtx<'_>,
        folio: &FolioGuard,
        pos: u64,
        len: u64,
        end_pos: u64,
    ) -> EResult<u64> {
        let inline = {
            let mut st = self.shared.state.lock();
            match file(&mut st, self.ino) {
                Ok(f) => f.inline.is_some(),
                // Freed while its cache was being written back: the data has no home.
                Err(_) => return Ok(len),
            }
        };
        if inline {
            // Inline data is written with the metadata.
            return Ok(len);
        }
        let reuse = ctx
            .iomap
            .as_ref()
            .is_some_and(|m| m.offset <= pos && pos < m.end() && m.kind != IomapKind::Hole);
        if !reuse {
            ctx.iomap = Some(self.map_for_writeback(pos, len)?);
        }
        ctx.add_to_ioend(folio, pos, len, end_pos)
    }

    fn discard(&self, folio: &Folio, pos: u64) {
        let bs = self.shared.bs;
        let mut st = self.shared.state.lock();
        let mut released = 0;
        if let Ok(f) = file(&mut st, self.ino) {
            let (s, e) = (pos / bs, folio.end().div_ceil(bs));
            for (ps, pl, v) in f.map.range(s, e).collect::<Vec<_>>() {
                if v == Ext::Delalloc {
                    f.map.remove(ps, pl);
                    released += pl;
                }
            }
            for (ps, pl, c) in f.cow.range(s, e).collect::<Vec<_>>() {
                if c == Cow::Reserved {
                    f.cow.remove(ps, pl);
                    released += pl;
                }
            }
            f.cookie += 1;
        }
        st.reserved = st.reserved.saturating_sub(released);
    }

    fn ioend_needs_completion(&self, ioend: &Ioend) -> bool {
        if ioend.is_unwritten() || ioend.is_shared() {
            return true;
        }
        let st = self.shared.state.lock();
        st.meta
            .inodes
            .get(&self.ino)
            .is_some_and(|i| i.attr.size < ioend.end())
    }

    fn ioend_complete(&self, mapping: &Mapping, ioend: &Ioend) -> EResult<()> {
        let bs = self.shared.bs;
        let (s, e) = (ioend.offset / bs, ioend.end().div_ceil(bs));
        if let Some(errno) = ioend.error {
            // The data is lost (the folios end clean); copies staged for it go back to free
            // space, unwritten extents stay unwritten.
            let mut st = self.shared.state.lock();
            let mut staged = Vec::new();
            if let Ok(f) = file(&mut st, self.ino) {
                if ioend.is_shared() {
                    for (ps, pl, c) in f.cow.range(s, e).collect::<Vec<_>>() {
                        if let Cow::Staged(p) = c {
                            f.cow.remove(ps, pl);
                            staged.push((p, pl));
                        }
                    }
                    f.cookie += 1;
                }
            }
            for (p, l) in staged {
                if let Err(err) = st.meta.free.free(p, l) {
                    warn!("freeing a failed copy: {err}");
                }
            }
            warn!(
                ino = self.ino,
                offset = ioend.offset,
                size = ioend.size,
                errno,
                "writeback failed"
            );
            return Ok(());
        }
        let size = mapping.size();
        if !self.shared.state.lock().meta.inodes.contains_key(&self.ino) {
            return Ok(());
        }
        self.shared
            .txn(|t| {
                let f = file(&mut t.st, self.ino)?;
                let mut ops = Vec::new();
                if ioend.is_shared() {
                    for (ps, pl, c) in f.cow.range(s, e).collect::<Vec<_>>() {
                        if let Cow::Staged(p) = c {
                            f.cow.remove(ps, pl);
                            ops.push(Op::Map {
                                ino: self.ino,
                                lblk: ps,
                                len: pl,
                                to: Target::Written(p),
                            });
                        }
                    }
                }
                if ioend.is_unwritten() {
                    for (ps, pl, v) in f.map.range(s, e) {
                        if let Ext::Unwritten(p) = v {
                            ops.push(Op::Map {
                                ino: self.ino,
                                lblk: ps,
                                len: pl,
                                to: Target::Written(p),
                            });
                        }
                    }
                }
                f.cookie += 1;
                for op in ops {
                    t.op(op)?;
                }
                let inode = t.meta().inode(self.ino)?;
                let new_size = size.min(ioend.end());
                if new_size > inode.attr.size {
                    let mut attr = inode.attr;
                    attr.size = new_size;
                    t.op(Op::SetAttr {
                        ino: self.ino,
                        attr,
                    })?;
                }
                Ok(())
            })
            .map_err(Into::into)
    }

    fn commit(&self, _datasync: bool) -> EResult<()> {
        self.shared.commit().map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use iomap::{IomapKind, IomapOps, IterFlags, WriteSource};
    use iomap_dev::{BlockDevice, MemDevice};

    use crate::fs::{mkfs, ExtentFs, MkfsOptions, MountOptions};
    use crate::meta::ROOT_INO;

    fn fs() -> Arc<ExtentFs> {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(16 << 20));
        mkfs(Arc::clone(&dev), &MkfsOptions::default()).unwrap();
        let opts = MountOptions {
            commit_interval: None,
            ..MountOptions::default()
        };
        ExtentFs::mount(dev, opts).unwrap()
    }

    #[test]
    fn r7_every_extent_map_change_makes_a_handed_out_mapping_stale() {
        let fs = fs();
        let ino = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
        fs.write(ino, 0, &vec![1u8; 64 << 10]).unwrap();
        let node = fs.node(ino).unwrap();
        let delalloc = node.map.begin(0, 4096, IterFlags::empty()).unwrap().iomap;
        assert_eq!(delalloc.kind, IomapKind::Delalloc);
        assert!(node.map.valid(&delalloc));
        // Writeback allocates: delalloc becomes unwritten, then written.
        fs.syncfs().unwrap();
        assert!(!node.map.valid(&delalloc));
        let mapped = node.map.begin(0, 4096, IterFlags::empty()).unwrap().iomap;
        assert_eq!(mapped.kind, IomapKind::Mapped);
        assert!(node.map.valid(&mapped));
        // Punching a hole elsewhere in the file changes the map too.
        fs.fallocate(
            ino,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            32 << 10,
            4096,
        )
        .unwrap();
        assert!(!node.map.valid(&mapped));
        // Reading changes nothing.
        let again = node.map.begin(0, 4096, IterFlags::empty()).unwrap().iomap;
        let mut buf = [0u8; 4096];
        fs.read(ino, 0, &mut buf).unwrap();
        assert!(node.map.valid(&again));
    }

    /// Delivers `limit` bytes, then fails.
    struct Failing {
        limit: usize,
        given: usize,
    }

    impl WriteSource for Failing {
        fn copy_to(&mut self, dst: &mut [u8]) -> std::io::Result<usize> {
            let n = dst.len().min(self.limit - self.given);
            if n == 0 {
                return Err(std::io::Error::from_raw_os_error(libc::EFAULT));
            }
            dst[..n].fill(4);
            self.given += n;
            Ok(n)
        }

        fn unread(&mut self, bytes: &[u8]) {
            self.given -= bytes.len();
        }
    }

    #[test]
    fn r9_a_short_write_gives_back_only_reservations_under_clean_cache() {
        let fs = fs();
        let ino = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
        fs.write(ino, 0, &[0u8; 4096]).unwrap(); // past the inline limit from the start
        fs.write(ino, 8192, &vec![0u8; 4096]).unwrap();
        let node = fs.node(ino).unwrap();
        let reserved = || fs.shared.state.lock().reserved;
        let before = reserved();
        // A 64 KiB write into blocks 4..20 that copies only 5000 bytes: blocks 4 and 5 are
        // dirty (block 5 partly, but it is new so the whole block counts), the rest clean.
        let mut src = Failing {
            limit: 5000,
            given: 0,
        };
        let res = iomap::buffered_write(&node.mapping, &*node.map, 16384, 65536, &mut src);
        assert_eq!(res.unwrap(), 5000, "the write reports what it copied");
        let kept = reserved() - before;
        assert!(
            (1..=2).contains(&kept),
            "kept {kept} blocks reserved for 5000 written bytes"
        );
        let f = fs.shared.state.lock();
        let file = f.meta.inode(ino).unwrap().file().unwrap();
        assert!(file.map.lookup(4).is_some());
        assert!(
            file.map.lookup(7).is_none(),
            "a clean block kept its reservation"
        );
    }
}

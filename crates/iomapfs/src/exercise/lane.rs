//! The operations on files, and the checks of what files hold: what one thread of a run
//! does, on the files it owns.

use std::sync::Arc;

use extentfs::{ExtentFs, Ino};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use super::{Checked, Op, CANARY, MAX_FILE_BYTES, MAX_LEN_BYTES, MAX_RECOVERED_BYTES};

/// What a mapped write stores past the end of the file: never to be read.
static CANARY_PAST_EOF: [u8; 65536] = [CANARY; 65536];

pub(super) fn fs_err(what: &str) -> impl FnOnce(extentfs::Error) -> String + '_ {
    move |e| format!("{what} failed unexpectedly: {e}")
}

/// Files and their oracles. A run's harness holds every file; with several threads, each
/// thread holds a lane of the files it owns while the others' entries stay empty.
pub(super) struct Lane {
    pub fs: Arc<ExtentFs>,
    pub bs: u64,
    pub inos: Vec<Ino>,
    pub oracle: Vec<Vec<u8>>,
    /// Per file: changed since its last fsync or sync, so a crash may lose the change.
    pub unsynced: Vec<bool>,
    /// Per file: whether this lane holds it.
    pub owned: Vec<bool>,
}

impl Lane {
    /// A lane of every file.
    pub fn new(fs: Arc<ExtentFs>, bs: u64, inos: Vec<Ino>) -> Self {
        let n = inos.len();
        Lane {
            fs,
            bs,
            inos,
            oracle: vec![Vec::new(); n],
            unsynced: vec![false; n],
            owned: vec![true; n],
        }
    }

    /// Moves the files thread `k` of `threads` owns (file `f` with `f % threads == k`) into a
    /// lane of their own.
    pub fn split_off(&mut self, k: usize, threads: usize) -> Lane {
        let owned: Vec<bool> = (0..self.inos.len()).map(|f| f % threads == k).collect();
        let oracle = owned
            .iter()
            .zip(&mut self.oracle)
            .map(|(&own, o)| if own { std::mem::take(o) } else { Vec::new() })
            .collect();
        Lane {
            fs: Arc::clone(&self.fs),
            bs: self.bs,
            inos: self.inos.clone(),
            oracle,
            unsynced: self.unsynced.clone(),
            owned,
        }
    }

    /// Takes back the files of a lane made by [`split_off`](Self::split_off).
    pub fn merge(&mut self, mut lane: Lane) {
        for (f, &own) in lane.owned.iter().enumerate() {
            if own {
                self.oracle[f] = std::mem::take(&mut lane.oracle[f]);
                self.unsynced[f] = lane.unsynced[f];
            }
        }
    }

    /// Runs an operation on files (see [`Op::is_global`]) and checks the files' sizes.
    pub(super) fn step(&mut self, op: &Op) -> Checked {
        let fs = Arc::clone(&self.fs);
        let bs = self.bs;
        match *op {
            Op::Write { f, pos, len, seed } => {
                self.unsynced[f] = true;
                let mut data = vec![0u8; len as usize];
                SmallRng::seed_from_u64(seed).fill_bytes(&mut data);
                let old = self.size(f);
                let n = fs
                    .write(self.inos[f], pos, &data)
                    .map_err(fs_err("write"))?;
                if n != data.len() {
                    return Err(format!("short write: {n} of {len} bytes"));
                }
                put(&mut self.oracle[f], pos, &data);
                self.check_gap(f, old, pos)?;
            }
            Op::MappedWrite { f, pos, len, seed } => self.mapped_write(f, pos, len, seed)?,
            Op::Read { f, pos, len } => self.check_range(f, pos, pos + len)?,
            Op::Truncate { f, size } => {
                self.unsynced[f] = true;
                let old = self.size(f);
                fs.truncate(self.inos[f], size)
                    .map_err(fs_err("truncate"))?;
                self.oracle[f].resize(size as usize, 0);
                self.check_gap(f, old, size)?;
            }
            Op::Fallocate {
                f,
                pos,
                len,
                keep_size,
            } => {
                self.unsynced[f] = true;
                let old = self.size(f);
                fs.fallocate(self.inos[f], keep(keep_size), pos, len)
                    .map_err(fs_err("fallocate"))?;
                if !keep_size {
                    grow(&mut self.oracle[f], pos + len);
                }
                self.check_gap(f, old, pos + len)?;
            }
            Op::PunchHole { f, pos, len } => {
                self.unsynced[f] = true;
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                fs.fallocate(self.inos[f], mode, pos, len)
                    .map_err(fs_err("punch hole"))?;
                zero(&mut self.oracle[f], pos, pos + len);
            }
            Op::ZeroRange {
                f,
                pos,
                len,
                keep_size,
            } => {
                self.unsynced[f] = true;
                let old = self.size(f);
                let mode = libc::FALLOC_FL_ZERO_RANGE | keep(keep_size);
                fs.fallocate(self.inos[f], mode, pos, len)
                    .map_err(fs_err("zero range"))?;
                zero(&mut self.oracle[f], pos, pos + len);
                if !keep_size {
                    grow(&mut self.oracle[f], pos + len);
                }
                self.check_gap(f, old, pos + len)?;
            }
            Op::CollapseRange { f, pos, len } => {
                self.unsynced[f] = true;
                let ok = pos + len < self.size(f);
                let res = fs.fallocate(self.inos[f], libc::FALLOC_FL_COLLAPSE_RANGE, pos, len);
                if expect_einval(res, ok, "collapse range")? {
                    self.oracle[f].drain(pos as usize..(pos + len) as usize);
                }
            }
            Op::InsertRange { f, pos, len } => {
                let size = self.size(f);
                let ok = pos < size;
                if ok && size + len > MAX_FILE_BYTES {
                    // Keeps the run's files bounded; the same list always skips it.
                    return Ok(());
                }
                self.unsynced[f] = true;
                let res = fs.fallocate(self.inos[f], libc::FALLOC_FL_INSERT_RANGE, pos, len);
                if expect_einval(res, ok, "insert range")? {
                    let o = &mut self.oracle[f];
                    o.splice(
                        pos as usize..pos as usize,
                        std::iter::repeat_n(0, len as usize),
                    );
                }
            }
            Op::CopyFileRange {
                src,
                soff,
                dst,
                doff,
                len,
            } => {
                let n = len.min(self.size(src).saturating_sub(soff));
                if doff + n > MAX_FILE_BYTES {
                    return Ok(());
                }
                self.unsynced[dst] = true;
                let overlap = src == dst && n > 0 && soff < doff + n && doff < soff + n;
                let old = self.size(dst);
                let res = fs.copy_file_range(self.inos[src], soff, self.inos[dst], doff, len);
                match res {
                    Ok(0) if n == 0 => {}
                    Ok(done) if !overlap && done == n => {
                        let data = self.oracle[src][soff as usize..(soff + n) as usize].to_vec();
                        put(&mut self.oracle[dst], doff, &data);
                        self.check_gap(dst, old, doff)?;
                    }
                    Ok(done) if overlap => {
                        return Err(format!("an overlapping copy succeeded ({done} bytes)"));
                    }
                    Ok(done) => return Err(format!("copied {done} bytes, expected {n}")),
                    Err(e) if overlap && e.errno() == libc::EINVAL => {}
                    Err(e) => return Err(format!("copy_file_range failed unexpectedly: {e}")),
                }
            }
            Op::CloneRange {
                src,
                soff,
                dst,
                doff,
                len,
                to_eof,
            } => {
                let ssize = self.size(src);
                let dsize = self.size(dst);
                // Either whole blocks, or everything from soff to the end of the source.
                let len = if to_eof {
                    ssize.saturating_sub(soff)
                } else {
                    len
                };
                if len == 0 || doff + len > MAX_FILE_BYTES {
                    return Ok(());
                }
                self.unsynced[dst] = true;
                let ok = soff + len <= ssize
                    && !(src == dst && soff < doff + len && doff < soff + len)
                    && !(len % bs != 0 && doff + len < dsize);
                let res = fs.clone_range(self.inos[src], soff, self.inos[dst], doff, len);
                if expect_einval(res, ok, "clone range")? {
                    let data = self.oracle[src][soff as usize..(soff + len) as usize].to_vec();
                    put(&mut self.oracle[dst], doff, &data);
                    self.check_gap(dst, dsize, doff)?;
                }
            }
            Op::Fsync { f, datasync } => {
                self.fsync(f, datasync).map_err(fs_err("fsync"))?;
                self.unsynced[f] = false;
            }
            Op::Reclaim { bytes } => {
                fs.cache().reclaim(bytes);
            }
            Op::CorruptOracle { f } => {
                let o = &mut self.oracle[f];
                match o.len() {
                    0 => o.push(1),
                    n => o[n / 2] ^= 0x5a,
                }
            }
            _ => return Err(format!("{} is not an operation on files", op.kind())),
        }
        self.check_sizes()
    }

    pub fn size(&self, f: usize) -> u64 {
        self.oracle[f].len() as u64
    }

    /// Checks the sizes of the files this lane holds.
    pub fn check_sizes(&self) -> Checked {
        for (f, &ino) in self.inos.iter().enumerate() {
            if !self.owned[f] {
                continue;
            }
            let got = self.fs.getattr(ino).map_err(fs_err("getattr"))?.size;
            if got != self.size(f) {
                return Err(format!(
                    "file {f} is {got} bytes long, expected {}",
                    self.size(f)
                ));
            }
        }
        Ok(())
    }

    /// Reads `[start, end)` of file `f` and compares it with the oracle (short at EOF).
    pub fn check_range(&self, f: usize, start: u64, end: u64) -> Checked {
        let mut buf = vec![0u8; end.saturating_sub(start) as usize];
        let n = self
            .fs
            .read(self.inos[f], start, &mut buf)
            .map_err(fs_err("read"))?;
        self.compare(f, start, end, &buf[..n])
    }

    /// Compares what a read of `[start, end)` returned with the oracle (short at EOF).
    pub fn compare(&self, f: usize, start: u64, end: u64, buf: &[u8]) -> Checked {
        let o = &self.oracle[f];
        let n = buf.len();
        let want = o
            .get(start as usize..end.min(o.len() as u64) as usize)
            .unwrap_or(&[]);
        if n != want.len() {
            return Err(format!(
                "read of file {f} at {start} returned {n} bytes, expected {} (size {})",
                want.len(),
                o.len()
            ));
        }
        // The slice comparison is a memcmp; the byte-wise search runs only on a mismatch.
        if buf[..n] == *want {
            return Ok(());
        }
        if let Some(i) = buf[..n].iter().zip(want).position(|(a, b)| a != b) {
            let off = start + i as u64;
            let diff_end = buf[i..n]
                .iter()
                .zip(&want[i..])
                .rposition(|(a, b)| a != b)
                .map_or(off + 1, |j| off + j as u64 + 1);
            return Err(format!(
                "file {f} differs at byte {off}: expected {:#04x}, found {:#04x} \
                 (bytes {off}..{diff_end} differ somewhere; size {})",
                want[i],
                buf[i],
                o.len()
            ));
        }
        Ok(())
    }

    /// After an operation that may have extended file `f` from `old` to past `to`: the
    /// bytes between must read as zeros whatever the file held there before a truncate.
    fn check_gap(&self, f: usize, old: u64, to: u64) -> Checked {
        let end = to.min(self.size(f)).min(old + MAX_LEN_BYTES);
        if old < end {
            self.check_range(f, old, end)
                .map_err(|e| format!("past the old EOF {old}: {e}"))?;
        }
        Ok(())
    }

    /// Reads back every file this lane holds, whole.
    pub fn verify_all(&self) -> Checked {
        self.check_sizes()?;
        for f in (0..self.inos.len()).filter(|&f| self.owned[f]) {
            self.check_range(f, 0, self.size(f))?;
        }
        Ok(())
    }

    /// Restarts file `f`'s oracle from what the file holds now.
    pub fn adopt(&mut self, f: usize) -> Checked {
        let size = self
            .fs
            .getattr(self.inos[f])
            .map_err(fs_err("getattr"))?
            .size;
        if size > MAX_RECOVERED_BYTES {
            return Err(format!("file {f} is {size} bytes long"));
        }
        let mut buf = vec![0u8; size as usize];
        let n = self
            .fs
            .read(self.inos[f], 0, &mut buf)
            .map_err(fs_err("read"))?;
        if n != buf.len() {
            return Err(format!("short read of file {f}: {n} of {size} bytes"));
        }
        if let Some(i) = canary_run(&buf, self.bs) {
            return Err(format!(
                "file {f} shows the device's unwritten canary at byte {i}"
            ));
        }
        self.oracle[f] = buf;
        Ok(())
    }

    /// Stores through a shared mapping: each folio is made writable by `page_mkwrite` and
    /// stored into, as the faults of a process writing through `mmap` would.
    fn mapped_write(&mut self, f: usize, pos: u64, len: u64, seed: u64) -> Checked {
        let end = (pos + len).min(self.size(f));
        if pos >= end {
            return Ok(());
        }
        self.unsynced[f] = true;
        let mut data = vec![0u8; (end - pos) as usize];
        SmallRng::seed_from_u64(seed).fill_bytes(&mut data);
        let mut at = pos;
        while at < end {
            let folio = self
                .fs
                .page_mkwrite(self.inos[f], at)
                .map_err(fs_err("page_mkwrite"))?;
            let (fpos, flen) = (folio.pos(), folio.len() as u64);
            if !(fpos <= at && at < fpos + flen) {
                return Err(format!(
                    "page_mkwrite at {at} gave the folio at {fpos} with {flen} writable bytes"
                ));
            }
            let upto = end.min(fpos + flen);
            let src = &data[(at - pos) as usize..(upto - pos) as usize];
            folio
                .write((at - fpos) as usize, src)
                .map_err(|e| format!("store into the folio at {fpos}: {e}"))?;
            // A store past the end of the file into the page that holds it lands in the
            // cache; it must never become visible, neither now nor when the file grows.
            let size = self.size(f);
            if fpos < size && size < fpos + flen {
                let past = &CANARY_PAST_EOF[..(fpos + flen - size) as usize];
                folio
                    .write((size - fpos) as usize, past)
                    .map_err(|e| format!("store past EOF into the folio at {fpos}: {e}"))?;
            }
            at = upto;
        }
        put(&mut self.oracle[f], pos, &data);
        Ok(())
    }

    /// fsync or fdatasync of file `f` through a new handle.
    pub fn fsync(&self, f: usize, datasync: bool) -> extentfs::Result<()> {
        let fh = self.fs.open(self.inos[f])?;
        let synced = self.fs.fsync(&fh, datasync);
        let closed = self.fs.release(fh);
        synced.and(closed)
    }
}

/// Whether an operation the oracle predicts to succeed (`ok`) did; one predicted to fail
/// must fail with EINVAL.
fn expect_einval(res: extentfs::Result<()>, ok: bool, what: &str) -> Checked<bool> {
    match res {
        Ok(()) if ok => Ok(true),
        Ok(()) => Err(format!("{what} succeeded where it must fail with EINVAL")),
        Err(e) if !ok && e.errno() == libc::EINVAL => Ok(false),
        Err(e) if !ok => Err(format!("{what} failed with {e}, expected EINVAL")),
        Err(e) => Err(format!("{what} failed unexpectedly: {e}")),
    }
}

/// Where a whole block of the device's canary starts in `buf`, if one does.
fn canary_run(buf: &[u8], bs: u64) -> Option<usize> {
    buf.chunks(bs as usize)
        .position(|c| c.len() == bs as usize && c.iter().all(|&b| b == CANARY))
        .map(|i| i * bs as usize)
}

/// FALLOC_FL_KEEP_SIZE if `keep_size`.
fn keep(keep_size: bool) -> i32 {
    if keep_size {
        libc::FALLOC_FL_KEEP_SIZE
    } else {
        0
    }
}

fn grow(o: &mut Vec<u8>, end: u64) {
    if (o.len() as u64) < end {
        o.resize(end as usize, 0);
    }
}

fn put(o: &mut Vec<u8>, pos: u64, data: &[u8]) {
    grow(o, pos + data.len() as u64);
    o[pos as usize..pos as usize + data.len()].copy_from_slice(data);
}

fn zero(o: &mut [u8], start: u64, end: u64) {
    let end = end.min(o.len() as u64);
    if start < end {
        o[start as usize..end as usize].fill(0);
    }
}

//! Model-based test: random operation sequences over two extentfs files against a `Vec<u8>`
//! oracle each, at block sizes 1 KiB and 4 KiB with several folio sizes. The operations are
//! the engine's (writes, reads, truncates, mapped writes, cache drops) and the filesystem's
//! (every fallocate mode, reflink clones and copy_file_range between the files, fsync, syncfs,
//! unmount and mount, and a crash after a sync followed by log recovery). Sizes are checked
//! after every step and contents at each `Verify` and after every remount and recovery;
//! operations the oracle predicts to fail must fail with EINVAL, and only those.
//!
//! A failure prints the shrunk sequence; `PROPTEST_CASES` runs more cases.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use extentfs::{fsck, mkfs, ExtentFs, MkfsOptions, MountOptions, ROOT_INO};
use iomap::CacheConfig;
use iomap_dev::{CrashDevice, MemDevice, Pending};
use proptest::prelude::*;

const MAX_POS: u64 = 192 << 10;
const MAX_LEN: u64 = 64 << 10;
/// Aligned operations count in units of this (a multiple of every block size tested).
const UNIT: u64 = 4096;
const NAMES: [&[u8]; 2] = [b"a", b"b"];

#[derive(Clone, Debug)]
enum Step {
    Write {
        f: usize,
        pos: u64,
        len: u64,
        seed: u8,
    },
    Read {
        f: usize,
        pos: u64,
        len: u64,
    },
    Truncate {
        f: usize,
        size: u64,
    },
    Fallocate {
        f: usize,
        pos: u64,
        len: u64,
        keep: bool,
    },
    Punch {
        f: usize,
        pos: u64,
        len: u64,
    },
    ZeroRange {
        f: usize,
        pos: u64,
        len: u64,
        keep: bool,
    },
    Collapse {
        f: usize,
        unit: u64,
        units: u64,
    },
    Insert {
        f: usize,
        unit: u64,
        units: u64,
    },
    Clone {
        src: usize,
        sunit: u64,
        dst: usize,
        dunit: u64,
        units: u64,
        to_eof: bool,
    },
    Copy {
        src: usize,
        soff: u64,
        dst: usize,
        doff: u64,
        len: u64,
    },
    Mkwrite {
        f: usize,
        pos: u64,
        len: u64,
        seed: u8,
    },
    Fsync {
        f: usize,
    },
    Syncfs,
    DropCaches,
    Remount,
    CrashAfterSync,
    Verify,
}

fn step() -> impl Strategy<Value = Step> {
    let f = 0..2usize;
    prop_oneof![
        6 => (f.clone(), 0..MAX_POS, 1..MAX_LEN, any::<u8>()).prop_map(|(f, pos, len, seed)| Step::Write { f, pos, len, seed }),
        2 => (f.clone(), 0..MAX_POS, 1..MAX_LEN).prop_map(|(f, pos, len)| Step::Read { f, pos, len }),
        2 => (f.clone(), 0..MAX_POS).prop_map(|(f, size)| Step::Truncate { f, size }),
        1 => (f.clone(), 0..MAX_POS, 1..MAX_LEN, any::<bool>()).prop_map(|(f, pos, len, keep)| Step::Fallocate { f, pos, len, keep }),
        2 => (f.clone(), 0..MAX_POS, 1..MAX_LEN).prop_map(|(f, pos, len)| Step::Punch { f, pos, len }),
        1 => (f.clone(), 0..MAX_POS, 1..MAX_LEN, any::<bool>()).prop_map(|(f, pos, len, keep)| Step::ZeroRange { f, pos, len, keep }),
        1 => (f.clone(), 0..MAX_POS / UNIT, 1..8u64).prop_map(|(f, unit, units)| Step::Collapse { f, unit, units }),
        1 => (f.clone(), 0..MAX_POS / UNIT, 1..8u64).prop_map(|(f, unit, units)| Step::Insert { f, unit, units }),
        2 => (f.clone(), 0..MAX_POS / UNIT, f.clone(), 0..MAX_POS / UNIT, 1..12u64, any::<bool>())
            .prop_map(|(src, sunit, dst, dunit, units, to_eof)| Step::Clone { src, sunit, dst, dunit, units, to_eof }),
        1 => (f.clone(), 0..MAX_POS, f.clone(), 0..MAX_POS, 1..MAX_LEN)
            .prop_map(|(src, soff, dst, doff, len)| Step::Copy { src, soff, dst, doff, len }),
        1 => (f.clone(), 0..MAX_POS, 1..3000u64, any::<u8>()).prop_map(|(f, pos, len, seed)| Step::Mkwrite { f, pos, len, seed }),
        1 => f.clone().prop_map(|f| Step::Fsync { f }),
        1 => Just(Step::Syncfs),
        1 => Just(Step::DropCaches),
        1 => Just(Step::Remount),
        1 => Just(Step::CrashAfterSync),
        2 => Just(Step::Verify),
    ]
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

struct Harness {
    dev: Arc<CrashDevice<MemDevice>>,
    fs: Arc<ExtentFs>,
    inos: [u64; 2],
    cache: CacheConfig,
    bs: u64,
    oracle: [Vec<u8>; 2],
}

fn mount_opts(cache: CacheConfig) -> MountOptions {
    MountOptions {
        cache,
        read_only: false,
        commit_interval: None,
    }
}

impl Harness {
    fn new(bs: u32, cache: CacheConfig) -> Self {
        let mem = MemDevice::new(64 << 20);
        let dev = Arc::new(CrashDevice::new(mem).unwrap());
        mkfs(
            dev.clone(),
            &MkfsOptions {
                block_size: bs,
                log_blocks: Some(48),
            },
        )
        .unwrap();
        let fs = ExtentFs::mount(dev.clone(), mount_opts(cache)).unwrap();
        let inos = [0, 1].map(|i| fs.create(ROOT_INO, NAMES[i], 0o644, 0, 0).unwrap().ino);
        Harness {
            dev,
            fs,
            inos,
            cache,
            bs: u64::from(bs),
            oracle: [Vec::new(), Vec::new()],
        }
    }

    fn relookup(&mut self) {
        for (ino, name) in self.inos.iter_mut().zip(NAMES) {
            *ino = self.fs.lookup(ROOT_INO, name).unwrap().ino;
        }
    }

    fn verify(&self, at: &str) {
        for i in 0..2 {
            let st = self.fs.getattr(self.inos[i]).unwrap();
            assert_eq!(
                st.size,
                self.oracle[i].len() as u64,
                "{at}: size of file {i}"
            );
            let mut buf = vec![0u8; self.oracle[i].len()];
            let n = self.fs.read(self.inos[i], 0, &mut buf).unwrap();
            assert_eq!(n, buf.len(), "{at}: short read of file {i}");
            if buf != self.oracle[i] {
                let first = buf
                    .iter()
                    .zip(&self.oracle[i])
                    .position(|(a, b)| a != b)
                    .unwrap();
                panic!(
                    "{at}: file {i} differs first at byte {first}: {} != {}",
                    buf[first], self.oracle[i][first]
                );
            }
        }
    }

    fn check_fsck(&self, at: &str) {
        let r = fsck::fsck(self.dev.clone(), false);
        assert!(r.is_clean(), "{at}: fsck: {:?}", r.problems);
    }

    fn zero(o: &mut [u8], start: u64, end: u64) {
        let end = end.min(o.len() as u64);
        if start < end {
            o[start as usize..end as usize].fill(0);
        }
    }

    fn expect(&self, res: extentfs::Result<()>, ok: bool, at: &str) -> bool {
        match res {
            Ok(()) => {
                assert!(ok, "{at}: succeeded where it must fail");
                true
            }
            Err(e) => {
                assert!(!ok, "{at}: failed: {e}");
                assert_eq!(e.errno(), libc::EINVAL, "{at}: {e}");
                false
            }
        }
    }

    fn run(&mut self, step: &Step, n: usize) {
        let at = format!("step {n} {step:?}");
        let fs = Arc::clone(&self.fs);
        let bs = self.bs;
        match *step {
            Step::Write { f, pos, len, seed } => {
                let data = pattern(len as usize, seed);
                assert_eq!(
                    fs.write(self.inos[f], pos, &data).unwrap(),
                    data.len(),
                    "{at}"
                );
                let o = &mut self.oracle[f];
                let end = (pos + len) as usize;
                if o.len() < end {
                    o.resize(end, 0);
                }
                o[pos as usize..end].copy_from_slice(&data);
            }
            Step::Read { f, pos, len } => {
                let mut buf = vec![0u8; len as usize];
                let n = fs.read(self.inos[f], pos, &mut buf).unwrap();
                let o = &self.oracle[f];
                let want = o
                    .get(pos as usize..(pos + len).min(o.len() as u64) as usize)
                    .unwrap_or(&[]);
                assert_eq!(&buf[..n], want, "{at}");
            }
            Step::Truncate { f, size } => {
                fs.truncate(self.inos[f], size).unwrap();
                self.oracle[f].resize(size as usize, 0);
            }
            Step::Fallocate { f, pos, len, keep } => {
                let mode = if keep { libc::FALLOC_FL_KEEP_SIZE } else { 0 };
                fs.fallocate(self.inos[f], mode, pos, len).unwrap();
                let o = &mut self.oracle[f];
                if !keep && (pos + len) as usize > o.len() {
                    o.resize((pos + len) as usize, 0);
                }
            }
            Step::Punch { f, pos, len } => {
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                fs.fallocate(self.inos[f], mode, pos, len).unwrap();
                Self::zero(&mut self.oracle[f], pos, pos + len);
            }
            Step::ZeroRange { f, pos, len, keep } => {
                let mode =
                    libc::FALLOC_FL_ZERO_RANGE | if keep { libc::FALLOC_FL_KEEP_SIZE } else { 0 };
                fs.fallocate(self.inos[f], mode, pos, len).unwrap();
                let o = &mut self.oracle[f];
                Self::zero(o, pos, pos + len);
                if !keep && (pos + len) as usize > o.len() {
                    o.resize((pos + len) as usize, 0);
                }
            }
            Step::Collapse { f, unit, units } => {
                let (pos, len) = (unit * UNIT, units * UNIT);
                let size = self.oracle[f].len() as u64;
                let ok = pos + len < size;
                let res = fs.fallocate(self.inos[f], libc::FALLOC_FL_COLLAPSE_RANGE, pos, len);
                if self.expect(res, ok, &at) {
                    self.oracle[f].drain(pos as usize..(pos + len) as usize);
                }
            }
            Step::Insert { f, unit, units } => {
                let (pos, len) = (unit * UNIT, units * UNIT);
                let ok = pos < self.oracle[f].len() as u64;
                let res = fs.fallocate(self.inos[f], libc::FALLOC_FL_INSERT_RANGE, pos, len);
                if self.expect(res, ok, &at) {
                    let o = &mut self.oracle[f];
                    o.splice(
                        pos as usize..pos as usize,
                        std::iter::repeat_n(0, len as usize),
                    );
                }
            }
            Step::Clone {
                src,
                sunit,
                dst,
                dunit,
                units,
                to_eof,
            } => {
                let (soff, doff) = (sunit * UNIT, dunit * UNIT);
                let ssize = self.oracle[src].len() as u64;
                let dsize = self.oracle[dst].len() as u64;
                // Either whole units, or everything from soff to the end of the source.
                let len = if to_eof {
                    ssize.saturating_sub(soff)
                } else {
                    units * UNIT
                };
                let unaligned = len % bs != 0;
                let ok = len > 0
                    && soff + len <= ssize
                    && !(src == dst && soff < doff + len && doff < soff + len)
                    && !(unaligned && doff + len < dsize);
                let res = fs.clone_range(self.inos[src], soff, self.inos[dst], doff, len);
                if len == 0 {
                    // Nothing to share: either outcome is fine, and nothing changes.
                    return;
                }
                if self.expect(res, ok, &at) {
                    let data = self.oracle[src][soff as usize..(soff + len) as usize].to_vec();
                    let o = &mut self.oracle[dst];
                    if o.len() < (doff + len) as usize {
                        o.resize((doff + len) as usize, 0);
                    }
                    o[doff as usize..(doff + len) as usize].copy_from_slice(&data);
                }
            }
            Step::Copy {
                src,
                soff,
                dst,
                doff,
                len,
            } => {
                let ssize = self.oracle[src].len() as u64;
                let n = len.min(ssize.saturating_sub(soff));
                let overlap = src == dst && n > 0 && soff < doff + n && doff < soff + n;
                match fs.copy_file_range(self.inos[src], soff, self.inos[dst], doff, len) {
                    Ok(done) => {
                        assert!(!overlap, "{at}: an overlapping copy succeeded");
                        assert_eq!(done, n, "{at}");
                        if n > 0 {
                            let data =
                                self.oracle[src][soff as usize..(soff + n) as usize].to_vec();
                            let o = &mut self.oracle[dst];
                            if o.len() < (doff + n) as usize {
                                o.resize((doff + n) as usize, 0);
                            }
                            o[doff as usize..(doff + n) as usize].copy_from_slice(&data);
                        }
                    }
                    Err(e) => {
                        assert!(overlap, "{at}: {e}");
                        assert_eq!(e.errno(), libc::EINVAL);
                    }
                }
            }
            Step::Mkwrite { f, pos, len, seed } => {
                let size = self.oracle[f].len() as u64;
                if pos >= size {
                    assert!(fs.page_mkwrite(self.inos[f], pos).is_err(), "{at}");
                    return;
                }
                let folio = fs.page_mkwrite(self.inos[f], pos).unwrap();
                let off = (pos - folio.pos()) as usize;
                // The folio is writable to the end of the page holding EOF; the model keeps
                // to the file.
                let inside = (size - folio.pos()).min(folio.len() as u64) as usize;
                let n = (len as usize).min(inside.saturating_sub(off));
                let data = pattern(n, seed);
                folio.write(off, &data).unwrap();
                drop(folio);
                self.oracle[f][pos as usize..pos as usize + n].copy_from_slice(&data);
            }
            Step::Fsync { f } => {
                let fh = fs.open(self.inos[f]).unwrap();
                fs.fsync(&fh, false).unwrap();
                fs.release(fh).unwrap();
            }
            Step::Syncfs => fs.syncfs().unwrap(),
            Step::DropCaches => fs.drop_caches().unwrap(),
            Step::Remount => {
                fs.unmount().unwrap();
                drop(fs);
                self.check_fsck(&at);
                self.fs = ExtentFs::mount(self.dev.clone(), mount_opts(self.cache)).unwrap();
                self.relookup();
                self.verify(&at);
            }
            Step::CrashAfterSync => {
                fs.syncfs().unwrap();
                fs.abandon();
                drop(fs);
                let image = self
                    .dev
                    .image_at(self.dev.events(), &Pending::None)
                    .unwrap();
                self.dev = Arc::new(CrashDevice::new(image).unwrap());
                self.check_fsck(&at);
                self.fs = ExtentFs::mount(self.dev.clone(), mount_opts(self.cache)).unwrap();
                self.relookup();
                self.verify(&at);
            }
            Step::Verify => self.verify(&at),
        }
        for i in 0..2 {
            let size = self.fs.getattr(self.inos[i]).unwrap().size;
            assert_eq!(size, self.oracle[i].len() as u64, "{at}: size of file {i}");
        }
    }
}

fn run_case(bs: u32, page: usize, max_folio: usize, steps: &[Step]) {
    let cache = CacheConfig {
        page_size: page,
        max_folio_size: max_folio,
    };
    let mut h = Harness::new(bs, cache);
    for (n, s) in steps.iter().enumerate() {
        h.run(s, n);
    }
    h.verify("end");
    h.fs.unmount().unwrap();
    h.check_fsck("end");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn model_1k_blocks(
        folio in prop::sample::select(vec![4096usize, 16384, 65536]),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        run_case(1024, 1024, folio, &steps);
    }

    #[test]
    fn model_4k_blocks(
        folio in prop::sample::select(vec![4096usize, 65536, 256 << 10]),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        run_case(4096, 4096, folio, &steps);
    }
}

/// Collapsing a range inside a large cached folio left the part of the folio past the range
/// cached as zeros, hiding the data shifted down into it.
#[test]
fn regression_collapse_inside_a_large_folio_shows_the_shifted_data() {
    let steps = [
        Step::Write {
            f: 1,
            pos: 54108,
            len: 44196,
            seed: 0,
        },
        Step::Remount,
        Step::Collapse {
            f: 1,
            unit: 1,
            units: 1,
        },
    ];
    run_case(4096, 4096, 65536, &steps);
}

/// A clone of nothing grew the destination to the clone's offset.
#[test]
fn regression_an_empty_clone_changes_nothing() {
    let steps = [Step::Clone {
        src: 0,
        sunit: 0,
        dst: 0,
        dunit: 1,
        units: 1,
        to_eof: true,
    }];
    run_case(1024, 1024, 4096, &steps);
}

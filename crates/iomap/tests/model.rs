//! Model-based test: random operation sequences against the engine and a `Vec<u8>` oracle,
//! across block sizes 512 B..64 KiB and largest folios 4 KiB..2 MiB. After every step the
//! size and the folio state invariants are checked; `Verify` steps read the whole file back
//! through the cache and compare it, and after each stand-in writeback the device contents are
//! compared too. (Reading everything after every step would leave every block uptodate and
//! hide the paths that fill blocks that are not.)
//!
//! A failure prints the shrunk operation sequence; rerun it with `PROPTEST_CASES` and the seed
//! proptest prints.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

mod common;

use common::{pattern, ShortSource, TestFs};
use iomap::WritebackControl;
use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};

const BLOCK_SIZES: [u32; 5] = [512, 1024, 4096, 16384, 65536];
const MAX_FOLIOS: [usize; 5] = [4096, 16384, 65536, 256 << 10, 2 << 20];
const PAGE_SIZES: [usize; 3] = [4096, 8192, 65536];
/// Offsets stay below this, lengths below `MAX_LEN`.
const MAX_POS: u64 = 384 << 10;
const MAX_LEN: u64 = 96 << 10;

#[derive(Clone, Debug)]
enum Step {
    Write {
        pos: u64,
        len: u64,
        seed: u8,
    },
    /// A write whose source delivers `per_call` bytes a call and runs dry after `limit`.
    ShortWrite {
        pos: u64,
        len: u64,
        seed: u8,
        per_call: usize,
        limit: usize,
    },
    Read {
        pos: u64,
        len: u64,
    },
    Truncate {
        size: u64,
    },
    ZeroRange {
        pos: u64,
        len: u64,
    },
    Punch {
        pos: u64,
        len: u64,
    },
    Fallocate {
        pos: u64,
        len: u64,
    },
    Mkwrite {
        pos: u64,
        len: u64,
        seed: u8,
    },
    ShareAll,
    Unshare {
        pos: u64,
        len: u64,
    },
    /// Writeback of every dirty block, waited for, then a device comparison.
    Flush,
    /// fsync of a range through an open file, then a device comparison over it.
    Fsync {
        pos: u64,
        len: u64,
    },
    /// Data-integrity writeback of a range, not waited for.
    WritebackRange {
        pos: u64,
        len: u64,
    },
    /// Background writeback with a budget, not waited for.
    Background {
        budget: u64,
    },
    /// Writeback, then release every clean folio so later reads come from the device.
    DropCaches,
    /// Release clean folios only (dirty ones must survive).
    Invalidate,
    /// Read the whole file back and compare.
    Verify,
    /// The next validity check finds the mapping stale, as if the extent map changed
    /// underneath (R7).
    StaleOnce,
}

#[derive(Clone, Debug)]
struct Model {
    block_size: u32,
    page_size: usize,
    max_folio: usize,
    data: Vec<u8>,
}

impl Model {
    fn min_folio(&self) -> u64 {
        (self.block_size as u64).max(self.page_size as u64)
    }

    fn write(&mut self, pos: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let end = pos as usize + bytes.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[pos as usize..end].copy_from_slice(bytes);
    }

    fn zero(&mut self, pos: u64, len: u64) {
        let end = ((pos + len) as usize).min(self.data.len());
        if (pos as usize) < end {
            self.data[pos as usize..end].fill(0);
        }
    }

    /// How much of a mapped write at `pos` of `len` bytes fits in the smallest folio holding
    /// `pos` and inside the file: the engine's folio may be bigger, never smaller.
    fn mkwrite_len(&self, pos: u64, len: u64) -> u64 {
        let size = self.data.len() as u64;
        if pos >= size {
            return 0;
        }
        let mf = self.min_folio();
        len.min(size - pos).min(mf - pos % mf)
    }
}

fn pos_len() -> impl Strategy<Value = (u64, u64)> {
    (0..MAX_POS, 0..MAX_LEN, any::<bool>()).prop_map(|(pos, len, align)| {
        if align {
            (pos & !4095, len & !4095)
        } else {
            (pos, len)
        }
    })
}

struct RefMachine;

impl ReferenceStateMachine for RefMachine {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        // Mostly 4 KiB pages, as most machines have.
        let page = prop_oneof![4 => Just(0usize), 1 => Just(1), 1 => Just(2)];
        (0..BLOCK_SIZES.len(), 0..MAX_FOLIOS.len(), page)
            .prop_map(|(b, f, p)| Model {
                block_size: BLOCK_SIZES[b],
                page_size: PAGE_SIZES[p],
                max_folio: MAX_FOLIOS[f].max(PAGE_SIZES[p]),
                data: Vec::new(),
            })
            .boxed()
    }

    fn transitions(_state: &Model) -> BoxedStrategy<Step> {
        prop_oneof![
            6 => (pos_len(), any::<u8>()).prop_map(|((pos, len), seed)| Step::Write { pos, len, seed }),
            3 => (pos_len(), any::<u8>(), 1..5000usize, 0.0..1.0f64)
                .prop_map(|((pos, len), seed, per_call, frac)| {
                    let limit = (len as f64 * frac) as usize;
                    Step::ShortWrite { pos, len, seed, per_call, limit }
                }),
            3 => pos_len().prop_map(|(pos, len)| Step::Read { pos, len }),
            2 => (0..MAX_POS).prop_map(|size| Step::Truncate { size }),
            2 => pos_len().prop_map(|(pos, len)| Step::ZeroRange { pos, len }),
            2 => pos_len().prop_map(|(pos, len)| Step::Punch { pos, len }),
            1 => pos_len().prop_map(|(pos, len)| Step::Fallocate { pos, len }),
            2 => (0..MAX_POS, 1..3000u64, any::<u8>()).prop_map(|(pos, len, seed)| Step::Mkwrite { pos, len, seed }),
            1 => Just(Step::ShareAll),
            1 => pos_len().prop_map(|(pos, len)| Step::Unshare { pos, len }),
            2 => Just(Step::Flush),
            1 => Just(Step::DropCaches),
            1 => Just(Step::Invalidate),
            3 => Just(Step::Verify),
            2 => Just(Step::StaleOnce),
            2 => pos_len().prop_map(|(pos, len)| Step::Fsync { pos, len }),
            2 => pos_len().prop_map(|(pos, len)| Step::WritebackRange { pos, len }),
            1 => (0..MAX_LEN).prop_map(|budget| Step::Background { budget }),
        ]
        .boxed()
    }

    fn apply(mut state: Model, step: &Step) -> Model {
        match *step {
            Step::Write { pos, len, seed } => {
                state.write(pos, &pattern(len as usize, seed));
            }
            Step::ShortWrite {
                pos,
                len,
                seed,
                limit,
                ..
            } => {
                let n = (len as usize).min(limit);
                state.write(pos, &pattern(len as usize, seed)[..n]);
            }
            Step::Truncate { size } => state.data.resize(size as usize, 0),
            Step::ZeroRange { pos, len } | Step::Punch { pos, len } => state.zero(pos, len),
            Step::Mkwrite { pos, len, seed } => {
                let n = state.mkwrite_len(pos, len);
                state.write(pos, &pattern(n as usize, seed));
            }
            Step::Read { .. }
            | Step::Fallocate { .. }
            | Step::ShareAll
            | Step::Unshare { .. }
            | Step::Flush
            | Step::DropCaches
            | Step::Invalidate
            | Step::Verify
            | Step::StaleOnce
            | Step::Fsync { .. }
            | Step::WritebackRange { .. }
            | Step::Background { .. } => {}
        }
        state
    }
}

struct Engine;

/// The engine under test, and the bytes the model expects after the last step (for the final
/// sync in `teardown`, which sees no model).
struct Sut {
    fs: TestFs,
    expect: Vec<u8>,
}

impl StateMachineTest for Engine {
    type SystemUnderTest = Sut;
    type Reference = RefMachine;

    fn init_test(model: &Model) -> Sut {
        Sut {
            fs: init_fs(model),
            expect: Vec::new(),
        }
    }

    fn apply(mut sut: Sut, model: &Model, step: Step) -> Sut {
        apply_step(&sut.fs, model, step);
        sut.expect.clone_from(&model.data);
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        check_invariants(&sut.fs, model);
    }

    /// A final sync: everything the model holds is on the device, and reads back.
    fn teardown(sut: Sut) {
        let model = Model {
            block_size: sut.fs.bs as u32,
            page_size: 0,
            max_folio: 0,
            data: sut.expect,
        };
        sut.fs.flush_all();
        check_device(&sut.fs, &model);
        verify_contents(&sut.fs, &model);
    }
}

fn init_fs(model: &Model) -> TestFs {
    let config = iomap::CacheConfig {
        page_size: model.page_size,
        max_folio_size: model.max_folio,
    };
    TestFs::with_config(model.block_size, config, 1 << 20)
}

fn apply_step(fs: &TestFs, model: &Model, step: Step) {
    let bs = fs.bs;
    match step {
        Step::Write { pos, len, seed } => {
            let n = fs.write(pos, &pattern(len as usize, seed)).unwrap();
            assert_eq!(n, len);
        }
        Step::ShortWrite {
            pos,
            len,
            seed,
            per_call,
            limit,
        } => {
            let data = pattern(len as usize, seed);
            let mut src = ShortSource::new(&data, per_call, limit);
            let n = fs.write_from(pos, len, &mut src).unwrap();
            assert_eq!(n as usize, (len as usize).min(limit));
            assert_eq!(
                src.consumed(),
                n as usize,
                "bytes taken and not written were given back"
            );
        }
        Step::Read { pos, len } => {
            let got = fs.read(pos, len as usize).unwrap();
            let size = model.data.len() as u64;
            let end = (pos + len).min(size).max(pos.min(size));
            assert_eq!(
                got.len() as u64,
                end - pos.min(size),
                "read length at {pos}+{len}"
            );
            assert!(
                got == model.data[pos.min(size) as usize..end as usize],
                "read {pos}+{len}"
            );
        }
        Step::Truncate { size } => fs.truncate(size).unwrap(),
        Step::ZeroRange { pos, len } => {
            iomap::zero_range(&fs.mapping, fs, pos, len).unwrap();
        }
        Step::Punch { pos, len } => {
            if len > 0 {
                fs.punch(pos, len).unwrap()
            }
        }
        Step::Fallocate { pos, len } => {
            if len > 0 {
                fs.fallocate_blocks(pos / bs, (pos + len).div_ceil(bs) - pos / bs)
                    .unwrap();
            }
        }
        Step::Mkwrite { pos, len, seed } => {
            let size = fs.mapping.size();
            match iomap::page_mkwrite(&fs.mapping, fs, pos) {
                Ok(folio) => {
                    assert!(pos < size);
                    let n = (len)
                        .min(size - pos)
                        .min(folio.pos() + folio.len() as u64 - pos);
                    let mf = model.min_folio();
                    let n = n.min(mf - pos % mf);
                    folio
                        .write((pos - folio.pos()) as usize, &pattern(n as usize, seed))
                        .unwrap();
                    // A store past EOF in the page holding it: never to be read, nor to
                    // show when the file grows.
                    let (fpos, fend) = (folio.pos(), folio.pos() + folio.len() as u64);
                    if fpos < size && size < fend {
                        let past = vec![0xEE; (fend - size) as usize];
                        folio.write((size - fpos) as usize, &past).unwrap();
                    }
                }
                Err(e) => {
                    assert!(pos >= size, "mkwrite inside the file failed: {e}");
                    assert_eq!(e.errno(), 14);
                }
            }
        }
        Step::ShareAll => fs.share_blocks(0, MAX_POS.div_ceil(bs) + 64),
        Step::Unshare { pos, len } => iomap::file_unshare(&fs.mapping, fs, pos, len).unwrap(),
        Step::Flush => {
            fs.flush_all();
            check_device(fs, model);
            let usage = fs.mapping.cache().usage();
            assert_eq!(
                (usage.dirty_bytes, usage.writeback_bytes),
                (0, 0),
                "{usage:?}"
            );
        }
        Step::DropCaches => {
            fs.flush_all();
            check_device(fs, model);
            fs.mapping.release_clean(0, u64::MAX);
            assert_eq!(fs.mapping.nr_folios(), 0, "every folio was clean");
            assert_eq!(fs.mapping.cache().usage(), iomap::GaugeSnapshot::default());
        }
        Step::Verify => verify_contents(fs, model),
        Step::Fsync { pos, len } => {
            let file = fs.open();
            file.fsync(&fs.wb, pos, pos + len, false).unwrap();
            check_device_range(fs, model, pos, pos + len);
        }
        Step::WritebackRange { pos, len } => {
            fs.writeback(&mut WritebackControl::integrity(pos, pos + len))
                .unwrap();
        }
        Step::Background { budget } => {
            fs.writeback(&mut WritebackControl::background(budget))
                .unwrap();
        }
        Step::StaleOnce => {
            let mut once = true;
            fs.state.lock().on_valid = Some(Box::new(move |_, _| std::mem::take(&mut once)));
        }
        Step::Invalidate => {
            let dirty_before = fs.mapping.dirty_folios(0, u64::MAX);
            fs.mapping.release_clean(0, u64::MAX);
            for pos in dirty_before {
                assert!(
                    fs.mapping.find_folio(pos).is_some(),
                    "dirty folio {pos} was released"
                );
            }
        }
    }
}

fn check_invariants(fs: &TestFs, model: &Model) {
    assert_eq!(fs.mapping.size(), model.data.len() as u64, "file size");
    // The cache's gauges account exactly what a walk of its folios finds.
    let folios = fs.mapping.folios_in(0, u64::MAX);
    let usage = fs.mapping.cache().usage();
    assert_eq!(usage.folios, folios.len() as u64, "folio gauge");
    let bytes = |keep: &dyn Fn(&iomap::Folio) -> bool| -> u64 {
        folios
            .iter()
            .filter(|f| keep(f))
            .map(|f| f.size() as u64)
            .sum()
    };
    assert_eq!(usage.cached_bytes, bytes(&|_| true), "cached gauge");
    assert_eq!(usage.dirty_bytes, bytes(&|f| f.is_dirty()), "dirty gauge");
    for folio in folios {
        let s = folio.snapshot();
        assert!(!folio.is_locked(), "folio {} left locked", s.pos);
        assert_eq!(folio.read_bytes_pending(), 0);
        for (i, (&d, &u)) in s.dirty_blocks.iter().zip(&s.uptodate_blocks).enumerate() {
            assert!(!d || u, "folio {} block {i} dirty but not uptodate", s.pos);
        }
        assert_eq!(
            s.dirty,
            s.dirty_blocks.iter().any(|&d| d),
            "folio {} dirty flag",
            s.pos
        );
    }
}

fn verify_contents(fs: &TestFs, model: &Model) {
    let got = fs.read(0, model.data.len() + 4096).unwrap();
    if got != model.data {
        let at = got.iter().zip(&model.data).position(|(a, b)| a != b);
        panic!(
            "contents differ (engine {} bytes, model {}), first at {at:?}",
            got.len(),
            model.data.len()
        );
    }
}

/// After writeback every mapped block inside the file holds the model's bytes (zeros past
/// EOF in the EOF block).
fn check_device(fs: &TestFs, model: &Model) {
    check_device_range(fs, model, 0, u64::MAX);
}

/// Like `check_device`, for the blocks wholly inside `[start, end)`.
fn check_device_range(fs: &TestFs, model: &Model, start: u64, end: u64) {
    let bs = fs.bs as usize;
    for (b, bytes) in fs.device_view() {
        let start_b = b * fs.bs;
        if start_b < start || start_b.saturating_add(fs.bs) > end {
            continue;
        }
        let start = b as usize * bs;
        if start >= model.data.len() {
            continue;
        }
        let mut want = vec![0u8; bs];
        let n = (model.data.len() - start).min(bs);
        want[..n].copy_from_slice(&model.data[start..start + n]);
        assert!(
            bytes == want,
            "device block for file block {b} differs from the model"
        );
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_shrink_iters: 4096,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_a_byte_vector(sequential 1..64 => Engine);
}

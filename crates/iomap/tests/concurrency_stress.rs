//! Concurrency stress: writers on their own regions (writes, zero_range, punch, fallocate,
//! mapped writes, read-back checks against a per-region model) while a reader reads everywhere
//! and another thread runs background and range writeback, fsyncs and cache drops with no I/O
//! lock, as a flusher would. Ends by checking the contents, then again after writeback and a
//! cache drop, from the device. `SEEDS=n` runs more seeds.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use common::{pattern, TestFs};
use iomap::WritebackControl;
use parking_lot::{Mutex, RwLock};
use rand::{Rng, SeedableRng};

const REGION: u64 = 128 << 10;
const WRITERS: u64 = 3;

fn run(bs: u32, max_folio: usize, seed: u64) {
    let fs = Arc::new(TestFs::new(bs, max_folio));
    let iolock = Arc::new(RwLock::new(()));
    fs.write(0, &vec![0u8; (REGION * WRITERS) as usize])
        .unwrap();
    fs.flush_all();
    let models: Arc<Vec<Mutex<Vec<u8>>>> = Arc::new(
        (0..WRITERS)
            .map(|_| Mutex::new(vec![0u8; REGION as usize]))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(WRITERS as usize + 2));
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let (fs, iolock, models, start) =
            (fs.clone(), iolock.clone(), models.clone(), start.clone());
        handles.push(thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 100 + w);
            start.wait();
            let mut hist: Vec<(usize, u8, u64, u64)> = Vec::new();
            for i in 0..200 {
                let off = rng.gen_range(0..REGION - 1);
                let len = rng.gen_range(1..=(REGION - off).min(20000));
                let pos = w * REGION + off;
                let op = rng.gen_range(0..10);
                hist.push((i, op, off, len));
                match op {
                    0..=4 => {
                        let data = pattern(len as usize, (i as u8).wrapping_add(w as u8));
                        let _io = iolock.write();
                        assert_eq!(fs.write(pos, &data).unwrap(), len);
                        models[w as usize].lock()[off as usize..(off + len) as usize].copy_from_slice(&data);
                    }
                    5 => {
                        let _io = iolock.write();
                        iomap::zero_range(&fs.mapping, &*fs, pos, len).unwrap();
                        models[w as usize].lock()[off as usize..(off + len) as usize].fill(0);
                        let got = fs.read(pos, len as usize).unwrap();
                        if let Some(a) = got.iter().position(|&b| b != 0) {
                            let abs = pos + a as u64;
                            panic!("IMMEDIATE zero_range miss at {abs} (rel {}) op {i} bs {bs} folio {max_folio} seed {seed} ext {:?} folio {:?}", abs - w*REGION, fs.ext(abs / fs.bs), fs.mapping.find_folio(abs).map(|f| f.snapshot()));
                        }
                    }
                    6 => {
                        let _io = iolock.write();
                        fs.punch(pos, len).unwrap();
                        models[w as usize].lock()[off as usize..(off + len) as usize].fill(0);
                        let got = fs.read(pos, len as usize).unwrap();
                        if let Some(a) = got.iter().position(|&b| b != 0) {
                            let abs = pos + a as u64;
                            panic!("IMMEDIATE punch miss at {abs} (rel {}) op {i} bs {bs} folio {max_folio} seed {seed} ext {:?} folio {:?}", abs - w*REGION, fs.ext(abs / fs.bs), fs.mapping.find_folio(abs).map(|f| f.snapshot()));
                        }
                    }
                    7 => {
                        let _io = iolock.write();
                        let bsz = fs.bs;
                        fs.fallocate_blocks(pos / bsz, (pos + len).div_ceil(bsz) - pos / bsz).unwrap();
                    }
                    8 => {
                        // mkwrite takes no I/O lock, only the invalidate lock (inside).
                        let mk = iomap::page_mkwrite(&fs.mapping, &*fs, pos).unwrap();
                        let foff = (pos - mk.pos()) as usize;
                        let n = (mk.len() - foff).min(16).min(((w + 1) * REGION - pos) as usize);
                        mk.write(foff, &vec![0xC3; n]).unwrap();
                        models[w as usize].lock()[off as usize..off as usize + n].fill(0xC3);
                    }
                    _ => {
                        let _io = iolock.read();
                        let got = fs.read(w * REGION, REGION as usize).unwrap();
                        let m = models[w as usize].lock();
                        if got != *m {
                            let at = got.iter().zip(m.iter()).position(|(a, b)| a != b);
                            let a = at.unwrap() as u64;
                            let rel: Vec<_> = hist.iter().filter(|h| h.2 <= a + 4096 && a < h.2 + h.3 + 4096).collect();
                            let end = (a as usize..got.len()).find(|&j| got[j] == m[j]).unwrap_or(got.len());
                            let abs = w * REGION + a;
                            let fsnap = fs.mapping.find_folio(abs).map(|f| f.snapshot());
                            let exts: Vec<_> = (abs / fs.bs..abs / fs.bs + 4).map(|b| (b, fs.ext(b))).collect();
                            let st = fs.mapping.cache().stats().snapshot();
                            panic!("writer {w} lost its bytes at {at:?}..{end} got {} want {} (bs {bs} folio {max_folio} seed {seed}) hist {rel:?}\nstats {st:?}\nexts {exts:?}\nfolio {fsnap:?}", got[a as usize], m[a as usize]);
                        }
                    }
                }
            }
        }));
    }
    {
        let (fs, iolock, stop, start) = (fs.clone(), iolock.clone(), stop.clone(), start.clone());
        handles.push(thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed + 99);
            let mut buf = vec![0u8; 65536];
            start.wait();
            while !stop.load(Ordering::Relaxed) {
                let pos = rng.gen_range(0..REGION * WRITERS);
                let _io = iolock.read();
                fs.read_into(pos, &mut buf);
            }
        }));
    }
    let flusher = {
        let (fs, stop) = (fs.clone(), stop.clone());
        thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed + 7);
            start.wait();
            while !stop.load(Ordering::Relaxed) {
                // background flusher and fsyncers: no I/O lock
                match rng.gen_range(0..4) {
                    0 => {
                        let _ = fs
                            .writeback(&mut WritebackControl::background(rng.gen_range(0..65536)));
                    }
                    1 => {
                        let s = rng.gen_range(0..REGION * WRITERS);
                        let _ = fs.writeback(&mut WritebackControl::integrity(s, s + 65536));
                    }
                    2 => {
                        let f = fs.open();
                        let _ = fs.fsync(&f);
                    }
                    _ => {
                        fs.mapping.release_clean(0, u64::MAX);
                    }
                }
                thread::yield_now();
            }
        })
    };
    for h in handles.drain(..WRITERS as usize) {
        h.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    flusher.join().unwrap();
    let whole: Vec<u8> = models.iter().flat_map(|m| m.lock().clone()).collect();
    let got = fs.read(0, whole.len()).unwrap();
    if got != whole {
        let at = got.iter().zip(whole.iter()).position(|(a, b)| a != b);
        panic!(
            "final contents, bs {bs} folio {max_folio} seed {seed} at {at:?} got {:?} want {:?}",
            at.map(|a| got[a]),
            at.map(|a| whole[a])
        );
    }
    fs.flush_all();
    fs.mapping.release_clean(0, u64::MAX);
    let got = fs.read(0, whole.len()).unwrap();
    if got != whole {
        let at = got.iter().zip(whole.iter()).position(|(a, b)| a != b);
        panic!(
            "after writeback and drop, bs {bs} folio {max_folio} seed {seed}, first diff {at:?}"
        );
    }
}

#[test]
fn writers_readers_flushers_and_cache_drops_keep_every_byte() {
    let seeds: u64 = std::env::var("SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    for seed in 0..seeds {
        for (bs, mf) in [
            (1024u32, 16384usize),
            (4096, 65536),
            (4096, 4096),
            (16384, 65536),
        ] {
            run(bs, mf, seed);
        }
    }
}

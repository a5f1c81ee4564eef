//! Many threads on one mapping: writers on their own regions, readers everywhere, and cache
//! drops, mapped writes and writeback stand-ins in between. Each writer checks its own bytes;
//! everything must finish (no lock cycle) and end consistent.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use common::{pattern, TestFs};
use parking_lot::{Mutex, RwLock};
use rand::{Rng, SeedableRng};

const REGION: u64 = 256 << 10;
const WRITERS: u64 = 3;

#[test]
fn writers_readers_and_cache_drops_run_together_without_deadlock_or_corruption() {
    for (bs, max_folio) in [(1024u32, 16384usize), (4096, 2 << 20), (16384, 65536)] {
        run(bs, max_folio);
    }
}

fn run(bs: u32, max_folio: usize) {
    let fs = Arc::new(TestFs::new(bs, max_folio));
    // The filesystem's I/O lock: shared for reads, exclusive for writes and truncation.
    let iolock = Arc::new(RwLock::new(()));
    fs.write(0, &vec![0u8; (REGION * WRITERS) as usize])
        .unwrap();
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
            let mut rng = rand::rngs::StdRng::seed_from_u64(w);
            start.wait();
            for i in 0..300 {
                let off = rng.gen_range(0..REGION - 1);
                let len = rng.gen_range(1..=(REGION - off).min(20000));
                let data = pattern(len as usize, (i as u8).wrapping_add(w as u8));
                let pos = w * REGION + off;
                {
                    let _io = iolock.write();
                    assert_eq!(fs.write(pos, &data).unwrap(), len);
                    models[w as usize].lock()[off as usize..(off + len) as usize]
                        .copy_from_slice(&data);
                }
                if i % 7 == 0 {
                    let _io = iolock.read();
                    let got = fs.read(w * REGION, REGION as usize).unwrap();
                    assert!(
                        got == *models[w as usize].lock(),
                        "writer {w} lost its bytes"
                    );
                }
                if i % 11 == 0 {
                    let mpos = w * REGION + rng.gen_range(0..REGION);
                    let _io = iolock.write();
                    let mk = iomap::page_mkwrite(&fs.mapping, &*fs, mpos).unwrap();
                    let folio_off = (mpos - mk.pos()) as usize;
                    let n = (mk.len() - folio_off)
                        .min(16)
                        .min(((w + 1) * REGION - mpos) as usize);
                    mk.write(folio_off, &vec![0xC3; n]).unwrap();
                    let m = (mpos - w * REGION) as usize;
                    models[w as usize].lock()[m..m + n].fill(0xC3);
                }
            }
        }));
    }
    // A reader across all regions, and a thread dropping clean cache and writing back.
    {
        let (fs, iolock, stop, start) = (fs.clone(), iolock.clone(), stop.clone(), start.clone());
        handles.push(thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(99);
            let mut buf = vec![0u8; 65536];
            start.wait();
            while !stop.load(Ordering::Relaxed) {
                let pos = rng.gen_range(0..REGION * WRITERS);
                let _io = iolock.read();
                fs.read_into(pos, &mut buf);
            }
        }));
    }
    let dropper = {
        let (fs, iolock, stop) = (fs.clone(), iolock.clone(), stop.clone());
        thread::spawn(move || {
            start.wait();
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) || rounds < 3 {
                {
                    let _io = iolock.write();
                    fs.flush_all();
                }
                fs.mapping.release_clean(0, u64::MAX);
                rounds += 1;
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
    dropper.join().unwrap();
    let whole: Vec<u8> = models.iter().flat_map(|m| m.lock().clone()).collect();
    assert!(
        fs.read(0, whole.len()).unwrap() == whole,
        "bs {bs} folio {max_folio}"
    );
    for f in fs.mapping.folios_in(0, u64::MAX) {
        assert!(!f.is_locked());
    }
}

//! One conformance suite that every device passes: reads return what was written, vectored
//! requests scatter and gather in order, flushes cover completed writes (also when submitted
//! from a completion), bad requests are refused with a reason, and many threads may submit at
//! once with requests in flight.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use iomap_dev::{
    BlockDevice, BlockDeviceExt, BufRange, CrashDevice, DevAddr, DeviceOptions, DeviceRequest,
    FaultDevice, FileDevice, IoBuf, LogDevice, MemDevice, SharedBuf, UringDevice,
};

const CAPACITY: u64 = 16 << 20;

/// A device under test and the backing file to check and remove, if any.
struct Subject {
    dev: Arc<dyn BlockDevice>,
    path: Option<PathBuf>,
}

impl Drop for Subject {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            std::fs::remove_file(p).ok();
        }
    }
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iomap-dev-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn mem() -> Subject {
    Subject {
        dev: Arc::new(MemDevice::new(CAPACITY)),
        path: None,
    }
}

fn logged_mem() -> Subject {
    Subject {
        dev: Arc::new(LogDevice::new(MemDevice::new(CAPACITY))),
        path: None,
    }
}

fn fault_mem() -> Subject {
    Subject {
        dev: Arc::new(FaultDevice::new(MemDevice::new(CAPACITY))),
        path: None,
    }
}

fn crash_mem() -> Subject {
    Subject {
        dev: Arc::new(CrashDevice::new(MemDevice::new(CAPACITY)).unwrap()),
        path: None,
    }
}

fn file_with(name: &str, opts: DeviceOptions) -> Subject {
    let path = tmp(name);
    let dev = FileDevice::create(&path, CAPACITY, opts).unwrap();
    Subject {
        dev: Arc::new(dev),
        path: Some(path),
    }
}

fn file_inline(name: &str) -> Subject {
    file_with(
        name,
        DeviceOptions {
            workers: 0,
            ..DeviceOptions::default()
        },
    )
}

fn file_pool(name: &str) -> Subject {
    file_with(name, DeviceOptions::default())
}

fn file_direct(name: &str) -> Subject {
    file_with(
        name,
        DeviceOptions {
            direct: true,
            ..DeviceOptions::default()
        },
    )
}

fn uring_with(name: &str, opts: DeviceOptions) -> Subject {
    let path = tmp(name);
    let dev = UringDevice::create(&path, CAPACITY, opts).unwrap();
    Subject {
        dev: Arc::new(dev),
        path: Some(path),
    }
}

fn uring(name: &str) -> Subject {
    uring_with(
        name,
        DeviceOptions {
            queue_depth: 8,
            ..DeviceOptions::default()
        },
    )
}

fn uring_direct(name: &str) -> Subject {
    uring_with(
        name,
        DeviceOptions {
            direct: true,
            ..DeviceOptions::default()
        },
    )
}

fn filled(len: usize, seed: u8) -> SharedBuf {
    let mut b = IoBuf::zeroed(len);
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = seed.wrapping_add((i / 512) as u8).wrapping_mul(31) ^ (i as u8);
    }
    b.shared()
}

/// Submits `req` and returns a receiver for its outcome, counting completions.
fn submit_async(
    dev: &dyn BlockDevice,
    req: DeviceRequest,
    calls: &Arc<AtomicUsize>,
) -> mpsc::Receiver<io::Result<()>> {
    let (tx, rx) = mpsc::channel();
    let calls = Arc::clone(calls);
    dev.submit(
        req,
        Box::new(move |res| {
            calls.fetch_add(1, Ordering::SeqCst);
            tx.send(res).unwrap();
        }),
    );
    rx
}

fn reads_return_what_was_written(s: Subject) {
    let dev = &*s.dev;
    // Unwritten space reads as zeros.
    let mut zeros = vec![1u8; 8192];
    dev.read_at(DevAddr(CAPACITY - 8192), &mut zeros).unwrap();
    assert!(zeros.iter().all(|&b| b == 0));
    // Requests larger than the maximum are split by `write_at` / `read_at`.
    let src: Vec<u8> = (0..3 << 20)
        .map(|i: u32| (i * 7 + i / 4096) as u8)
        .collect();
    dev.write_at(DevAddr(1 << 20), &src).unwrap();
    let mut back = vec![0u8; src.len()];
    dev.read_at(DevAddr(1 << 20), &mut back).unwrap();
    assert!(back == src, "read back differs from what was written");
    // Overwrite the middle; the edges keep their bytes.
    dev.write_at(DevAddr((1 << 20) + 4096), &[0xaa; 4096])
        .unwrap();
    let mut mid = vec![0u8; 12288];
    dev.read_at(DevAddr(1 << 20), &mut mid).unwrap();
    assert_eq!(&mid[..4096], &src[..4096]);
    assert!(mid[4096..8192].iter().all(|&b| b == 0xaa));
    assert_eq!(&mid[8192..], &src[8192..12288]);
}

fn vectored_requests_scatter_and_gather_in_order(s: Subject) {
    let dev = &*s.dev;
    let bufs: Vec<SharedBuf> = (0..4).map(|i| filled(16384, i)).collect();
    // Segments from different buffers and two non-adjacent ranges of the same buffer.
    let segs = vec![
        BufRange::new(bufs[0].clone(), 4096, 4096),
        BufRange::new(bufs[1].clone(), 0, 8192),
        BufRange::new(bufs[0].clone(), 12288, 4096),
        BufRange::new(bufs[2].clone(), 8192, 4096),
    ];
    let expect: Vec<u8> = segs
        .iter()
        .flat_map(|s| s.buf.read()[s.offset..s.offset + s.len].to_vec())
        .collect();
    dev.submit_wait(DeviceRequest::write(DevAddr(65536), segs))
        .unwrap();
    let mut flat = vec![0u8; expect.len()];
    dev.read_at(DevAddr(65536), &mut flat).unwrap();
    assert!(flat == expect, "gathered write landed out of order");
    // Scatter it back into pieces of two buffers, again naming one buffer twice.
    let out = [IoBuf::zeroed(16384).shared(), IoBuf::zeroed(16384).shared()];
    let segs = vec![
        BufRange::new(out[0].clone(), 8192, 8192),
        BufRange::new(out[1].clone(), 0, 4096),
        BufRange::new(out[0].clone(), 0, 8192),
    ];
    dev.submit_wait(DeviceRequest::read(DevAddr(65536), segs))
        .unwrap();
    assert_eq!(&out[0].read()[8192..], &expect[..8192]);
    assert_eq!(&out[1].read()[..4096], &expect[8192..12288]);
    assert_eq!(&out[0].read()[..8192], &expect[12288..]);
    assert!(
        out[1].read()[4096..].iter().all(|&b| b == 0),
        "read past its segment"
    );
}

fn flushes_cover_completed_writes(s: Subject) {
    let dev = Arc::clone(&s.dev);
    let calls = Arc::new(AtomicUsize::new(0));
    let writes: Vec<_> = (0..8u8)
        .map(|i| {
            let req = DeviceRequest::write(
                DevAddr(u64::from(i) * 8192),
                vec![BufRange::new(filled(8192, i), 0, 8192)],
            );
            submit_async(&*dev, req, &calls)
        })
        .collect();
    for rx in writes {
        rx.recv().unwrap().unwrap();
    }
    dev.flush().unwrap();
    // A flush submitted from a write's completion (as a journal commit does) completes too.
    let (tx, rx) = mpsc::channel();
    let chained = Arc::clone(&dev);
    let fua = {
        let mut req = DeviceRequest::write(
            DevAddr(1 << 20),
            vec![BufRange::new(filled(4096, 99), 0, 4096)],
        );
        req.fua = true;
        req
    };
    dev.submit(
        fua,
        Box::new(move |res| {
            res.unwrap();
            chained.submit(
                DeviceRequest::flush(),
                Box::new(move |res| tx.send(res).unwrap()),
            );
        }),
    );
    rx.recv().unwrap().unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        8,
        "each completion runs exactly once"
    );
    // What was flushed is in the backing file, seen through another descriptor.
    if let Some(path) = &s.path {
        let bytes = std::fs::read(path).unwrap();
        for i in 0..8u8 {
            let at = usize::from(i) * 8192;
            assert_eq!(&bytes[at..at + 8192], &filled(8192, i).read()[..]);
        }
        assert_eq!(
            &bytes[1 << 20..(1 << 20) + 4096],
            &filled(4096, 99).read()[..]
        );
    }
}

fn bad_requests_are_refused_with_a_reason(s: Subject) {
    let dev = &*s.dev;
    let lbs = dev.logical_block_size() as usize;
    let buf = IoBuf::zeroed(2 << 20).shared();
    let cases: Vec<(DeviceRequest, &str)> = vec![
        (
            DeviceRequest::write(
                DevAddr(CAPACITY - 4096),
                vec![BufRange::new(buf.clone(), 0, 8192)],
            ),
            "past the device's end",
        ),
        (
            DeviceRequest::read(
                DevAddr(u64::MAX - 4095),
                vec![BufRange::new(buf.clone(), 0, 4096)],
            ),
            "past the device's end",
        ),
        (
            DeviceRequest::write(
                DevAddr(lbs as u64 / 2),
                vec![BufRange::new(buf.clone(), 0, 4096)],
            ),
            "not aligned",
        ),
        (
            DeviceRequest::read(
                DevAddr(0),
                vec![BufRange::new(buf.clone(), 0, lbs + lbs / 2)],
            ),
            "not aligned",
        ),
        (
            DeviceRequest::read(
                DevAddr(0),
                vec![BufRange::new(
                    buf.clone(),
                    0,
                    (dev.max_request_bytes() + 4096) as usize,
                )],
            ),
            "exceeds",
        ),
        (
            DeviceRequest::read(
                DevAddr(0),
                vec![BufRange::new(buf.clone(), (2 << 20) - 4096, 8192)],
            ),
            "outside its",
        ),
        (DeviceRequest::write(DevAddr(0), Vec::new()), "no data"),
    ];
    for (req, why) in cases {
        let what = format!("{:?} at {:?}", req.op, req.addr);
        let err = dev.submit_wait(req).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{what}: {err}");
        assert!(
            err.to_string().contains(why),
            "{what}: {err:#} should say {why:?}"
        );
    }
    // The device still works after refusing them.
    dev.write_at(DevAddr(0), &[5u8; 4096]).unwrap();
}

fn concurrent_submitters_each_see_their_own_data(s: Subject) {
    let dev = Arc::clone(&s.dev);
    let threads = 4u64;
    let per_thread = 64u64;
    let calls = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for t in 0..threads {
            let dev = Arc::clone(&dev);
            let calls = Arc::clone(&calls);
            scope.spawn(move || {
                let base = t * per_thread * 8192;
                // Many writes in flight at once, then reads of them in flight at once.
                let pending: Vec<_> = (0..per_thread)
                    .map(|i| {
                        let seed = (t * per_thread + i) as u8;
                        let req = DeviceRequest::write(
                            DevAddr(base + i * 8192),
                            vec![BufRange::new(filled(8192, seed), 0, 8192)],
                        );
                        submit_async(&*dev, req, &calls)
                    })
                    .collect();
                for rx in pending {
                    rx.recv().unwrap().unwrap();
                }
                let outs: Vec<SharedBuf> = (0..per_thread)
                    .map(|_| IoBuf::zeroed(8192).shared())
                    .collect();
                let pending: Vec<_> = outs
                    .iter()
                    .enumerate()
                    .map(|(i, out)| {
                        let req = DeviceRequest::read(
                            DevAddr(base + i as u64 * 8192),
                            vec![BufRange::new(out.clone(), 0, 8192)],
                        );
                        submit_async(&*dev, req, &calls)
                    })
                    .collect();
                for rx in pending {
                    rx.recv().unwrap().unwrap();
                }
                for (i, out) in outs.iter().enumerate() {
                    let seed = (t * per_thread + i as u64) as u8;
                    assert!(
                        out.read()[..] == filled(8192, seed).read()[..],
                        "thread {t} block {i} read back wrong data"
                    );
                }
            });
        }
    });
    assert_eq!(
        calls.load(Ordering::SeqCst),
        (2 * threads * per_thread) as usize
    );
}

fn requests_longer_than_iov_max_segments_complete(s: Subject) {
    let dev = &*s.dev;
    // 1500 separate 512-byte pieces: more than one system call or ring entry can carry, so
    // the device must continue where the kernel stopped.
    let n = 1500;
    let src = filled(n * 512, 17);
    let bufs: Vec<SharedBuf> = (0..n).map(|_| IoBuf::zeroed(4096).shared()).collect();
    for (i, b) in bufs.iter().enumerate() {
        b.write()[1024..1536].copy_from_slice(&src.read()[i * 512..(i + 1) * 512]);
    }
    let segs = bufs
        .iter()
        .map(|b| BufRange::new(b.clone(), 1024, 512))
        .collect();
    dev.submit_wait(DeviceRequest::write(DevAddr(2 << 20), segs))
        .unwrap();
    let mut back = vec![0u8; n * 512];
    dev.read_at(DevAddr(2 << 20), &mut back).unwrap();
    assert!(
        back[..] == src.read()[..],
        "long gathered write landed wrong"
    );
    let outs: Vec<SharedBuf> = (0..n).map(|_| IoBuf::zeroed(512).shared()).collect();
    let segs = outs
        .iter()
        .map(|b| BufRange::new(b.clone(), 0, 512))
        .collect();
    dev.submit_wait(DeviceRequest::read(DevAddr(2 << 20), segs))
        .unwrap();
    for (i, out) in outs.iter().enumerate() {
        assert_eq!(
            &out.read()[..],
            &src.read()[i * 512..(i + 1) * 512],
            "piece {i}"
        );
    }
}

fn dropping_the_device_completes_requests_in_flight(s: Subject) {
    let dev = Arc::clone(&s.dev);
    dev.write_at(DevAddr(0), &[3u8; 65536]).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let outs: Vec<SharedBuf> = (0..32).map(|_| IoBuf::zeroed(65536).shared()).collect();
    let pending: Vec<_> = outs
        .iter()
        .map(|out| {
            let req = DeviceRequest::read(DevAddr(0), vec![BufRange::new(out.clone(), 0, 65536)]);
            submit_async(&*dev, req, &calls)
        })
        .collect();
    drop(dev);
    // The last reference: dropping it must wait for, not abandon, the reads in flight.
    drop(s);
    for rx in pending {
        rx.recv().unwrap().unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 32);
    assert!(outs.iter().all(|o| o.read().iter().all(|&b| b == 3)));
}

/// Generates the suite for one device.
macro_rules! conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn reads_return_what_was_written() {
                super::reads_return_what_was_written($make("rw"));
            }
            #[test]
            fn vectored_requests_scatter_and_gather_in_order() {
                super::vectored_requests_scatter_and_gather_in_order($make("vec"));
            }
            #[test]
            fn flushes_cover_completed_writes() {
                super::flushes_cover_completed_writes($make("flush"));
            }
            #[test]
            fn bad_requests_are_refused_with_a_reason() {
                super::bad_requests_are_refused_with_a_reason($make("bad"));
            }
            #[test]
            fn requests_longer_than_iov_max_segments_complete() {
                super::requests_longer_than_iov_max_segments_complete($make("iov"));
            }
            #[test]
            fn dropping_the_device_completes_requests_in_flight() {
                super::dropping_the_device_completes_requests_in_flight($make("drop"));
            }
            #[test]
            fn concurrent_submitters_each_see_their_own_data() {
                super::concurrent_submitters_each_see_their_own_data($make("conc"));
            }
        }
    };
}

conformance!(mem_device, |_| mem());
conformance!(log_device, |_| logged_mem());
conformance!(fault_device, |_| fault_mem());
conformance!(crash_device, |_| crash_mem());
conformance!(file_device_inline, |n: &str| file_inline(&format!(
    "inline-{n}"
)));
conformance!(file_device_pool, |n: &str| file_pool(&format!("pool-{n}")));
conformance!(file_device_direct, |n: &str| file_direct(&format!(
    "direct-{n}"
)));
conformance!(uring_device, |n: &str| uring(&format!("uring-{n}")));
conformance!(uring_device_polling, |n: &str| uring_with(
    &format!("uring-poll-{n}"),
    DeviceOptions {
        poll: true,
        queue_depth: 8,
        ..DeviceOptions::default()
    }
));
conformance!(uring_device_direct, |n: &str| uring_direct(&format!(
    "uring-direct-{n}"
)));

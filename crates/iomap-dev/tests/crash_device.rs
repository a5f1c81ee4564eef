//! The crash states `CrashDevice` promises, demonstrated over memory devices.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::HashSet;
use std::io;
use std::sync::Arc;

use iomap_dev::{
    BlockDevice, BlockDeviceExt, BufRange, Completion, CrashDevice, CrashEvent, DevAddr,
    DeviceRequest, FaultDevice, FaultRule, IoBuf, MemDevice, Op, Pending,
};
use parking_lot::Mutex;

const SECTOR: usize = 512;
const CAPACITY: u64 = 64 << 10;

/// A completion held back, with the outcome it will report.
type Held = (Completion, io::Result<()>);

/// A memory device that carries out each request at once but holds the completions of writes
/// and flushes until the test releases them, so tests choose the order in which they happen.
struct DeferDevice {
    mem: MemDevice,
    held: Mutex<Vec<Option<Held>>>,
}

impl DeferDevice {
    fn new(capacity: u64) -> Self {
        Self {
            mem: MemDevice::new(capacity),
            held: Mutex::new(Vec::new()),
        }
    }

    /// Delivers the completion of the `n`th write or flush submitted (counting from 0).
    fn complete(&self, n: usize) {
        let (done, res) = self.held.lock()[n].take().unwrap();
        done(res)
    }
}

impl BlockDevice for DeferDevice {
    fn capacity_bytes(&self) -> u64 {
        self.mem.capacity_bytes()
    }
    fn logical_block_size(&self) -> u32 {
        self.mem.logical_block_size()
    }
    fn max_request_bytes(&self) -> u64 {
        self.mem.max_request_bytes()
    }
    fn submit(&self, req: DeviceRequest, done: Completion) {
        if req.op == Op::Read {
            return self.mem.submit(req, done);
        }
        let res = self.mem.submit_wait(req);
        self.held.lock().push(Some((done, res)));
    }
}

/// Where the outcome of an asynchronously submitted request lands.
type Outcome = Arc<Mutex<Option<io::Result<()>>>>;

fn submit(dev: &impl BlockDevice, req: DeviceRequest) -> Outcome {
    let out: Outcome = Arc::default();
    let slot = Arc::clone(&out);
    dev.submit(req, Box::new(move |res| *slot.lock() = Some(res)));
    out
}

fn write_req(addr: u64, bytes: &[u8], fua: bool) -> DeviceRequest {
    let mut buf = IoBuf::zeroed(bytes.len());
    buf.copy_from_slice(bytes);
    let mut req = DeviceRequest::write(
        DevAddr(addr),
        vec![BufRange::new(buf.shared(), 0, bytes.len())],
    );
    req.fua = fua;
    req
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn contents(dev: &impl BlockDevice) -> Vec<u8> {
    let mut out = vec![0u8; dev.capacity_bytes() as usize];
    dev.read_at(DevAddr(0), &mut out).unwrap();
    out
}

fn bytes_at(dev: &impl BlockDevice, addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    dev.read_at(DevAddr(addr), &mut out).unwrap();
    out
}

fn is_ok(out: &Outcome) -> bool {
    matches!(*out.lock(), Some(Ok(())))
}

fn is_eio(out: &Outcome) -> bool {
    matches!(&*out.lock(), Some(Err(e)) if e.raw_os_error() == Some(libc::EIO))
}

#[test]
fn unflushed_writes_are_absent_without_pending() {
    let dev = CrashDevice::new(MemDevice::new(CAPACITY)).unwrap();
    let a = pattern(2 * SECTOR, 1);
    dev.write_at(DevAddr(4096), &a).unwrap();
    let end = dev.events();
    assert_eq!(end, 2);
    assert_eq!((dev.durable_at(end), dev.pending_at(end)), (0, 1));

    let none = dev.image_at(end, &Pending::None).unwrap();
    assert_eq!(contents(&none), vec![0u8; CAPACITY as usize]);
    let all = dev.image_at(end, &Pending::All).unwrap();
    assert_eq!(bytes_at(&all, 4096, a.len()), a);
}

#[test]
fn flushed_writes_are_always_present() {
    let dev = CrashDevice::new(MemDevice::new(CAPACITY)).unwrap();
    let a = pattern(4 * SECTOR, 2);
    dev.write_at(DevAddr(0), &a).unwrap();
    dev.flush().unwrap();
    dev.write_at(DevAddr(8192), &pattern(4 * SECTOR, 3))
        .unwrap();
    let flushed = 4;
    assert_eq!(dev.flush_points(), vec![flushed, dev.events()]);

    let mut choices = vec![Pending::None, Pending::All];
    choices.extend((0..8).map(|seed| Pending::Random { seed, tear: true }));
    for t in dev.all_points() {
        for pending in &choices {
            let image = dev.image_at(t, pending).unwrap();
            let got = bytes_at(&image, 0, a.len());
            if t >= flushed {
                assert_eq!(got, a, "flushed write missing at {t} with {pending:?}");
            } else if *pending == Pending::None {
                assert_eq!(got, vec![0u8; a.len()], "unflushed write present at {t}");
            }
        }
    }
}

#[test]
fn writes_completed_after_a_flush_was_submitted_are_not_covered_by_it() {
    let dev = CrashDevice::new(DeferDevice::new(CAPACITY)).unwrap();
    let a = pattern(SECTOR, 4);
    let b = pattern(SECTOR, 5);
    let wa = submit(&dev, write_req(0, &a, false));
    let f1 = submit(&dev, DeviceRequest::flush());
    dev.inner().complete(0);
    dev.inner().complete(1);
    assert!(is_ok(&wa) && is_ok(&f1));
    let after_f1 = dev.events();
    assert_eq!((dev.durable_at(after_f1), dev.pending_at(after_f1)), (0, 1));
    let none = dev.image_at(after_f1, &Pending::None).unwrap();
    assert_eq!(bytes_at(&none, 0, SECTOR), vec![0u8; SECTOR]);

    // A flush submitted after both writes completed makes both durable, but only once it
    // has itself completed.
    let wb = submit(&dev, write_req(4096, &b, false));
    dev.inner().complete(2);
    let f2 = submit(&dev, DeviceRequest::flush());
    let before_f2_done = dev.events();
    dev.inner().complete(3);
    assert!(is_ok(&wb) && is_ok(&f2));
    assert_eq!(dev.pending_at(before_f2_done), 2);
    let end = dev.events();
    assert_eq!((dev.durable_at(end), dev.pending_at(end)), (2, 0));
    let none = dev.image_at(end, &Pending::None).unwrap();
    assert_eq!(bytes_at(&none, 0, SECTOR), a);
    assert_eq!(bytes_at(&none, 4096, SECTOR), b);
}

#[test]
fn fua_writes_are_durable_on_completion() {
    let dev = CrashDevice::new(DeferDevice::new(CAPACITY)).unwrap();
    let a = pattern(2 * SECTOR, 6);
    let b = pattern(2 * SECTOR, 7);
    let wa = submit(&dev, write_req(0, &a, true));
    let wb = submit(&dev, write_req(8192, &b, false));
    let in_flight = dev.events();
    assert_eq!(
        (dev.durable_at(in_flight), dev.pending_at(in_flight)),
        (0, 2)
    );
    dev.inner().complete(0);
    dev.inner().complete(1);
    assert!(is_ok(&wa) && is_ok(&wb));
    let end = dev.events();
    assert_eq!(dev.pending_writes(end), vec![1]);
    assert_eq!(dev.durable_at(end), 1);
    let none = dev.image_at(end, &Pending::None).unwrap();
    assert_eq!(bytes_at(&none, 0, a.len()), a);
    assert_eq!(bytes_at(&none, 8192, b.len()), vec![0u8; b.len()]);
    let early = dev.image_at(in_flight, &Pending::None).unwrap();
    assert_eq!(bytes_at(&early, 0, a.len()), vec![0u8; a.len()]);
}

#[test]
fn pending_all_holds_every_submitted_write() {
    let dev = CrashDevice::new(DeferDevice::new(CAPACITY)).unwrap();
    let writes: Vec<(u64, Vec<u8>)> = (0..6u8)
        .map(|i| {
            (
                u64::from(i) * 8192,
                pattern((usize::from(i) + 1) * SECTOR, 10 + i),
            )
        })
        .collect();
    for (n, (addr, data)) in writes.iter().enumerate() {
        submit(&dev, write_req(*addr, data, false));
        if n == 2 {
            submit(&dev, DeviceRequest::flush());
        }
    }
    // The first three writes complete after the flush was submitted, so it covers none of
    // them; the last write stays in flight.
    for n in 0..6 {
        dev.inner().complete(n);
    }
    let end = dev.events();
    assert_eq!(dev.pending_at(end), 6);
    let all = dev.image_at(end, &Pending::All).unwrap();
    assert_eq!(contents(&all), contents(&dev.inner().mem));
    for (addr, data) in &writes {
        assert_eq!(&bytes_at(&all, *addr, data.len()), data);
    }
    let none = dev.image_at(end, &Pending::None).unwrap();
    assert_eq!(contents(&none), vec![0u8; CAPACITY as usize]);
}

#[test]
fn random_tearing_is_sector_granular_and_seeded() {
    let old = pattern(CAPACITY as usize, 0x55);
    let mem = MemDevice::new(CAPACITY);
    mem.write_at(DevAddr(0), &old).unwrap();
    let dev = CrashDevice::new(mem).unwrap();
    let sectors_per_write = 8;
    for i in 0..12u64 {
        let data = pattern(sectors_per_write * SECTOR, 0x80 + i as u8);
        dev.write_at(DevAddr(i * 4096), &data).unwrap();
    }
    let new = contents(dev.inner());
    let end = dev.events();
    assert_eq!(dev.pending_at(end), 12);

    let mut distinct = HashSet::new();
    let mut torn = 0;
    for seed in 0..10 {
        let choice = Pending::Random { seed, tear: true };
        let image = contents(&dev.image_at(end, &choice).unwrap());
        assert_eq!(
            image,
            contents(&dev.image_at(end, &choice).unwrap()),
            "seed {seed}"
        );
        for (s, sector) in image.chunks(SECTOR).enumerate() {
            let range = s * SECTOR..(s + 1) * SECTOR;
            assert!(
                sector == &old[range.clone()] || sector == &new[range],
                "sector {s} is neither old nor new"
            );
        }
        for w in 0..12 {
            let fresh = (0..sectors_per_write)
                .map(|s| (w * sectors_per_write + s) * SECTOR)
                .filter(|&at| image[at..at + SECTOR] != old[at..at + SECTOR])
                .count();
            torn += usize::from(fresh > 0 && fresh < sectors_per_write);
        }
        distinct.insert(image);
    }
    assert!(
        distinct.len() >= 5,
        "only {} distinct images",
        distinct.len()
    );
    assert!(torn > 0, "no write was torn");

    // Without tearing every write is all or nothing.
    for seed in 0..10 {
        let image = contents(
            &dev.image_at(end, &Pending::Random { seed, tear: false })
                .unwrap(),
        );
        for (i, w) in image
            .chunks(sectors_per_write * SECTOR)
            .take(12)
            .enumerate()
        {
            let base = i * sectors_per_write * SECTOR;
            let span = base..base + w.len();
            assert!(w == &old[span.clone()] || w == &new[span], "write {i} torn");
        }
    }
}

#[test]
fn later_durable_write_wins_over_earlier_pending_one() {
    let dev = CrashDevice::new(DeferDevice::new(CAPACITY)).unwrap();
    let a = pattern(2 * SECTOR, 20);
    let b = pattern(2 * SECTOR, 21);
    let c = pattern(2 * SECTOR, 22);
    // A completes after the flush was submitted, so it stays pending.
    submit(&dev, write_req(0, &a, false));
    submit(&dev, DeviceRequest::flush());
    dev.inner().complete(0);
    dev.inner().complete(1);
    let before_b = dev.events();
    // B overwrites A and is durable through FUA.
    submit(&dev, write_req(0, &b, true));
    dev.inner().complete(2);
    let end = dev.events();
    assert_eq!(dev.pending_writes(end), vec![0]);
    for choice in [Pending::All, Pending::Exactly(vec![0])] {
        let image = dev.image_at(end, &choice).unwrap();
        assert_eq!(bytes_at(&image, 0, b.len()), b, "{choice:?}");
    }
    let image = dev.image_at(before_b, &Pending::All).unwrap();
    assert_eq!(bytes_at(&image, 0, a.len()), a);

    // A write still in flight may land after a durable one it overlaps.
    submit(&dev, write_req(0, &c, false));
    submit(&dev, write_req(0, &b, true));
    dev.inner().complete(4);
    let end = dev.events();
    assert_eq!(dev.pending_writes(end), vec![0, 2]);
    let image = dev.image_at(end, &Pending::Exactly(vec![2])).unwrap();
    assert_eq!(bytes_at(&image, 0, c.len()), c);
    let image = dev.image_at(end, &Pending::None).unwrap();
    assert_eq!(bytes_at(&image, 0, b.len()), b);
}

#[test]
fn failed_writes_stay_pending_forever() {
    let inner = FaultDevice::new(MemDevice::new(CAPACITY));
    inner.add_rule(FaultRule::range(Op::Write, 8192, 8192 + 4096, libc::EIO));
    let dev = CrashDevice::new(inner).unwrap();
    let a = pattern(SECTOR, 30);
    let bad = pattern(SECTOR, 31);
    dev.write_at(DevAddr(0), &a).unwrap();
    let err = dev.write_at(DevAddr(8192), &bad).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    dev.flush().unwrap();
    dev.flush().unwrap();
    let log = dev.event_log();
    assert_eq!(
        log[3],
        CrashEvent::WriteCompleted {
            write: 1,
            ok: false
        }
    );

    let end = dev.events();
    assert_eq!(dev.pending_writes(end), vec![1]);
    assert_eq!(dev.durable_at(end), 1);
    let none = dev.image_at(end, &Pending::None).unwrap();
    assert_eq!(bytes_at(&none, 0, SECTOR), a);
    assert_eq!(bytes_at(&none, 8192, SECTOR), vec![0u8; SECTOR]);
    let all = dev.image_at(end, &Pending::All).unwrap();
    assert_eq!(bytes_at(&all, 8192, SECTOR), bad);
}

#[test]
fn crash_points_are_enumerated() {
    let dev = CrashDevice::new(MemDevice::new(CAPACITY)).unwrap();
    let w = pattern(SECTOR, 40);
    dev.write_at(DevAddr(0), &w).unwrap();
    dev.flush().unwrap();
    dev.write_at(DevAddr(4096), &w).unwrap();
    dev.write_at(DevAddr(8192), &w).unwrap();
    dev.flush().unwrap();
    dev.write_at(DevAddr(12288), &w).unwrap();
    let mut got = vec![0u8; SECTOR];
    dev.read_at(DevAddr(0), &mut got).unwrap();
    assert_eq!(dev.events(), 12, "reads are not recorded");

    assert_eq!(dev.flush_points(), vec![4, 10, 12]);
    assert_eq!(dev.all_points(), (0..=12).collect::<Vec<_>>());
    let durable: Vec<usize> = dev
        .flush_points()
        .iter()
        .map(|&t| dev.durable_at(t))
        .collect();
    assert_eq!(durable, vec![1, 3, 3]);
    assert_eq!(dev.pending_at(12), 1);
    assert_eq!(dev.pending_at(0), 0);

    let sample = dev.sample_points(7, 5);
    assert_eq!(sample.len(), 5);
    assert!(sample.windows(2).all(|p| p[0] < p[1]) && sample[4] <= 12);
    assert_eq!(sample, dev.sample_points(7, 5));
    let samples: HashSet<Vec<usize>> = (0..10).map(|s| dev.sample_points(s, 5)).collect();
    assert!(samples.len() > 1);
    assert_eq!(dev.sample_points(1, 100), dev.all_points());

    let Err(err) = dev.image_at(13, &Pending::None) else {
        panic!("a crash point past the end was accepted")
    };
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn power_cut_fails_later_requests_and_leaves_them_out() {
    let dev = CrashDevice::new(DeferDevice::new(CAPACITY)).unwrap();
    let a = pattern(SECTOR, 50);
    let b = pattern(SECTOR, 51);
    let c = pattern(SECTOR, 52);
    submit(&dev, write_req(0, &a, false));
    dev.inner().complete(0);
    submit(&dev, DeviceRequest::flush());
    dev.inner().complete(1);
    let in_flight = submit(&dev, write_req(4096, &c, false));
    let before = dev.events();

    dev.power_cut();
    assert!(dev.is_cut());
    dev.inner().complete(2);
    assert!(is_eio(&in_flight), "a completion after the cut reports EIO");
    let late = submit(&dev, write_req(8192, &b, false));
    let flush = submit(&dev, DeviceRequest::flush());
    let mut buf = vec![0u8; SECTOR];
    let read = dev.read_at(DevAddr(0), &mut buf).unwrap_err();
    assert!(is_eio(&late) && is_eio(&flush));
    assert_eq!(read.raw_os_error(), Some(libc::EIO));
    assert_eq!(dev.events(), before, "nothing is recorded after the cut");
    assert_eq!(
        dev.inner().held.lock().len(),
        3,
        "nothing reaches the inner device"
    );

    let end = dev.events();
    assert_eq!(dev.pending_writes(end), vec![1]);
    let all = dev.image_at(end, &Pending::All).unwrap();
    assert_eq!(bytes_at(&all, 0, SECTOR), a);
    assert_eq!(bytes_at(&all, 4096, SECTOR), c);
    assert_eq!(bytes_at(&all, 8192, SECTOR), vec![0u8; SECTOR]);
    let none = dev.image_at(end, &Pending::None).unwrap();
    assert_eq!(bytes_at(&none, 4096, SECTOR), vec![0u8; SECTOR]);
}

#[test]
fn snapshot_of_a_prefilled_device_is_the_base() {
    let mem = MemDevice::with_geometry(256 << 10, 4096, 16 << 10);
    let first = pattern(8192, 60);
    let far = pattern(4096, 61);
    mem.write_at(DevAddr(0), &first).unwrap();
    mem.write_at(DevAddr(200 << 10), &far).unwrap();
    let before = contents(&mem);
    let dev = CrashDevice::new(mem).unwrap();
    let over = pattern(4096, 62);
    dev.write_at(DevAddr(4096), &over).unwrap();

    for t in dev.all_points() {
        let image = dev.image_at(t, &Pending::None).unwrap();
        assert_eq!(image.capacity_bytes(), 256 << 10);
        assert_eq!(image.logical_block_size(), 4096);
        assert_eq!(image.max_request_bytes(), 16 << 10);
        assert_eq!(contents(&image), before, "crash point {t}");
    }
    let all = contents(&dev.image_at(dev.events(), &Pending::All).unwrap());
    assert_eq!(all, contents(dev.inner()));
    assert_eq!(&all[..4096], &first[..4096]);
    assert_eq!(&all[4096..8192], &over[..]);
}

#[test]
fn concurrent_submitters_are_all_recorded() {
    let dev = Arc::new(CrashDevice::new(MemDevice::new(CAPACITY)).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let dev = Arc::clone(&dev);
            std::thread::spawn(move || {
                for i in 0..32u64 {
                    let sector = t * 32 + i;
                    let data = pattern(SECTOR, sector as u8);
                    dev.write_at(DevAddr(sector * SECTOR as u64), &data)
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    dev.flush().unwrap();
    let end = dev.events();
    assert_eq!(end, 128 * 2 + 2);
    assert_eq!((dev.durable_at(end), dev.pending_at(end)), (128, 0));
    let none = dev.image_at(end, &Pending::None).unwrap();
    assert_eq!(contents(&none), contents(dev.inner()));
}

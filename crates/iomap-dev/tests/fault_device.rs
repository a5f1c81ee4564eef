#![allow(clippy::unwrap_used, reason = "tests")]
//! The fault-injecting device over a memory device: each kind of fault, and its log.

use std::io;
use std::sync::mpsc::{self, TryRecvError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use iomap_dev::{
    BlockDevice, BlockDeviceExt, BufRange, DevAddr, DeviceRequest, FaultDevice, FaultKind,
    FaultRule, InjectedFault, IoBuf, MemDevice, Op, SharedBuf,
};

const EIO: i32 = libc::EIO;
const ENOSPC: i32 = libc::ENOSPC;

fn device() -> FaultDevice<MemDevice> {
    FaultDevice::new(MemDevice::with_geometry(1 << 20, 512, 1 << 20))
}

fn shared(bytes: &[u8]) -> SharedBuf {
    let mut buf = IoBuf::zeroed(bytes.len());
    buf.copy_from_slice(bytes);
    buf.shared()
}

fn errno(res: io::Result<()>) -> Option<i32> {
    res.err().map(|e| e.raw_os_error().unwrap())
}

fn inner_bytes<D: BlockDevice>(dev: &D, addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    dev.read_at(DevAddr(addr), &mut out).unwrap();
    out
}

fn fault(seq: u64, op: Op, addr: u64, len: u64, kind: FaultKind, errno: i32) -> InjectedFault {
    InjectedFault {
        seq,
        op,
        addr: DevAddr(addr),
        len,
        kind,
        errno: Some(errno),
    }
}

#[test]
fn nth_fails_only_the_nth_request_of_its_op() {
    let dev = device();
    dev.add_rule(FaultRule::nth(Op::Write, 3, EIO));
    let mut outcomes = Vec::new();
    for i in 0..5u64 {
        let mut scratch = [0u8; 512];
        dev.read_at(DevAddr(i * 512), &mut scratch).unwrap();
        outcomes.push(errno(dev.write_at(DevAddr(i * 512), &[i as u8 + 1; 512])));
    }
    assert_eq!(outcomes, [None, None, Some(EIO), None, None]);
    for i in 0..5u64 {
        let expect = if i == 2 { 0 } else { i as u8 + 1 };
        assert!(
            inner_bytes(dev.inner(), i * 512, 512)
                .iter()
                .all(|&b| b == expect),
            "block {i}"
        );
    }
    // Reads and writes alternate, so the third write is the sixth request.
    assert_eq!(
        dev.injected(),
        [fault(6, Op::Write, 1024, 512, FaultKind::Fail, EIO)]
    );
}

#[test]
fn range_fails_every_overlapping_request_of_its_op() {
    let dev = device();
    dev.add_rule(FaultRule::range(Op::Read, 4096, 8192, EIO));
    let read = |addr: u64, len: usize| errno(dev.read_at(DevAddr(addr), &mut vec![0u8; len]));
    assert_eq!(read(0, 4096), None, "ends where the range starts");
    assert_eq!(read(4096, 512), Some(EIO));
    assert_eq!(read(3584, 1024), Some(EIO), "overlaps the start");
    assert_eq!(read(7680, 1024), Some(EIO), "overlaps the end");
    assert_eq!(read(8192, 512), None, "starts where the range ends");
    assert_eq!(
        errno(dev.write_at(DevAddr(4096), &[1; 512])),
        None,
        "writes pass"
    );
    assert_eq!(read(4096, 512), Some(EIO), "still failing: persistent");
    let log = dev.injected();
    assert_eq!(
        log.iter()
            .map(|f| (f.seq, f.addr.0, f.len))
            .collect::<Vec<_>>(),
        [
            (2, 4096, 512),
            (3, 3584, 1024),
            (4, 7680, 1024),
            (7, 4096, 512)
        ]
    );
    assert!(log
        .iter()
        .all(|f| f.op == Op::Read && f.kind == FaultKind::Fail && f.errno == Some(EIO)));
}

/// 200 writes under a random rule, optionally each after a read; returns the indexes of the
/// writes that failed and the log.
fn random_run(seed: u64, with_reads: bool) -> (Vec<u64>, Vec<InjectedFault>) {
    let dev = device();
    dev.add_rule(FaultRule::random(Op::Write, 0.25, seed, EIO));
    let mut failed = Vec::new();
    for i in 0..200u64 {
        let addr = DevAddr(i % 64 * 512);
        if with_reads {
            dev.read_at(addr, &mut [0u8; 512]).unwrap();
        }
        if let Some(e) = errno(dev.write_at(addr, &[1; 512])) {
            assert_eq!(e, EIO);
            failed.push(i);
        }
    }
    (failed, dev.injected())
}

#[test]
fn random_faults_repeat_for_a_seed_and_count_only_their_op() {
    let (first, log) = random_run(7, false);
    let (again, _) = random_run(7, false);
    assert_eq!(first, again, "same seed, same requests, same failures");
    assert!(
        (20..=80).contains(&first.len()),
        "about a quarter of 200 writes fail: {}",
        first.len()
    );
    assert_eq!(
        log.iter().map(|f| f.seq - 1).collect::<Vec<_>>(),
        first,
        "the log names the failed writes"
    );
    let (other, _) = random_run(8, false);
    assert_ne!(first, other, "another seed fails other writes");
    let (with_reads, log) = random_run(7, true);
    assert_eq!(with_reads, first, "reads draw nothing from a write rule");
    assert_eq!(
        log.iter().map(|f| f.seq).collect::<Vec<_>>(),
        first.iter().map(|i| 2 * i + 2).collect::<Vec<_>>(),
        "each request is numbered, reads included"
    );
}

#[test]
fn transient_rules_run_out_and_persistent_rules_do_not() {
    let dev = device();
    dev.add_rule(FaultRule::range(Op::Write, 0, 4096, ENOSPC).times(2));
    let outcomes: Vec<_> = (0..4)
        .map(|_| errno(dev.write_at(DevAddr(0), &[1; 512])))
        .collect();
    assert_eq!(outcomes, [Some(ENOSPC), Some(ENOSPC), None, None]);

    let dev = device();
    dev.add_rule(FaultRule::nth(Op::Write, 2, EIO).persistent());
    let outcomes: Vec<_> = (0..5)
        .map(|_| errno(dev.write_at(DevAddr(0), &[1; 512])))
        .collect();
    assert_eq!(outcomes, [None, Some(EIO), Some(EIO), Some(EIO), Some(EIO)]);
    assert_eq!(dev.injected().len(), 4);
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|j| (j % 200) as u8 + 1).collect()
}

#[test]
fn a_short_write_lands_only_the_block_rounded_prefix() {
    let dev = device();
    dev.write_at(DevAddr(0), &[0xee; 8192]).unwrap();
    dev.add_rule(FaultRule::on(Op::Write).errno(ENOSPC).short(1300).times(1));
    // Two segments, the first at an offset into its buffer, split where the prefix is not.
    let data = pattern(4096);
    let mut a = vec![0u8; 100];
    a.extend_from_slice(&data[..768]);
    let segments = vec![
        BufRange::new(shared(&a), 100, 768),
        BufRange::new(shared(&data[768..]), 0, 3328),
    ];
    let res = dev.submit_wait(DeviceRequest::write(DevAddr(4096), segments));
    assert_eq!(errno(res), Some(ENOSPC));
    let now = inner_bytes(dev.inner(), 0, 8192);
    assert!(now[..4096].iter().all(|&b| b == 0xee), "before the write");
    assert_eq!(now[4096..5120], data[..1024], "the prefix, rounded to 1024");
    assert!(now[5120..].iter().all(|&b| b == 0xee), "past the prefix");
    assert_eq!(
        dev.injected(),
        [fault(
            2,
            Op::Write,
            4096,
            4096,
            FaultKind::Short {
                written_bytes: 1024
            },
            ENOSPC
        )]
    );
    dev.write_at(DevAddr(4096), &data).unwrap();
    assert_eq!(inner_bytes(dev.inner(), 4096, 4096), data, "budget spent");
}

/// One torn 16-block write over blocks of 0xee; returns the blocks the log reports.
fn torn_write(seed: u64) -> Vec<u64> {
    let dev = device();
    dev.write_at(DevAddr(0), &[0xee; 16 * 512]).unwrap();
    dev.add_rule(FaultRule::nth(Op::Write, 1, EIO).torn(seed));
    let data: Vec<u8> = (0..16u8).flat_map(|i| [i + 1; 512]).collect();
    assert_eq!(errno(dev.write_at(DevAddr(0), &data)), Some(EIO));
    let log = dev.injected();
    assert_eq!(log.len(), 1);
    let FaultKind::Torn { written_blocks } = log[0].kind.clone() else {
        panic!("not torn: {:?}", log[0]);
    };
    assert_eq!(
        (log[0].op, log[0].addr, log[0].len, log[0].errno),
        (Op::Write, DevAddr(0), 16 * 512, Some(EIO))
    );
    let now = inner_bytes(dev.inner(), 0, 16 * 512);
    for (i, block) in now.chunks(512).enumerate() {
        let expect = if written_blocks.contains(&(i as u64)) {
            i as u8 + 1
        } else {
            0xee
        };
        assert!(block.iter().all(|&b| b == expect), "block {i}");
    }
    written_blocks
}

#[test]
fn a_torn_write_lands_exactly_the_reported_blocks() {
    let blocks = torn_write(3);
    assert!(
        !blocks.is_empty() && blocks.len() < 16,
        "a proper subset: {blocks:?}"
    );
    assert!(blocks.windows(2).all(|w| w[0] < w[1]), "ascending");
    assert_eq!(torn_write(3), blocks, "same seed, same blocks");
    assert_ne!(torn_write(4), blocks, "another seed, other blocks");
}

#[test]
fn a_delayed_write_completes_after_its_deadline_off_the_submitting_thread() {
    let dev = device();
    let delay = Duration::from_millis(250);
    dev.add_rule(FaultRule::on(Op::Write).delay(delay));
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    let seg = BufRange::new(shared(&[7; 4096]), 0, 4096);
    dev.submit(
        DeviceRequest::write(DevAddr(8192), vec![seg]),
        Box::new(move |res| {
            tx.send((errno(res), Instant::now(), thread::current().id()))
                .unwrap();
        }),
    );
    let not_completed = matches!(rx.try_recv(), Err(TryRecvError::Empty));
    let held_back = inner_bytes(dev.inner(), 8192, 4096).iter().all(|&b| b == 0);
    // Only meaningful if both looks happened before the deadline; a stalled test thread
    // proves nothing either way, so the checks are conditional rather than a race.
    if start.elapsed() < delay {
        assert!(not_completed, "submit returned before the completion");
        assert!(held_back, "the write is held back");
    }
    let (res, done_at, tid) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(res, None);
    assert!(done_at - start >= delay, "{:?}", done_at - start);
    assert_ne!(tid, thread::current().id());
    assert!(inner_bytes(dev.inner(), 8192, 4096).iter().all(|&b| b == 7));
    assert_eq!(
        dev.injected(),
        [InjectedFault {
            seq: 1,
            op: Op::Write,
            addr: DevAddr(8192),
            len: 4096,
            kind: FaultKind::Delay { delay },
            errno: None,
        }]
    );
}

#[test]
fn a_delayed_read_returns_the_data_after_its_deadline() {
    let dev = device();
    dev.write_at(DevAddr(512), &pattern(1024)).unwrap();
    let delay = Duration::from_millis(100);
    dev.add_rule(FaultRule::on(Op::Read).delay(delay));
    let mut out = vec![0u8; 1024];
    let start = Instant::now();
    dev.read_at(DevAddr(512), &mut out).unwrap();
    assert!(start.elapsed() >= delay);
    assert_eq!(out, pattern(1024));
}

#[test]
fn one_timer_thread_serves_delays_in_deadline_order() {
    let dev = device();
    let delays = [300, 50, 150].map(Duration::from_millis);
    for (i, d) in delays.iter().enumerate() {
        let start = i as u64 * 4096;
        dev.add_rule(
            FaultRule::on(Op::Write)
                .within(start, start + 4096)
                .delay(*d),
        );
    }
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    for i in 0..3usize {
        let tx = tx.clone();
        let seg = BufRange::new(shared(&[i as u8 + 1; 4096]), 0, 4096);
        dev.submit(
            DeviceRequest::write(DevAddr(i as u64 * 4096), vec![seg]),
            Box::new(move |res| {
                let me = thread::current();
                let name = me.name().map(str::to_owned);
                tx.send((i, res.is_ok(), start.elapsed(), me.id(), name))
                    .unwrap();
            }),
        );
    }
    let done: Vec<_> = (0..3)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    assert_eq!(done.iter().map(|d| d.0).collect::<Vec<_>>(), [1, 2, 0]);
    for (i, ok, elapsed, id, name) in &done {
        assert!(ok);
        assert!(*elapsed >= delays[*i], "request {i} after {elapsed:?}");
        assert_eq!(*id, done[0].3, "one thread for every delay");
        assert_eq!(name.as_deref(), Some("fault-delay"));
    }
}

#[test]
fn dropping_the_device_passes_on_held_back_requests() {
    let mem = Arc::new(MemDevice::new(1 << 20));
    let dev = FaultDevice::new(Arc::clone(&mem));
    dev.add_rule(FaultRule::on(Op::Write).delay(Duration::from_secs(60)));
    let (tx, rx) = mpsc::channel();
    let seg = BufRange::new(shared(&[9; 512]), 0, 512);
    dev.submit(
        DeviceRequest::write(DevAddr(0), vec![seg]),
        Box::new(move |res| tx.send(errno(res)).unwrap()),
    );
    let start = Instant::now();
    drop(dev);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), None);
    assert!(start.elapsed() < Duration::from_secs(30));
    assert!(inner_bytes(&mem, 0, 512).iter().all(|&b| b == 9));
}

#[test]
fn a_flush_can_fail_once() {
    let dev = device();
    dev.write_at(DevAddr(0), &[1; 512]).unwrap();
    dev.add_rule(FaultRule::nth(Op::Flush, 1, EIO));
    assert_eq!(errno(dev.flush()), Some(EIO));
    assert_eq!(errno(dev.flush()), None);
    assert_eq!(
        dev.injected(),
        [fault(2, Op::Flush, 0, 0, FaultKind::Fail, EIO)]
    );
}

#[test]
fn the_first_rule_with_budget_left_applies_and_every_fault_is_logged() {
    let dev = device();
    dev.add_rule(FaultRule::range(Op::Write, 0, 4096, EIO).times(1));
    dev.add_rule(FaultRule::range(Op::Write, 0, 8192, ENOSPC).times(2));
    let write = |addr: u64| errno(dev.write_at(DevAddr(addr), &[1; 512]));
    assert_eq!(write(0), Some(EIO));
    assert_eq!(write(0), Some(ENOSPC), "the first rule ran out");
    assert_eq!(write(8192), None, "outside both");
    assert_eq!(write(4096), Some(ENOSPC));
    assert_eq!(write(0), None, "both ran out");
    assert_eq!(
        dev.injected(),
        [
            fault(1, Op::Write, 0, 512, FaultKind::Fail, EIO),
            fault(2, Op::Write, 0, 512, FaultKind::Fail, ENOSPC),
            fault(4, Op::Write, 4096, 512, FaultKind::Fail, ENOSPC),
        ]
    );
    dev.clear_rules();
    assert_eq!(write(0), None);
    assert_eq!(dev.injected().len(), 3, "clearing rules keeps the log");
}

#[test]
fn a_lost_write_is_acknowledged_and_never_reaches_the_device() {
    let dev = device();
    dev.write_at(DevAddr(0), &[1u8; 1024]).unwrap();
    dev.add_rule(FaultRule::nth(Op::Write, 2, EIO).lost());
    dev.write_at(DevAddr(0), &[2u8; 512]).unwrap();
    dev.write_at(DevAddr(512), &[3u8; 512]).unwrap();
    assert_eq!(inner_bytes(dev.inner(), 0, 512), [2u8; 512]);
    assert_eq!(inner_bytes(dev.inner(), 512, 512), [1u8; 512]);
    dev.write_at(DevAddr(512), &[4u8; 512]).unwrap();
    assert_eq!(inner_bytes(dev.inner(), 512, 512), [4u8; 512]);
    let lost = InjectedFault {
        errno: None,
        ..fault(3, Op::Write, 512, 512, FaultKind::Lost, 0)
    };
    assert_eq!(dev.injected(), [lost]);
}

//! Device throughput, one workload per run, for `scripts/bench-devices.sh` to set beside fio's
//! on the same file in the same run.
//!
//! ```text
//! cargo bench -p iomap-dev --bench devices -- DEVICE WORKLOAD FILE [options]
//!   DEVICE    uring | file | raw-uring (no device: the plainest loop over one ring, the
//!             naive baseline of what io_uring gives a single thread here; randread only)
//!   WORKLOAD  randread (4 KiB random reads) | seqwrite (1 MiB sequential writes)
//!   --secs N      run time (default 10)
//!   --depth N     requests kept in flight (default 32)
//!   --workers N   file device pool threads (default 4)
//!   --bs BYTES    request size (default 4096 for randread, 1 MiB for seqwrite)
//!   --buffered    without O_DIRECT
//!   --poll        poll for completions instead of sleeping (`DeviceOptions::poll`; for
//!                 raw-uring, the loop enters the kernel without waiting, as fio does)
//!   --sync        one request at a time from the main thread (submit and wait), for latency
//!   --each        raw-uring only: submit each new read at once, in an entry that also runs the
//!                 deferred completion work, and sleep only when no completion is there (fio's
//!                 pattern, and `UringDevice`'s); without it the loop handles every completion
//!                 of a wake-up before submitting their successors in one entry
//! ```
//!
//! Prints one line: `iops=… bytes_per_sec=… requests=… secs=…`. Each request in flight is a
//! chain: its completion submits the next one, as fio keeps its queue full, so the figure is the
//! device path's own and not a submitting thread's wake-up latency.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use iomap_dev::{
    open_device, BlockDevice, BufRange, DevAddr, DeviceKind, DeviceOptions, DeviceRequest, IoBuf,
    SharedBuf,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    RandRead,
    SeqWrite,
}

struct Args {
    device: String,
    workload: Workload,
    file: PathBuf,
    secs: f64,
    depth: usize,
    workers: usize,
    bs: usize,
    direct: bool,
    sync: bool,
    poll: bool,
    each: bool,
}

fn parse() -> Result<Args, String> {
    // `cargo bench` passes `--bench`; skip it and anything else cargo adds.
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    let device = it.next().ok_or("missing DEVICE (uring or file)")?;
    let workload = match it.next().as_deref() {
        Some("randread") => Workload::RandRead,
        Some("seqwrite") => Workload::SeqWrite,
        other => {
            return Err(format!(
                "WORKLOAD must be randread or seqwrite, not {other:?}"
            ))
        }
    };
    let file = PathBuf::from(it.next().ok_or("missing FILE")?);
    let mut args = Args {
        device,
        workload,
        file,
        secs: 10.0,
        depth: 32,
        workers: 4,
        bs: if workload == Workload::RandRead {
            4096
        } else {
            1 << 20
        },
        direct: true,
        sync: false,
        poll: false,
        each: false,
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--secs" => args.secs = value()?.parse().map_err(|e| format!("--secs: {e}"))?,
            "--depth" => args.depth = value()?.parse().map_err(|e| format!("--depth: {e}"))?,
            "--workers" => {
                args.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?
            }
            "--bs" => args.bs = value()?.parse().map_err(|e| format!("--bs: {e}"))?,
            "--buffered" => args.direct = false,
            "--sync" => args.sync = true,
            "--poll" => args.poll = true,
            "--each" => args.each = true,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(args)
}

/// Shared by every chain of one run.
struct Run {
    dev: Arc<dyn BlockDevice>,
    workload: Workload,
    bs: u64,
    blocks: u64,
    next_block: AtomicU64,
    done: AtomicU64,
    stop: AtomicBool,
    finished: mpsc::Sender<()>,
}

fn issue(run: Arc<Run>, buf: SharedBuf, mut rng: SmallRng) {
    let block = match run.workload {
        Workload::RandRead => rng.gen_range(0..run.blocks),
        Workload::SeqWrite => run.next_block.fetch_add(1, Ordering::Relaxed) % run.blocks,
    };
    let seg = BufRange::new(buf.clone(), 0, run.bs as usize);
    let addr = DevAddr(block * run.bs);
    let req = match run.workload {
        Workload::RandRead => DeviceRequest::read(addr, vec![seg]),
        Workload::SeqWrite => DeviceRequest::write(addr, vec![seg]),
    };
    let dev = Arc::clone(&run.dev);
    dev.submit(
        req,
        Box::new(move |res| {
            if let Err(e) = res {
                eprintln!("request failed: {e}");
                std::process::exit(1);
            }
            run.done.fetch_add(1, Ordering::Relaxed);
            if run.stop.load(Ordering::Relaxed) {
                // Ignored if the receiver is gone: the run is over either way.
                let _ = run.finished.send(());
            } else {
                issue(run, buf, rng);
            }
        }),
    );
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("devices bench: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = DeviceOptions {
        direct: args.direct,
        workers: args.workers,
        queue_depth: args.depth as u32,
        poll: args.poll,
        max_request_bytes: (args.bs as u64).max(1 << 20),
        ..DeviceOptions::default()
    };
    if args.device == "raw-uring" {
        return raw_uring(&args);
    }
    let dev = match args.device.parse::<DeviceKind>() {
        Ok(kind @ (DeviceKind::File | DeviceKind::Uring)) => {
            match open_device(kind, &args.file, &opts) {
                Ok(dev) => dev,
                Err(e) => {
                    eprintln!("devices bench: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => {
            eprintln!(
                "devices bench: DEVICE must be uring, file or raw-uring, not {}",
                args.device
            );
            return ExitCode::from(2);
        }
    };
    let bs = args.bs as u64;
    let (tx, rx) = mpsc::channel();
    let run = Arc::new(Run {
        blocks: dev.capacity_bytes() / bs,
        dev,
        workload: args.workload,
        bs,
        next_block: AtomicU64::new(0),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        finished: tx,
    });
    if args.sync {
        return sync_loop(&run, &args);
    }
    let start = Instant::now();
    for i in 0..args.depth {
        let mut buf = IoBuf::zeroed(args.bs);
        buf.fill(0x5a ^ i as u8);
        issue(
            Arc::clone(&run),
            buf.shared(),
            SmallRng::seed_from_u64(i as u64 + 1),
        );
    }
    std::thread::sleep(Duration::from_secs_f64(args.secs));
    run.stop.store(true, Ordering::Relaxed);
    let requests = run.done.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    for _ in 0..args.depth {
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            eprintln!("devices bench: requests in flight did not finish");
            return ExitCode::FAILURE;
        }
    }
    println!(
        "iops={:.0} bytes_per_sec={:.0} requests={requests} secs={secs:.3}",
        requests as f64 / secs,
        (requests * bs) as f64 / secs
    );
    ExitCode::SUCCESS
}

/// One request at a time from this thread, each waited for: the latency a blocking reader sees.
fn sync_loop(run: &Run, args: &Args) -> ExitCode {
    use iomap_dev::BlockDeviceExt;
    let buf = IoBuf::zeroed(args.bs).shared();
    let mut rng = SmallRng::seed_from_u64(1);
    let start = Instant::now();
    let mut requests = 0u64;
    while start.elapsed().as_secs_f64() < args.secs {
        for _ in 0..64 {
            let block = match run.workload {
                Workload::RandRead => rng.gen_range(0..run.blocks),
                Workload::SeqWrite => requests % run.blocks,
            };
            let seg = BufRange::new(buf.clone(), 0, args.bs);
            let addr = DevAddr(block * run.bs);
            let req = match run.workload {
                Workload::RandRead => DeviceRequest::read(addr, vec![seg]),
                Workload::SeqWrite => DeviceRequest::write(addr, vec![seg]),
            };
            if let Err(e) = run.dev.submit_wait(req) {
                eprintln!("request failed: {e}");
                return ExitCode::FAILURE;
            }
            requests += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "iops={:.0} bytes_per_sec={:.0} requests={requests} secs={secs:.3}",
        requests as f64 / secs,
        (requests * run.bs) as f64 / secs
    );
    ExitCode::SUCCESS
}

/// The plainest io_uring loop: one thread, one ring with deferred task work, `depth` reads of
/// `bs` bytes into one buffer each, every completion replaced by a new read.
fn raw_uring(args: &Args) -> ExitCode {
    use io_uring::{opcode, types, IoUring};
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;

    if args.workload != Workload::RandRead {
        eprintln!("devices bench: raw-uring measures randread only");
        return ExitCode::from(2);
    }
    let mut open = std::fs::OpenOptions::new();
    open.read(true);
    if args.direct {
        open.custom_flags(libc::O_DIRECT);
    }
    let (file, mut ring) = match (
        open.open(&args.file),
        IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_coop_taskrun()
            .build(args.depth as u32),
    ) {
        (Ok(f), Ok(r)) => (f, r),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("devices bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let blocks = file.metadata().map(|m| m.len()).unwrap_or(0) / args.bs as u64;
    let mut bufs: Vec<IoBuf> = (0..args.depth).map(|_| IoBuf::zeroed(args.bs)).collect();
    let mut rng = SmallRng::seed_from_u64(1);
    let fd = types::Fd(file.as_raw_fd());
    let mut push = |ring: &mut IoUring, slot: usize, rng: &mut SmallRng| {
        let offset = rng.gen_range(0..blocks) * args.bs as u64;
        let read = opcode::Read::new(fd, bufs[slot].as_mut_ptr(), args.bs as u32)
            .offset(offset)
            .build()
            .user_data(slot as u64);
        // SAFETY: each slot's buffer lives until the end of this function and has at most one
        // read in flight; the ring has an entry for every slot.
        unsafe { ring.submission().push(&read) }.is_ok()
    };
    for slot in 0..args.depth {
        push(&mut ring, slot, &mut rng);
    }
    let start = Instant::now();
    let mut requests = 0u64;
    let mut done = Vec::with_capacity(args.depth);
    while start.elapsed().as_secs_f64() < args.secs {
        let waited = if args.each {
            // Each new read went to the kernel as it was pushed (below); sleep only when those
            // entries collected no completion.
            if ring.completion().is_empty() {
                ring.submit_and_wait(1)
            } else {
                Ok(0)
            }
        } else if args.poll {
            // As fio does: enter without waiting (which runs the deferred completion work)
            // until a completion shows up.
            loop {
                let n = ring.submission().len() as u32;
                // SAFETY: no argument structure; 1 is IORING_ENTER_GETEVENTS.
                let res = unsafe { ring.submitter().enter::<libc::sigset_t>(n, 0, 1, None) };
                if res.is_err() || !ring.completion().is_empty() {
                    break res;
                }
            }
        } else {
            ring.submit_and_wait(1)
        };
        if let Err(e) = waited {
            if e.raw_os_error() != Some(libc::EINTR) {
                eprintln!("devices bench: {e}");
                return ExitCode::FAILURE;
            }
        }
        done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for (slot, res) in done.drain(..) {
            if res != args.bs as i32 {
                eprintln!("devices bench: read returned {res}");
                return ExitCode::FAILURE;
            }
            requests += 1;
            push(&mut ring, slot as usize, &mut rng);
            if args.each {
                // As fio does: submit at once, and run the deferred completion work (posting
                // what completed meanwhile) without waiting.
                // SAFETY: no argument structure; 1 is IORING_ENTER_GETEVENTS.
                let _ = unsafe { ring.submitter().enter::<libc::sigset_t>(1, 0, 1, None) };
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // Let the reads in flight land before their buffers go.
    // Every slot has exactly one read outstanding.
    let mut landed = 0;
    while landed < args.depth {
        if ring.submit_and_wait(1).is_err() {
            continue;
        }
        landed += ring.completion().count();
    }
    drop(ring);
    println!(
        "iops={:.0} bytes_per_sec={:.0} requests={requests} secs={secs:.3}",
        requests as f64 / secs,
        (requests * args.bs as u64) as f64 / secs
    );
    ExitCode::SUCCESS
}

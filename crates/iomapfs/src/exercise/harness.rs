//! What a run works on, and the operations on the whole file system: syncs, cache drops,
//! remounts, power cuts and device faults, each followed by the checks it calls for.

use std::sync::Arc;
use std::thread;

use extentfs::{fsck, mkfs, ExtentFs, MkfsOptions, MountOptions, ROOT_INO};
use iomap::{CacheConfig, MemoryLimits};
use iomap_dev::{
    BlockDevice, BlockDeviceExt, CrashDevice, DevAddr, FaultDevice, FaultRule, MemDevice, Pending,
};

use super::lane::{fs_err, Lane};
use super::{Checked, Config, Failure, Fault, Op, Tally, CANARY, MAX_FILE_BYTES};

/// The device a run's file system lives on: memory, recorded for crashes (`--crash`), under
/// a fault injector (`--faults`).
struct Device {
    top: Arc<dyn BlockDevice>,
    crash: Option<Arc<CrashDevice<MemDevice>>>,
    faults: Option<Arc<FaultDevice<Arc<dyn BlockDevice>>>>,
}

impl Device {
    fn new(cfg: &Config, mem: MemDevice) -> Checked<Self> {
        let (inner, crash): (Arc<dyn BlockDevice>, _) = if cfg.crash {
            let d = Arc::new(CrashDevice::new(mem).map_err(|e| format!("crash device: {e}"))?);
            (Arc::clone(&d) as Arc<dyn BlockDevice>, Some(d))
        } else {
            (Arc::new(mem), None)
        };
        let faults = cfg
            .faults
            .then(|| Arc::new(FaultDevice::new(Arc::clone(&inner))));
        let top = match &faults {
            Some(f) => Arc::clone(f) as Arc<dyn BlockDevice>,
            None => inner,
        };
        Ok(Device { top, crash, faults })
    }

    fn block_device(&self) -> Arc<dyn BlockDevice> {
        Arc::clone(&self.top)
    }

    fn faults(&self) -> Checked<&FaultDevice<Arc<dyn BlockDevice>>> {
        self.faults
            .as_deref()
            .ok_or_else(|| "a fault needs the fault device (--faults)".to_string())
    }
}

fn canary_device(capacity: u64) -> Checked<MemDevice> {
    let mem = MemDevice::new(capacity);
    let chunk = vec![CANARY; 1 << 20];
    let mut at = 0;
    while at < capacity {
        let n = (capacity - at).min(chunk.len() as u64) as usize;
        mem.write_at(DevAddr(at), &chunk[..n])
            .map_err(|e| format!("filling the device: {e}"))?;
        at += n as u64;
    }
    Ok(mem)
}

/// A run: the device, the file system, and every file with its oracle.
pub(super) struct Harness {
    cfg: Config,
    dev: Device,
    pub l: Lane,
    pub tally: Tally,
}

fn name(f: usize) -> Vec<u8> {
    format!("f{f}").into_bytes()
}

impl Harness {
    /// Runs one operation: the harness's own, or one on files through the lane of all files.
    pub fn step(&mut self, op: &Op) -> Checked {
        let fs = Arc::clone(&self.l.fs);
        match *op {
            Op::Syncfs => {
                fs.syncfs().map_err(fs_err("syncfs"))?;
                self.l.unsynced.fill(false);
            }
            Op::DropCaches => {
                fs.syncfs().map_err(fs_err("syncfs"))?;
                self.l.unsynced.fill(false);
                fs.drop_caches().map_err(fs_err("drop caches"))?;
            }
            Op::Verify => self.l.verify_all()?,
            Op::Remount => self.remount()?,
            Op::CrashAfterSync => {
                fs.syncfs().map_err(fs_err("syncfs"))?;
                self.l.unsynced.fill(false);
                self.crash(&Pending::None)?;
            }
            Op::Crash { seed, tear } => self.crash(&Pending::Random { seed, tear })?,
            Op::WriteFault { f, fault } => self.write_fault(f, &fault)?,
            Op::ReadFault {
                f,
                pos,
                len,
                nth,
                drop,
            } => self.read_fault(f, pos, len, nth, drop)?,
            _ => return self.l.step(op),
        }
        self.l.check_sizes()
    }

    /// Runs operations on files, `(index, op)`, on `cfg.threads` threads at once, each on the
    /// files it owns; the failure of the lowest index if any fails.
    pub fn run_parallel(&mut self, ops: &[(usize, &Op)]) -> Result<(), Failure> {
        let threads = self.cfg.threads;
        let mut lanes: Vec<Lane> = (0..threads).map(|k| self.l.split_off(k, threads)).collect();
        let failures: Vec<Failure> = thread::scope(|s| {
            let running: Vec<_> = lanes
                .iter_mut()
                .enumerate()
                .map(|(k, lane)| {
                    s.spawn(move || {
                        let mine = ops.iter().filter(|(_, op)| op.owner(threads) == k);
                        for &(i, op) in mine {
                            lane.step(op)
                                .map_err(|what| Failure { at: Some(i), what })?;
                        }
                        Ok(())
                    })
                })
                .collect();
            running
                .into_iter()
                .filter_map(|t| match t.join() {
                    Ok(res) => res.err(),
                    Err(_) => Some(Failure {
                        at: ops.first().map(|&(i, _)| i),
                        what: "a thread of the run panicked".into(),
                    }),
                })
                .collect()
        });
        for lane in lanes {
            self.l.merge(lane);
        }
        match failures.into_iter().min_by_key(|f| f.at) {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    pub fn new(cfg: &Config) -> Checked<Self> {
        // Room for every file at its largest, once more for copy-on-write of shared
        // extents, plus the log: ENOSPC is never a correct answer in a run. No more, since
        // every crash scans the whole device for its new recording.
        let capacity = (32 << 20) + cfg.files as u64 * 2 * MAX_FILE_BYTES;
        let dev = Device::new(cfg, canary_device(capacity)?)?;
        let opts = MkfsOptions {
            block_size: cfg.block_size,
            log_blocks: None,
        };
        mkfs(dev.block_device(), &opts).map_err(fs_err("mkfs"))?;
        let fs = mount(cfg, &dev)?;
        let mut inos = Vec::with_capacity(cfg.files);
        for f in 0..cfg.files {
            let st = fs
                .create(ROOT_INO, &name(f), 0o644, 0, 0)
                .map_err(fs_err("create"))?;
            inos.push(st.ino);
        }
        // The files must outlive any crash, whatever the run does before the first sync.
        fs.syncfs().map_err(fs_err("syncfs after create"))?;
        Ok(Harness {
            cfg: cfg.clone(),
            dev,
            l: Lane::new(fs, u64::from(cfg.block_size), inos),
            tally: Tally::default(),
        })
    }

    fn relookup(&mut self) -> Checked {
        for (f, ino) in self.l.inos.iter_mut().enumerate() {
            *ino = self
                .l
                .fs
                .lookup(ROOT_INO, &name(f))
                .map_err(fs_err("lookup after mount"))?
                .ino;
        }
        Ok(())
    }

    fn check_fsck(&self, at: &str) -> Checked {
        let r = fsck::fsck(self.dev.block_device(), false);
        if r.is_clean() {
            Ok(())
        } else {
            Err(format!("fsck {at}: {:?}", r.problems))
        }
    }

    fn remount(&mut self) -> Checked {
        self.l.fs.unmount().map_err(fs_err("unmount"))?;
        self.l.fs.cache().stop_flusher();
        self.check_fsck("after unmount")?;
        // The crash device's recording goes on: each crash starts a fresh one, which bounds
        // it, and re-recording here would cost a scan of the whole device.
        self.l.fs = mount(&self.cfg, &self.dev)?;
        self.relookup()?;
        self.l.unsynced.fill(false);
        self.l
            .verify_all()
            .map_err(|e| format!("after remount: {e}"))
    }

    /// Cuts the power now, keeps the pending device writes `pending` picks, recovers, and
    /// checks: files unchanged since their last sync must read back exactly, the others
    /// restart their oracles from what recovery left.
    fn crash(&mut self, pending: &Pending) -> Checked {
        let Some(d) = self.dev.crash.clone() else {
            return Err("a crash needs the crash device (--crash)".into());
        };
        // Nothing the dying file system or its flusher does later may reach the image.
        self.tally.crashes += 1;
        d.power_cut();
        let t = d.events();
        self.l.fs.abandon();
        self.l.fs.cache().stop_flusher();
        let image = d
            .image_at(t, pending)
            .map_err(|e| format!("crash image: {e}"))?;
        self.dev = Device::new(&self.cfg, image)?;
        if *pending == Pending::None {
            // After a sync the durable image is whole as it stands; with writes in flight,
            // only the image after log recovery must be.
            self.check_fsck("after the crash, before recovery")?;
        }
        self.recover("the crash")
    }

    /// Mounts the device again after the file system stopped without unmounting (a crash,
    /// or a shutdown after an error): log recovery must bring back every file synced since it
    /// last changed exactly; the others restart their oracles from what recovery left. Then
    /// an unmount, fsck and mount must agree.
    fn recover(&mut self, after: &str) -> Checked {
        self.l.fs = mount(&self.cfg, &self.dev).map_err(|e| format!("recovery: {e}"))?;
        self.relookup()?;
        for f in 0..self.l.inos.len() {
            if !self.l.unsynced[f] {
                self.l
                    .check_range(f, 0, self.l.size(f))
                    .map_err(|e| format!("after {after}, synced {e}"))?;
                continue;
            }
            self.l.adopt(f).map_err(|e| format!("after {after}: {e}"))?;
        }
        self.l.unsynced.fill(false);
        self.l.check_sizes()?;
        // Recovery wrote its checkpoint; what it left must now pass a check.
        self.l
            .fs
            .unmount()
            .map_err(fs_err("unmount after recovery"))?;
        self.l.fs.cache().stop_flusher();
        self.check_fsck("after recovery")?;
        self.l.fs = mount(&self.cfg, &self.dev)?;
        self.relookup()?;
        self.l
            .verify_all()
            .map_err(|e| format!("after recovery and remount: {e}"))
    }

    /// Whether the file system has shut down after an error.
    fn is_shut_down(&self) -> bool {
        self.l.fs.is_shut_down()
    }

    /// Syncs with a device fault armed; see [`Op::WriteFault`].
    fn write_fault(&mut self, f: Option<usize>, fault: &Fault) -> Checked {
        let faults = self.dev.faults()?;
        let before = faults.injected().len();
        faults.add_rule(fault.rule());
        let synced = match f {
            Some(f) => self.l.fsync(f, false),
            None => self.l.fs.syncfs(),
        };
        faults.clear_rules();
        let injected = faults.injected().len() - before;
        self.tally.write_faults += injected;
        let injected = injected > 0;
        let reported = match synced {
            Ok(()) => false,
            Err(_) if !injected => {
                return Err("the sync failed with no device fault injected".into());
            }
            Err(e) if e.errno() == libc::EIO => true,
            Err(e) => return Err(format!("the sync failed with {e}, expected EIO")),
        };
        if !reported {
            if let Some(f) = f {
                self.l.unsynced[f] = false;
            } else {
                self.l.unsynced.fill(false);
            }
        }
        self.settle_fault(f.filter(|_| reported), injected && !reported)
    }

    /// After a write or flush fault: every file is fsynced through a new handle, which
    /// reports an error nobody has seen (R19). A file whose error was reported (`reported`,
    /// or now) may have lost what it had not synced: its oracle restarts from what the device
    /// holds. Every other file must read back exactly, from the device. `owed`: a fault was
    /// injected and not yet reported, so some report must come now.
    fn settle_fault(&mut self, reported: Option<usize>, owed: bool) -> Checked {
        if self.is_shut_down() {
            return self.shut_down_and_recover();
        }
        let mut tainted = vec![false; self.l.inos.len()];
        if let Some(f) = reported {
            tainted[f] = true;
        }
        for (f, tainted) in tainted.iter_mut().enumerate() {
            match self.l.fsync(f, false) {
                Ok(()) => self.l.unsynced[f] = false,
                Err(e) if e.errno() == libc::EIO => {
                    if self.is_shut_down() {
                        return self.shut_down_and_recover();
                    }
                    *tainted = true;
                }
                Err(e) => return Err(format!("fsync after a fault failed with {e}")),
            }
        }
        self.tally.reported += tainted.iter().filter(|&&t| t).count();
        if owed && !tainted.contains(&true) {
            return Err("a device fault was injected and no fsync reported it".into());
        }
        // Everything is written back; read from the device, not the cache.
        self.l
            .fs
            .drop_caches()
            .map_err(fs_err("drop caches after a fault"))?;
        for (f, &tainted) in tainted.iter().enumerate() {
            if tainted {
                self.l
                    .adopt(f)
                    .map_err(|e| format!("after a reported fault: {e}"))?;
                // A write that failed may have left the size on the device short of the size
                // in memory, as XFS's would: set it again, as a program that saw the error
                // would, and sync, so that the oracle holds again across a crash.
                let size = self.l.size(f);
                self.l
                    .fs
                    .truncate(self.l.inos[f], size)
                    .map_err(fs_err("truncate after a reported fault"))?;
                self.l
                    .fsync(f, false)
                    .map_err(|e| format!("fsync after a reported fault: {e}"))?;
                self.l.unsynced[f] = false;
            } else {
                self.l
                    .check_range(f, 0, self.l.size(f))
                    .map_err(|e| format!("after a fault nothing reported for: {e}"))?;
            }
        }
        Ok(())
    }

    /// The file system shut down after a fault: mounting again recovers the log.
    fn shut_down_and_recover(&mut self) -> Checked {
        self.tally.shutdowns += 1;
        self.l.fs.abandon();
        self.l.fs.cache().stop_flusher();
        self.recover("a shutdown")
    }

    /// Reads with a device read fault armed; see [`Op::ReadFault`].
    fn read_fault(&mut self, f: usize, pos: u64, len: u64, nth: u32, drop: bool) -> Checked {
        if drop {
            self.l.fs.syncfs().map_err(fs_err("syncfs"))?;
            self.l.unsynced.fill(false);
            self.l.fs.drop_caches().map_err(fs_err("drop caches"))?;
        }
        let faults = self.dev.faults()?;
        let before = faults.injected().len();
        faults.add_rule(FaultRule::nth(iomap_dev::Op::Read, nth, libc::EIO));
        let end = pos + len;
        let mut buf = vec![0u8; len as usize];
        let read = self.l.fs.read(self.l.inos[f], pos, &mut buf);
        faults.clear_rules();
        let injected = faults.injected().len() - before;
        self.tally.read_faults += injected;
        let injected = injected > 0;
        match read {
            // As read(2) on Linux, a read that fails after copying some bytes returns them.
            Ok(n) if injected => {
                self.l.compare(f, pos, pos + n as u64, &buf[..n])?;
                if (n as u64) < len.min(self.l.size(f).saturating_sub(pos)) {
                    self.tally.read_errors += 1;
                }
            }
            Ok(n) => self.l.compare(f, pos, end, &buf[..n])?,
            Err(e) if injected && e.errno() == libc::EIO => self.tally.read_errors += 1,
            Err(e) if injected => return Err(format!("a failed read returned {e}, not EIO")),
            Err(e) => return Err(format!("read failed with no device fault injected: {e}")),
        }
        self.l
            .check_range(f, pos, end)
            .map_err(|e| format!("after a failed read: {e}"))
    }

    pub fn finish(self) -> Checked {
        self.l.fs.unmount().map_err(fs_err("unmount"))?;
        self.l.fs.cache().stop_flusher();
        self.check_fsck("at the end")
    }
}

fn mount(cfg: &Config, dev: &Device) -> Checked<Arc<ExtentFs>> {
    let opts = MountOptions {
        cache: CacheConfig {
            page_size: (cfg.block_size as usize).min(4096),
            max_folio_size: cfg.max_folio_bytes as usize,
        },
        read_only: false,
        commit_interval: None,
    };
    let fs = ExtentFs::mount(dev.block_device(), opts).map_err(fs_err("mount"))?;
    fs.cache()
        .set_limits(MemoryLimits::with_budget(cfg.cache_bytes))
        .map_err(|e| format!("cache limits: {e}"))?;
    fs.cache()
        .start_flusher()
        .map_err(|e| format!("cannot start the flusher: {e}"))?;
    Ok(fs)
}

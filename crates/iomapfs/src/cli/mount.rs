//! `iomapfs mount`: the daemon. It makes the image if there is none, mounts it, serves the
//! kernel's requests on several threads until the mount goes away (`umount`, Ctrl-C,
//! SIGTERM), then writes everything back and marks the image clean.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::io::Read;

use extentfs::format::{Superblock, SB_LEN};
use extentfs::{ExtentFs, MountOptions};
use fuser::{Config, MountOption, Session, SessionACL};
use indicatif::{ProgressBar, ProgressStyle};
use iomap::MemoryLimits;
use iomap_dev::{BlockDevice, FaultDevice, FaultRule, Op as FaultOp};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{info, warn};

use super::{CliError, MountArgs};
use crate::fuse::{fusermount, FuseFs};
use crate::image::{create_sparse, LockedImage};
use crate::size::human;
use crate::stats::StatsSource;

pub fn run(a: MountArgs) -> Result<(), CliError> {
    let image = open_or_create(&a)?;
    let mountpoint = prepare_mountpoint(&a.mountpoint)?;
    let (mut dev, kind) = image.open_device(a.device, a.read_only, a.direct)?;
    let mut faulty = None;
    if a.fail_data_writes {
        let f = Arc::new(FaultDevice::new(dev));
        dev = Arc::clone(&f) as Arc<dyn BlockDevice>;
        faulty = Some(f);
    }
    let opts = MountOptions {
        read_only: a.read_only,
        ..MountOptions::default()
    };
    let fs = ExtentFs::mount(dev, opts)
        .map_err(CliError::fs(format!("cannot mount {}", a.image.display())))?;
    if !fs.was_clean() {
        let r = fs.replayed();
        info!(
            "{} was not unmounted cleanly; recovered from its log: {r:?}",
            a.image.display()
        );
    }

    if let Some(f) = faulty {
        fail_data_writes(&f, &a.image)?;
    }

    let cache = a.cache_size.unwrap_or_else(default_cache_size);
    if cache < MIN_CACHE {
        return Err(CliError::Usage(format!(
            "a cache of {} is too small: at least {} is needed",
            human(cache),
            human(MIN_CACHE)
        )));
    }
    let dirty = a.dirty_limit.unwrap_or(cache / 5).clamp(64 << 10, cache);
    let limits = MemoryLimits {
        budget_bytes: cache,
        dirty_bytes: dirty,
        dirty_background_bytes: dirty / 2,
        dirty_expire: Duration::from_secs(a.dirty_expire),
        // The kernel's 5 s, or sooner for a short expiry, so data is written back within
        // about the expiry.
        writeback_interval: Duration::from_secs(5)
            .min(Duration::from_secs(a.dirty_expire) / 2)
            .max(Duration::from_millis(100)),
    };
    fs.cache()
        .set_limits(limits)
        .map_err(|e| CliError::Usage(format!("bad cache limits: {e}")))?;
    fs.cache()
        .start_flusher()
        .map_err(|e| io::Error::other(format!("cannot start the flusher: {e}")))?;
    let stats = Arc::new(StatsSource {
        image: std::fs::canonicalize(&a.image).unwrap_or_else(|_| a.image.clone()),
        device: kind,
        started: Instant::now(),
    });
    let served = FuseFs::new(Arc::clone(&fs), stats);

    // Signals are caught from before the mount on, so that none leaves a dead mount behind.
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let mut config = fuse_config(&a);
    let root = nix::unistd::geteuid().is_root();
    let (session, unmount_cmd) = if root {
        // As root fuser mounts with mount(2) itself.
        config
            .mount_options
            .push(MountOption::FSName(image.path().display().to_string()));
        let mut session =
            Session::new(served, &mountpoint, &config).map_err(|e| mount_error(&mountpoint, e))?;
        let mut unmounter = session.unmount_callable();
        let unmount: Unmount = Box::new(move || unmounter.unmount());
        (session, unmount)
    } else {
        let options = fusermount_options(&a, &image);
        let fd =
            fusermount::mount(&mountpoint, &options).map_err(|e| mount_error(&mountpoint, e))?;
        let session = Session::from_fd(served, fd, config.acl, config)
            .map_err(|e| mount_error(&mountpoint, e))?;
        let mnt = mountpoint.clone();
        let unmount: Unmount = Box::new(move || fusermount::unmount(&mnt));
        (session, unmount)
    };
    info!(
        "mounted {} at {} ({kind} device, {}-byte blocks, cache {}, dirty limit {}); \
         unmount with `{} {}` or Ctrl-C",
        a.image.display(),
        mountpoint.display(),
        fs.block_size(),
        human(limits.budget_bytes),
        human(limits.dirty_bytes),
        if root { "umount" } else { "fusermount3 -u" },
        mountpoint.display()
    );

    let mut unmounter = unmount_cmd;
    let signal_handle = signals.handle();
    let mnt = mountpoint.clone();
    let fs_at_signal = Arc::clone(&fs);
    let signal_thread = std::thread::Builder::new()
        .name("iomapfs-signals".into())
        .spawn(move || {
            for (n, sig) in signals.forever().enumerate() {
                if n == 0 {
                    info!(
                        "signal {sig}: writing back and unmounting {}",
                        mnt.display()
                    );
                } else {
                    info!(
                        "signal {sig}: writing back again; {} goes when its last open file closes",
                        mnt.display()
                    );
                }
                // Write everything back now: a busy mount stays served until its files
                // close, and dirty data should not wait for that.
                if let Err(e) = fs_at_signal.syncfs() {
                    warn!("writing back failed: {e}");
                }
                if n > 0 {
                    continue;
                }
                if let Err(e) = unmounter() {
                    warn!(
                        "unmount of {} failed ({e}); detaching it lazily",
                        mnt.display()
                    );
                    if let Err(e) = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH) {
                        warn!("cannot detach {}: {e}", mnt.display());
                    }
                }
            }
        })?;

    let served = session.run();
    signal_handle.close();
    if signal_thread.join().is_err() {
        warn!("the signal thread panicked");
    }
    if let Err(e) = served {
        warn!("the FUSE session ended with an error: {e}");
        if !root {
            // fuser unmounts what it mounted itself; a helper's mount is ours to end.
            if let Err(e) = fusermount::unmount(&mountpoint) {
                warn!("cannot unmount {}: {e}", mountpoint.display());
            }
        }
    }
    fs.cache().stop_flusher();
    finish(&fs, &a.image)
}

/// Makes every write to the image's data area fail with EIO from now on, while the
/// superblocks and the metadata log stay writable.
fn fail_data_writes(dev: &FaultDevice<Arc<dyn BlockDevice>>, image: &Path) -> Result<(), CliError> {
    let mut sb = vec![0u8; SB_LEN];
    std::fs::File::open(image)?.read_exact(&mut sb)?;
    let sb = Superblock::decode(&sb, dev.capacity_bytes())
        .map_err(CliError::fs(format!("cannot read {}", image.display())))?;
    let start = sb.data_start * u64::from(sb.block_size);
    warn!("every write at or past byte {start} of the image will fail with EIO");
    dev.add_rule(FaultRule::range(FaultOp::Write, start, u64::MAX, libc::EIO));
    Ok(())
}

/// Locks the image, making and formatting it first if it does not exist.
fn open_or_create(a: &MountArgs) -> Result<LockedImage, CliError> {
    if a.image.exists() {
        return Ok(LockedImage::lock(&a.image)?);
    }
    if a.read_only {
        return Err(CliError::Usage(format!(
            "{} does not exist, and a read-only mount cannot create it",
            a.image.display()
        )));
    }
    create_sparse(&a.image, a.size)?;
    let image = LockedImage::lock(&a.image)?;
    if let Err(e) = super::mkfs::format(&image, a.block_size) {
        drop(image);
        let _ = std::fs::remove_file(&a.image);
        return Err(e);
    }
    Ok(image)
}

/// Creates the mountpoint if missing, and clears a mount left behind by a daemon that died
/// (the kernel then answers every access with ENOTCONN).
fn prepare_mountpoint(path: &Path) -> Result<PathBuf, CliError> {
    // statfs always asks the filesystem; stat of a dead mount's root may be answered from
    // attributes the kernel still caches.
    if let Err(nix::errno::Errno::ENOTCONN) = nix::sys::statfs::statfs(path) {
        warn!(
            "{} is a mount whose daemon died; detaching it",
            path.display()
        );
        nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
            io::Error::other(format!(
                "{} is a dead mount and cannot be detached ({e}); run `umount -l {}`",
                path.display(),
                path.display()
            ))
        })?;
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(CliError::Usage(format!(
                "mountpoint {} is not a directory",
                path.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot create mountpoint {}: {e}", path.display()),
                )
            })?;
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot use mountpoint {}: {e}", path.display()),
            )
            .into())
        }
    }
    Ok(std::fs::canonicalize(path)?)
}

/// Unmounts the mount being served.
type Unmount = Box<dyn FnMut() -> io::Result<()> + Send>;

/// The session's configuration; as root the mount options go to mount(2) through fuser.
fn fuse_config(a: &MountArgs) -> Config {
    let mut options = vec![
        MountOption::Subtype("iomapfs".into()),
        // The kernel checks permissions against the modes and owners we report.
        MountOption::DefaultPermissions,
    ];
    if a.read_only {
        options.push(MountOption::RO);
    }
    let mut config = Config::default();
    config.mount_options = options;
    config.acl = if a.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(usize::from(a.threads));
    config.clone_fd = true;
    config
}

/// The same options as fusermount3 takes them.
fn fusermount_options(a: &MountArgs, image: &LockedImage) -> String {
    let mut o = format!(
        "fsname={},subtype=iomapfs,default_permissions",
        fusermount::escape(&image.path().display().to_string())
    );
    if a.read_only {
        o.push_str(",ro");
    }
    if a.allow_other {
        o.push_str(",allow_other");
    }
    o
}

/// Turns a failed mount into advice: the usual cause for a user is a missing fusermount3.
fn mount_error(mountpoint: &Path, e: io::Error) -> CliError {
    let advice = if !Path::new("/dev/fuse").exists() {
        "; is the fuse module loaded (modprobe fuse) and /dev/fuse present?"
    } else {
        ""
    };
    CliError::Io(io::Error::new(
        e.kind(),
        format!("cannot mount at {}: {e}{advice}", mountpoint.display()),
    ))
}

/// The smallest cache a mount takes: a few of the largest folios.
const MIN_CACHE: u64 = 8 << 20;

/// A quarter of the machine's memory, or 1 GiB if it cannot be read.
fn default_cache_size() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(1 << 30, |kib| kib * 1024 / 4)
}

/// Writes everything back and checkpoints, showing how much dirty data is left.
fn finish(fs: &Arc<ExtentFs>, image: &Path) -> Result<(), CliError> {
    let dirty = fs.cache_usage().dirty_bytes;
    let bar = ProgressBar::new(dirty).with_message(format!("writing back {}", image.display()));
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
    {
        bar.set_style(style);
    }
    let worker = {
        let fs = Arc::clone(fs);
        std::thread::spawn(move || fs.unmount())
    };
    while !worker.is_finished() {
        bar.set_position(dirty.saturating_sub(fs.cache_usage().dirty_bytes));
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
    match worker.join() {
        Ok(Ok(())) => {
            info!("{} unmounted cleanly", image.display());
            Ok(())
        }
        Ok(Err(e)) => Err(CliError::Fs {
            context: format!("writing back {} at unmount failed", image.display()),
            source: e,
        }),
        Err(_) => Err(CliError::Usage("the unmount thread panicked".into())),
    }
}

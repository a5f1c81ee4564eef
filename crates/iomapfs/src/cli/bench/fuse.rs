//! fio through an iomapfs mount against fio through the kernel's XFS on a loop device.
//!
//! Two sparse images of the same size side by side in the scratch directory: one formatted
//! with `iomapfs mkfs` and mounted by this executable (`mount --device file --direct`, the
//! image opened O_DIRECT so the host's page cache keeps no second copy of what the engine
//! caches), run in the background; the other attached to a loop device, formatted with
//! `mkfs.xfs` and mounted. Both sides run the same fio jobs on a file of the same size (psync
//! engine, buffered, one job). Before each read job the kernel's caches are dropped and
//! iomapfs is mounted again (its cache lives in its daemon), so both sides read cold.
//!
//! Everything is undone when the case ends, fails or is interrupted: the mounts, the daemon,
//! the loop device and the images.

use std::cell::RefCell;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::data::{size_words, MIB};
use super::row::{Row, Unit};
use super::{both, fail, Case, Config, Context, Progress, Result};

/// The fio jobs each round runs on each side.
pub const JOBS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Job {
    SeqWrite,
    SeqRead,
    RandRead,
    RandWrite,
}

impl Job {
    const ALL: [Job; JOBS] = [Job::SeqWrite, Job::SeqRead, Job::RandRead, Job::RandWrite];

    fn row(self, file: u64) -> Row {
        let (what, unit) = match self {
            Job::SeqWrite => (
                format!(
                    "fio through FUSE: 1 MiB sequential write of {}, + fsync",
                    size_words(file)
                ),
                Unit::BytesPerSec,
            ),
            Job::SeqRead => (
                "fio through FUSE: 1 MiB sequential read, cold".into(),
                Unit::BytesPerSec,
            ),
            Job::RandRead => (
                "fio through FUSE: 4 KiB random read, cold".into(),
                Unit::OpsPerSec,
            ),
            Job::RandWrite => (
                "fio through FUSE: 4 KiB random write, + fsync".into(),
                Unit::OpsPerSec,
            ),
        };
        Row::new(Case::Fuse, what, unit, "the kernel's XFS on a loop device")
    }

    fn cold(self) -> bool {
        matches!(self, Job::SeqRead | Job::RandRead)
    }

    fn fio_args(self, secs: u32) -> Vec<String> {
        let timed = [
            format!("--runtime={secs}"),
            "--time_based".into(),
            "--norandommap".into(),
            "--randrepeat=0".into(),
        ];
        let mut args: Vec<String> = match self {
            Job::SeqWrite => vec![
                "--rw=write".into(),
                "--bs=1M".into(),
                "--end_fsync=1".into(),
            ],
            Job::SeqRead => vec!["--rw=read".into(), "--bs=1M".into()],
            Job::RandRead => vec!["--rw=randread".into(), "--bs=4k".into()],
            Job::RandWrite => vec![
                "--rw=randwrite".into(),
                "--bs=4k".into(),
                "--end_fsync=1".into(),
            ],
        };
        if matches!(self, Job::RandRead | Job::RandWrite) {
            args.extend(timed);
        }
        args
    }
}

/// Why the case cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (it mounts, and attaches a loop device)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    for (tool, package) in [
        ("fio", "fio"),
        ("mkfs.xfs", "xfsprogs"),
        ("losetup", "mount"),
        ("mount", "mount"),
        ("umount", "mount"),
    ] {
        if !on_path(tool) {
            return Some(format!(
                "{tool} is not installed (apt-get install {package})"
            ));
        }
    }
    let xfs = fs::read_to_string("/proc/filesystems").is_ok_and(|f| {
        f.lines()
            .any(|l| l.split_whitespace().last() == Some("xfs"))
    });
    if !xfs
        && !Command::new("modprobe")
            .arg("xfs")
            .status()
            .is_ok_and(|s| s.success())
    {
        return Some("the kernel has no XFS".into());
    }
    match Command::new("losetup").arg("-f").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("no free loop device (losetup -f)".into()),
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
}

/// Runs `cmd`, failing with its output in the message.
fn run_tool(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `path` is a mount point of a file system whose type starts with `fs_type`.
fn mounted(path: &Path, fs_type: &str) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|&x| x == "-");
        f.get(4) == Some(&&*want)
            && sep.is_some_and(|s| f.get(s + 1).is_some_and(|t| t.starts_with(fs_type)))
    })
}

/// Which file system a job runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Iomapfs,
    Xfs,
}

/// Both mounts and what is behind them; dropping it undoes whatever was set up.
struct Mounts {
    exe: PathBuf,
    image: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
    daemon: Option<Child>,
    xfs_image: PathBuf,
    xfs_mnt: PathBuf,
    loop_dev: Option<String>,
}

impl Mounts {
    fn setup(cfg: &Config, p: &Progress) -> Result<Self> {
        let dir = cfg.dir.join("fuse");
        let mut m = Self {
            exe: std::env::current_exe().context(|| "find this executable")?,
            image: dir.join("iomapfs.img"),
            mnt: dir.join("iomapfs"),
            log: dir.join("iomapfs.log"),
            daemon: None,
            xfs_image: dir.join("xfs.img"),
            xfs_mnt: dir.join("xfs"),
            loop_dev: None,
        };
        p.stage("fuse: making both file systems")?;
        for d in [&m.mnt, &m.xfs_mnt] {
            fs::create_dir_all(d).context(|| format!("create {}", d.display()))?;
        }
        for img in [&m.image, &m.xfs_image] {
            File::create(img)
                .and_then(|f| f.set_len(cfg.sizes.fuse_image))
                .context(|| format!("create {}", img.display()))?;
        }
        run_tool(Command::new(&m.exe).arg("mkfs").arg(&m.image))?;
        m.mount_iomapfs()?;
        let dev = run_tool(
            Command::new("losetup")
                .args(["-f", "--show"])
                .arg(&m.xfs_image),
        )?;
        m.loop_dev = Some(dev.trim().to_string());
        run_tool(Command::new("mkfs.xfs").args(["-q", "-f", dev.trim()]))?;
        run_tool(Command::new("mount").arg(dev.trim()).arg(&m.xfs_mnt))?;
        Ok(m)
    }

    fn mount_iomapfs(&mut self) -> Result<()> {
        let log = File::create(&self.log).context(|| format!("create {}", self.log.display()))?;
        let child = Command::new(&self.exe)
            .args(["mount", "--device", "file", "--direct"])
            .arg(&self.image)
            .arg(&self.mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context(|| format!("run {} mount", self.exe.display()))?;
        let daemon = self.daemon.insert(child);
        let start = Instant::now();
        while !mounted(&self.mnt, "fuse") {
            let exited = daemon.try_wait().context(|| "wait for iomapfs mount")?;
            if exited.is_some() || start.elapsed() > Duration::from_secs(30) {
                return Err(fail(format!(
                    "iomapfs did not mount; its log:\n{}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Unmounts iomapfs and waits for its daemon, which writes back and checkpoints after
    /// the mount goes.
    fn unmount_iomapfs(&mut self) -> Result<()> {
        run_tool(Command::new("umount").arg(&self.mnt))?;
        if let Some(mut daemon) = self.daemon.take() {
            let status = daemon.wait().context(|| "wait for the iomapfs daemon")?;
            if !status.success() {
                return Err(fail(format!(
                    "the iomapfs daemon failed ({status}); its log:\n{}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                )));
            }
        }
        Ok(())
    }

    /// Empties the caches a read on `side` could hit.
    fn cold(&mut self, side: Side) -> Result<()> {
        nix::unistd::sync();
        fs::write("/proc/sys/vm/drop_caches", "3").context(|| "drop the kernel's caches")?;
        if side == Side::Iomapfs {
            self.unmount_iomapfs()?;
            self.mount_iomapfs()?;
        }
        Ok(())
    }

    /// Runs `job` on `side`: bytes a second for sequential jobs, operations a second for
    /// random ones.
    fn run(&mut self, side: Side, job: Job, cfg: &Config) -> Result<f64> {
        if job.cold() {
            self.cold(side)?;
        }
        let dir = match side {
            Side::Iomapfs => &self.mnt,
            Side::Xfs => &self.xfs_mnt,
        };
        let out = run_tool(
            // fio reads its options in order, and a file named before the directory is
            // made in the current one.
            Command::new("fio")
                .arg("--name=bench")
                .arg(format!("--directory={}", dir.display()))
                .args([
                    "--filename=bench",
                    "--ioengine=psync",
                    "--direct=0",
                    "--group_reporting",
                    "--output-format=json",
                ])
                .arg(format!("--size={}M", cfg.sizes.fuse_file / MIB))
                .args(job.fio_args(cfg.sizes.fuse_secs)),
        )?;
        fio_figure(&out, job)
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        if mounted(&self.mnt, "fuse") {
            let ok = Command::new("umount").arg(&self.mnt).status();
            if !ok.is_ok_and(|s| s.success()) {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
        }
        if let Some(mut d) = self.daemon.take() {
            let _ = d.wait();
        }
        if mounted(&self.xfs_mnt, "xfs") {
            let _ = Command::new("umount").arg(&self.xfs_mnt).status();
        }
        if let Some(dev) = self.loop_dev.take() {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
        let _ = fs::remove_file(&self.image);
        let _ = fs::remove_file(&self.xfs_image);
    }
}

/// The figure of `job` from fio's JSON report.
fn fio_figure(out: &str, job: Job) -> Result<f64> {
    let json = out.find('{').map_or(out, |at| &out[at..]);
    let v: serde_json::Value = serde_json::from_str(json).context(|| "fio's JSON report")?;
    let side = match job {
        Job::SeqWrite | Job::RandWrite => "write",
        Job::SeqRead | Job::RandRead => "read",
    };
    let stats = &v["jobs"][0][side];
    let field = match job {
        Job::SeqWrite | Job::SeqRead => "bw_bytes",
        Job::RandRead | Job::RandWrite => "iops",
    };
    match stats[field].as_f64() {
        Some(x) if x > 0.0 => Ok(x),
        _ => Err(fail(format!("fio reported no {side} {field}: {json}"))),
    }
}

/// `fuse`: every job on both sides, every round.
pub fn run(cfg: &Config, p: &Progress) -> Result<Vec<Row>> {
    let mounts = RefCell::new(Mounts::setup(cfg, p)?);
    let mut rows: Vec<(Job, Row)> = Job::ALL
        .iter()
        .map(|&j| (j, j.row(cfg.sizes.fuse_file)))
        .collect();
    for round in 0..cfg.rounds {
        for (job, row) in &mut rows {
            p.stage_round(&row.label(), round, cfg.rounds)?;
            let (e, x) = both(
                round,
                || mounts.borrow_mut().run(Side::Iomapfs, *job, cfg),
                || mounts.borrow_mut().run(Side::Xfs, *job, cfg),
            )?;
            row.push(e, x);
            p.round(round, cfg.rounds, row, ["iomapfs", "XFS"]);
            p.done(2)?;
        }
    }
    mounts.into_inner().unmount_iomapfs()?;
    Ok(rows.into_iter().map(|(_, r)| r).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fio_figures_come_from_the_side_the_job_moved() {
        let report = r#"note: a line fio printed first
{"jobs": [{"read": {"io_bytes": 4096, "iops": 8159.5, "bw_bytes": 33421312},
           "write": {"io_bytes": 0, "iops": 0.0, "bw_bytes": 0}}]}"#;
        assert_eq!(fio_figure(report, Job::RandRead).unwrap_or(0.0), 8159.5);
        assert_eq!(fio_figure(report, Job::SeqRead).unwrap_or(0.0), 33421312.0);
        assert!(fio_figure(report, Job::RandWrite).is_err());
        assert!(fio_figure("not json", Job::SeqRead).is_err());
    }
}

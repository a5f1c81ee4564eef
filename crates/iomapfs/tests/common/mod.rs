//! Running the real `iomapfs` binary against a real FUSE mount (as root, which CI is).

#![allow(dead_code, clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_iomapfs")
}

/// A fresh directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("e2e-{name}"));
    if let Some(stale) = mountpoint_under(&dir) {
        let _ = Command::new("umount").arg("-l").arg(stale).status();
    }
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn mountpoint_under(dir: &Path) -> Option<PathBuf> {
    let mnt = dir.join("mnt");
    mounted(&mnt).then_some(mnt)
}

/// Whether `path` is a FUSE mount now.
pub fn mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|&x| x == "-");
        f.get(4) == Some(&&*want)
            && sep.is_some_and(|s| f.get(s + 1).is_some_and(|t| t.starts_with("fuse")))
    })
}

/// Runs `iomapfs ARGS`; its exit status and what it printed on both streams.
pub fn run(args: &[&str]) -> (ExitStatus, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status, text)
}

/// `iomapfs fsck IMAGE`: its exit code and report.
pub fn fsck(image: &Path) -> (i32, String) {
    let (st, out) = run(&["fsck", image.to_str().unwrap()]);
    (st.code().unwrap_or(-1), out)
}

/// Fails the test with a clear reason when it cannot mount.
pub fn require_fuse() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the end-to-end tests mount FUSE filesystems and must run as root"
    );
    assert!(Path::new("/dev/fuse").exists(), "/dev/fuse is missing");
}

/// A running `iomapfs mount` of `dir/img` at `dir/mnt`.
pub struct Daemon {
    child: Option<Child>,
    pub image: PathBuf,
    pub mnt: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Mounts `dir/img` (made if missing, 1 GiB) at `dir/mnt` with the file device and
    /// `extra` arguments, and waits until the mount is there.
    pub fn start(dir: &Path, extra: &[&str]) -> Daemon {
        require_fuse();
        let image = dir.join("img");
        let mnt = dir.join("mnt");
        let log = dir.join("daemon.log");
        let child = Command::new(bin())
            .arg("mount")
            .arg(&image)
            .arg(&mnt)
            .args(["--device", "file", "--size", "1G"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child: Some(child),
            image,
            mnt,
            log,
        };
        // A dead mount left by a killed daemon is listed too, but statfs fails on it.
        d.wait_until(
            |d| mounted(&d.mnt) && nix::sys::statfs::statfs(&d.mnt).is_ok(),
            "the mount to appear",
        );
        d
    }

    /// What the daemon has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// A path inside the mount.
    pub fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    /// Polls `cond` (every 20 ms, 30 s at most), failing with the log if the daemon exits
    /// first or the time runs out.
    pub fn wait_until(&mut self, cond: impl Fn(&Daemon) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond(self) {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "iomapfs exited ({st}) waiting for {what}; its log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the daemon to exit (30 s at most) and returns its status.
    fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("iomapfs did not exit; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `umount`s the mount and waits for the daemon to write back and exit; returns its log.
    pub fn unmount(mut self) -> String {
        // Another test thread forking a child can briefly hold copies of this mount's open
        // files (until the child's exec closes them): umount is busy for that moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        let out = loop {
            let out = Command::new("umount").arg(&self.mnt).output().unwrap();
            let busy = String::from_utf8_lossy(&out.stderr).contains("busy");
            if out.status.success() || !busy || Instant::now() > deadline {
                break out;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            out.status.success(),
            "umount failed: {}; log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        let st = self.wait_exit();
        assert!(
            st.success(),
            "iomapfs exited with {st}; log:\n{}",
            self.log()
        );
        self.log()
    }

    /// Sends `signal` and waits for the daemon to exit; returns its status and log.
    pub fn signal(mut self, signal: nix::sys::signal::Signal) -> (ExitStatus, String) {
        let pid = nix::unistd::Pid::from_raw(self.child.as_ref().unwrap().id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
        let st = self.wait_exit();
        (st, self.log())
    }
}

impl Drop for Daemon {
    /// A test that failed half-way leaves no mount or daemon behind. (A daemon the test
    /// stopped itself is gone already; a killed one's dead mount is left for the next mount
    /// to clear, as a user would meet it.)
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Deterministic bytes for a test: `len` from a seed.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

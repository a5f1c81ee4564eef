//! The bytes the cases write and check, the files they keep them in, and the few facts about
//! the process and its file system they read.
//!
//! Every data file holds a pattern that is never a zero word and differs at every offset and
//! in every generation, so a block read from the wrong place, or a stale one, shows.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use iomap::iomap_dev::{DeviceOptions, IoBuf};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{fail, Context, Result};

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// The block size of every engine mapping here, and the unit of random I/O.
pub const BLOCK: u64 = 4 * KIB;
/// Sequential I/O size, and the largest device request.
pub const CHUNK: u64 = MIB;
/// Setup I/O size.
const FILL: u64 = 8 * MIB;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Generation `gen` of the contents at file offset `pos` (both 8-byte aligned).
pub fn pattern_into(buf: &mut [u8], pos: u64, gen: u64) {
    debug_assert!(pos % 8 == 0 && buf.len() % 8 == 0);
    for (i, word) in buf.chunks_exact_mut(8).enumerate() {
        let v = splitmix64((pos + 8 * i as u64) ^ (gen << 48)) | 1;
        word.copy_from_slice(&v.to_le_bytes());
    }
}

/// Creates `path` with `size` bytes of generation 0 through the kernel's page cache, and
/// makes it durable so that no writeback of the setup runs during a measurement.
pub fn create_buffered(path: &Path, size: u64) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .context(|| format!("create {}", path.display()))?;
    fill(&file, path, size, &mut vec![0u8; FILL as usize])?;
    Ok(file)
}

/// Creates `path` with `size` bytes of generation 0 written with O_DIRECT, so that every block
/// is allocated and written (later writes are overwrites) and none of it is in the kernel's
/// page cache.
pub fn create_direct(path: &Path, size: u64) -> Result<()> {
    let file = open_direct(path, true)?;
    fill(&file, path, size, &mut IoBuf::zeroed(FILL as usize))
}

fn fill(file: &File, path: &Path, size: u64, buf: &mut [u8]) -> Result<()> {
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(buf.len() as u64) as usize;
        pattern_into(&mut buf[..n], pos, 0);
        file.write_all_at(&buf[..n], pos)
            .context(|| format!("write {}", path.display()))?;
        pos += n as u64;
    }
    file.sync_all()
        .context(|| format!("fsync {}", path.display()))
}

/// Opens `path` for reading and writing with O_DIRECT, saying what to do if the file system
/// refuses it.
pub fn open_direct(path: &Path, create: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(create)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| direct_refused(path, &e))
}

fn direct_refused(path: &Path, e: &io::Error) -> super::CliError {
    if e.raw_os_error() == Some(libc::EINVAL) {
        fail(format!(
            "O_DIRECT refused for {}: {e}; give --dir a directory on a disk file system \
             that supports it (ext4, xfs, btrfs)",
            path.display()
        ))
    } else {
        fail(format!("open {} with O_DIRECT: {e}", path.display()))
    }
}

/// The engine's device options for an O_DIRECT file: 4 KiB logical blocks, 1 MiB requests.
pub fn direct_device() -> DeviceOptions {
    DeviceOptions {
        direct: true,
        logical_block_size: Some(BLOCK as u32),
        max_request_bytes: CHUNK,
        ..DeviceOptions::default()
    }
}

/// Reads `samples` random blocks of `file` (opened with O_DIRECT) and compares each with what
/// `expect` says it holds.
pub fn check_samples(
    file: &File,
    what: &str,
    size: u64,
    samples: usize,
    seed: u64,
    expect: impl Fn(u64, &mut [u8]),
) -> Result<()> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut got = IoBuf::zeroed(BLOCK as usize);
    let mut want = vec![0u8; BLOCK as usize];
    for _ in 0..samples {
        let pos = rng.gen_range(0..size / BLOCK) * BLOCK;
        file.read_exact_at(&mut got, pos)
            .context(|| format!("read {what} at {pos}"))?;
        expect(pos, &mut want);
        if *got != *want {
            return Err(fail(format!(
                "{what}: the block at {pos} holds the wrong data"
            )));
        }
    }
    Ok(())
}

/// The type of the file system holding `dir`, from the longest matching mount point.
pub fn fs_type(dir: &Path) -> String {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return "unknown".into();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_, mnt, ty) = (f.next()?, f.next()?, f.next()?);
            let mnt = mnt.replace("\\040", " ");
            dir.starts_with(&mnt).then(|| (mnt.len(), ty.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, ty)| ty)
}

/// Resident bytes of this process.
pub fn rss() -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status").context(|| "read /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * KIB)
        .ok_or_else(|| fail("no VmRSS line in /proc/self/status"))
}

/// `v` rounded, with thousands separated by commas.
pub fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A size in GiB when it is whole GiB, else in MiB.
pub fn size_words(bytes: u64) -> String {
    if bytes >= GIB && bytes % GIB == 0 {
        format!("{} GiB", bytes / GIB)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

/// The median of `v` (the mean of the middle two for an even count); 0 for none.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_differs_by_offset_and_generation_and_has_no_zero_word() {
        let (mut a, mut b, mut c) = ([0u8; 64], [0u8; 64], [0u8; 64]);
        pattern_into(&mut a, 4096, 0);
        pattern_into(&mut b, 4104, 0);
        pattern_into(&mut c, 4096, 1);
        assert_eq!(a[8..], b[..56]);
        assert_ne!(a, c);
        assert!(a.chunks_exact(8).all(|w| w != [0u8; 8]));
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}

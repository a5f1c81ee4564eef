//! Files and directories through a real FUSE mount, used with std::fs and system calls as
//! programs use them: every byte goes through the daemon and the engine.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};

use common::{fsck, pattern, scratch, Daemon};
use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};

fn errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(0))
}

#[test]
fn files_directories_links_and_attributes_behave_as_on_a_local_filesystem() {
    let dir = scratch("namespace");
    let d = Daemon::start(&dir, &[]);

    // Create, write, append, read.
    fs::write(d.path("a"), b"hello").unwrap();
    let mut f = OpenOptions::new().append(true).open(d.path("a")).unwrap();
    f.write_all(b", world").unwrap();
    drop(f);
    assert_eq!(fs::read(d.path("a")).unwrap(), b"hello, world");
    assert_eq!(fs::metadata(d.path("a")).unwrap().len(), 12);

    // Directories: nested creation, listing, non-empty removal refused.
    fs::create_dir_all(d.path("x/y/z")).unwrap();
    for i in 0..50 {
        fs::write(d.path(&format!("x/f{i}")), i.to_string()).unwrap();
    }
    let names: BTreeSet<String> = fs::read_dir(d.path("x"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut want: BTreeSet<String> = (0..50).map(|i| format!("f{i}")).collect();
    want.insert("y".into());
    assert_eq!(names, want);
    let err = fs::remove_dir(d.path("x/y")).unwrap_err();
    assert_eq!(errno(&err), Errno::ENOTEMPTY);
    fs::remove_dir(d.path("x/y/z")).unwrap();
    fs::remove_dir(d.path("x/y")).unwrap();
    assert_eq!(fs::metadata(d.path("x")).unwrap().nlink(), 2);

    // Errors come back with their POSIX errno.
    let err = fs::read(d.path("missing")).unwrap_err();
    assert_eq!(errno(&err), Errno::ENOENT);
    let err = fs::create_dir(d.path("x")).unwrap_err();
    assert_eq!(errno(&err), Errno::EEXIST);
    let err = fs::read_dir(d.path("a")).unwrap_err();
    assert_eq!(errno(&err), Errno::ENOTDIR);
    let err = fs::write(d.path(&"n".repeat(256)), b"").unwrap_err();
    assert_eq!(errno(&err), Errno::ENAMETOOLONG);
    let err = fs::remove_file(d.path("x")).unwrap_err();
    assert_eq!(errno(&err), Errno::EISDIR);

    // Hard links and symlinks.
    fs::hard_link(d.path("a"), d.path("x/a2")).unwrap();
    assert_eq!(fs::metadata(d.path("a")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(d.path("a")).unwrap().ino(),
        fs::metadata(d.path("x/a2")).unwrap().ino()
    );
    std::os::unix::fs::symlink("../a", d.path("x/link")).unwrap();
    assert_eq!(
        fs::read_link(d.path("x/link")).unwrap().to_str(),
        Some("../a")
    );
    assert_eq!(fs::read(d.path("x/link")).unwrap(), b"hello, world");

    // Special files.
    nix::unistd::mkfifo(
        &d.path("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let m = fs::symlink_metadata(d.path("fifo")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()));
    assert_eq!(m.mode() & 0o7777, 0o600);

    // Rename: plain, over an existing file, NOREPLACE refused, EXCHANGE swaps.
    fs::write(d.path("b"), b"bee").unwrap();
    fs::rename(d.path("b"), d.path("c")).unwrap();
    assert!(!d.path("b").exists());
    fs::write(d.path("d"), b"dee").unwrap();
    fs::rename(d.path("d"), d.path("c")).unwrap();
    assert_eq!(fs::read(d.path("c")).unwrap(), b"dee");
    fs::write(d.path("e"), b"eee").unwrap();
    let err = renameat2(
        AT_FDCWD,
        &d.path("e"),
        AT_FDCWD,
        &d.path("c"),
        RenameFlags::RENAME_NOREPLACE,
    )
    .unwrap_err();
    assert_eq!(err, Errno::EEXIST);
    renameat2(
        AT_FDCWD,
        &d.path("e"),
        AT_FDCWD,
        &d.path("c"),
        RenameFlags::RENAME_EXCHANGE,
    )
    .unwrap();
    assert_eq!(fs::read(d.path("c")).unwrap(), b"eee");
    assert_eq!(fs::read(d.path("e")).unwrap(), b"dee");

    // Modes, truncation up and down.
    fs::set_permissions(d.path("c"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(d.path("c")).unwrap().mode() & 0o7777, 0o640);
    let f = OpenOptions::new().write(true).open(d.path("c")).unwrap();
    f.set_len(10_000).unwrap();
    drop(f);
    let mut want = b"eee".to_vec();
    want.resize(10_000, 0);
    assert_eq!(fs::read(d.path("c")).unwrap(), want);
    OpenOptions::new()
        .write(true)
        .open(d.path("c"))
        .unwrap()
        .set_len(1)
        .unwrap();
    assert_eq!(fs::read(d.path("c")).unwrap(), b"e");

    // Extended attributes.
    xattr::set(d.path("a"), "user.colour", b"blue").unwrap();
    assert_eq!(
        xattr::get(d.path("a"), "user.colour").unwrap().as_deref(),
        Some(&b"blue"[..])
    );
    let names: Vec<_> = xattr::list(d.path("a")).unwrap().collect();
    assert_eq!(names, vec![std::ffi::OsString::from("user.colour")]);
    xattr::remove(d.path("a"), "user.colour").unwrap();
    assert_eq!(xattr::get(d.path("a"), "user.colour").unwrap(), None);

    // Space: statfs sees a 1 GiB filesystem.
    let st = nix::sys::statvfs::statvfs(&d.mnt).unwrap();
    let total = st.blocks() * st.fragment_size();
    assert!(total > 900 << 20 && total <= 1 << 30, "{total}");
    assert_eq!(st.name_max(), 255);

    // Unlinking an open file keeps its data readable until it is closed.
    let mut open = File::open(d.path("x/a2")).unwrap();
    fs::remove_file(d.path("a")).unwrap();
    fs::remove_file(d.path("x/a2")).unwrap();
    let mut s = String::new();
    open.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello, world");
    drop(open);

    let log = d.unmount();
    let (code, report) = fsck(&dir.join("img"));
    assert_eq!(code, 0, "{report}\n{log}");
    assert!(!report.contains("unlinked while open"), "{report}");
}

#[test]
fn large_and_small_writes_read_back_before_and_after_a_remount() {
    let dir = scratch("data");
    let d = Daemon::start(&dir, &[]);
    let big = pattern(1, 40 << 20);
    {
        let mut f = File::create(d.path("big")).unwrap();
        // Irregular chunks: one byte, partial blocks, several MiB.
        let mut off = 0;
        for (i, len) in [1usize, 4095, 4097, 3 << 20, 12_345, 1 << 20, 77]
            .iter()
            .cycle()
            .enumerate()
        {
            if off == big.len() {
                break;
            }
            let n = (*len).min(big.len() - off);
            f.write_all(&big[off..off + n]).unwrap();
            off += n;
            assert!(i < 10_000);
        }
    }
    let small: Vec<Vec<u8>> = (0..200)
        .map(|i| pattern(100 + i, (i * 37 % 5000) as usize + 1))
        .collect();
    for (i, data) in small.iter().enumerate() {
        fs::write(d.path(&format!("s{i}")), data).unwrap();
    }
    // Overwrite inside the big file at an unaligned offset, through pwrite.
    let patch = pattern(2, 100_000);
    File::options()
        .write(true)
        .open(d.path("big"))
        .unwrap()
        .write_all_at(&patch, 5_000_001)
        .unwrap();
    let mut want = big.clone();
    want[5_000_001..5_100_001].copy_from_slice(&patch);

    let check = |d: &Daemon| {
        assert!(fs::read(d.path("big")).unwrap() == want, "big file differs");
        for (i, data) in small.iter().enumerate() {
            assert_eq!(&fs::read(d.path(&format!("s{i}"))).unwrap(), data, "s{i}");
        }
        // Reads at odd offsets and lengths.
        let mut f = File::open(d.path("big")).unwrap();
        f.seek(SeekFrom::Start(4_999_999)).unwrap();
        let mut buf = vec![0u8; 300_003];
        f.read_exact(&mut buf).unwrap();
        assert!(buf == want[4_999_999..5_300_002]);
    };
    check(&d);
    d.unmount();
    let (code, report) = fsck(&dir.join("img"));
    assert_eq!(code, 0, "{report}");
    let d = Daemon::start(&dir, &[]);
    check(&d);
    d.unmount();
}

#[test]
fn fallocate_copy_file_range_and_seek_data_reach_the_filesystem() {
    use nix::fcntl::{copy_file_range, fallocate, FallocateFlags as F};
    use nix::unistd::{lseek, Whence};

    let dir = scratch("space");
    let d = Daemon::start(&dir, &[]);
    let mut model = pattern(3, 1 << 20);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(d.path("f"))
        .unwrap();
    f.write_all_at(&model, 0).unwrap();

    // Punch a hole: reads as zeros, SEEK_HOLE finds it, SEEK_DATA skips it.
    fallocate(
        &f,
        F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE,
        64 << 10,
        128 << 10,
    )
    .unwrap();
    model[64 << 10..192 << 10].fill(0);
    f.sync_all().unwrap();
    assert_eq!(lseek(&f, 0, Whence::SeekHole).unwrap(), 64 << 10);
    assert_eq!(lseek(&f, 64 << 10, Whence::SeekData).unwrap(), 192 << 10);
    assert_eq!(lseek(&f, 1 << 20, Whence::SeekData), Err(Errno::ENXIO));
    assert_eq!(lseek(&f, 1 << 20, Whence::SeekHole), Err(Errno::ENXIO));
    // Zero a range.
    fallocate(&f, F::FALLOC_FL_ZERO_RANGE, 300_000, 5_000).unwrap();
    model[300_000..305_000].fill(0);
    // The kernel's FUSE passes only the modes above; it refuses collapse and insert itself.
    for mode in [F::FALLOC_FL_COLLAPSE_RANGE, F::FALLOC_FL_INSERT_RANGE] {
        assert_eq!(fallocate(&f, mode, 0, 64 << 10), Err(Errno::EOPNOTSUPP));
    }
    // Preallocate past the end without changing the size, then extend with it.
    fallocate(&f, F::FALLOC_FL_KEEP_SIZE, model.len() as i64, 1 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), model.len() as u64);
    fallocate(&f, F::empty(), 0, model.len() as i64 + 10_000).unwrap();
    model.resize(model.len() + 10_000, 0);
    assert_eq!(fs::read(d.path("f")).unwrap(), model);

    // copy_file_range: block-aligned copies share blocks; free space barely moves.
    f.sync_all().unwrap();
    let free = || {
        let s = nix::sys::statvfs::statvfs(&d.mnt).unwrap();
        s.blocks_free() * s.fragment_size()
    };
    let g = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(d.path("g"))
        .unwrap();
    let before = free();
    let mut off_in = 0i64;
    let mut off_out = 0i64;
    let n = copy_file_range(&f, Some(&mut off_in), &g, Some(&mut off_out), 512 << 10).unwrap();
    assert_eq!(n, 512 << 10);
    g.sync_all().unwrap();
    assert!(
        before - free() < 64 << 10,
        "an aligned copy took {} bytes",
        before - free()
    );
    assert_eq!(fs::read(d.path("g")).unwrap(), model[..512 << 10]);
    // Unaligned: copied byte by byte.
    let mut off_in = 1i64;
    let mut off_out = 100_003i64;
    let n = copy_file_range(&f, Some(&mut off_in), &g, Some(&mut off_out), 10_000).unwrap();
    assert_eq!(n, 10_000);
    let got = fs::read(d.path("g")).unwrap();
    assert_eq!(got[100_003..110_003], model[1..10_001]);
    drop((f, g));
    d.unmount();
    assert_eq!(fsck(&dir.join("img")).0, 0);
}

#[test]
fn mmap_writes_reach_the_file_and_mmap_reads_see_written_data() {
    let dir = scratch("mmap");
    let d = Daemon::start(&dir, &[]);
    let data = pattern(4, 3 * 4096 + 100);
    fs::write(d.path("m"), &data).unwrap();
    // Python maps the file: it is the simplest program here that uses mmap without this
    // crate needing `unsafe`.
    let script = r#"
import mmap, os, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDWR)
m = mmap.mmap(fd, 0)
sys.stdout.write(m[:16].hex())
m[4096:4096 + 11] = b"mapped data"
m.flush()
m.close()
os.close(fd)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(d.path("m"))
        .output()
        .expect("python3 runs the mmap half of this test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut hex = String::new();
    for b in &data[..16] {
        hex.push_str(&format!("{b:02x}"));
    }
    assert_eq!(String::from_utf8_lossy(&out.stdout), hex);
    let mut want = data.clone();
    want[4096..4107].copy_from_slice(b"mapped data");
    assert_eq!(fs::read(d.path("m")).unwrap(), want);
    d.unmount();
    let d = Daemon::start(&dir, &[]);
    assert_eq!(fs::read(d.path("m")).unwrap(), want);
    d.unmount();
}

#[test]
fn many_threads_write_and_read_at_once() {
    let dir = scratch("threads");
    let d = Daemon::start(&dir, &["--threads", "8"]);
    const CHUNK: usize = 256 << 10;
    File::create(d.path("shared")).unwrap();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let d = &d;
            s.spawn(move || {
                // Each thread: its own file, and its own stripe of the shared one.
                let own = pattern(10 + t, 3 << 20);
                fs::write(d.path(&format!("own{t}")), &own).unwrap();
                let shared = File::options().write(true).open(d.path("shared")).unwrap();
                for round in 0..4u64 {
                    let stripe = pattern(100 * t + round, CHUNK);
                    shared
                        .write_all_at(&stripe, (round * 8 + t) * CHUNK as u64)
                        .unwrap();
                }
                shared.sync_data().unwrap();
                for _ in 0..3 {
                    assert!(fs::read(d.path(&format!("own{t}"))).unwrap() == own);
                }
            });
        }
    });
    let got = fs::read(d.path("shared")).unwrap();
    assert_eq!(got.len(), 32 * CHUNK);
    for t in 0..8u64 {
        for round in 0..4u64 {
            let at = ((round * 8 + t) * CHUNK as u64) as usize;
            assert!(
                got[at..at + CHUNK] == pattern(100 * t + round, CHUNK)[..],
                "t{t} r{round}"
            );
        }
    }
    d.unmount();
    assert_eq!(fsck(&dir.join("img")).0, 0);
}

#[test]
fn direct_io_opens_are_served_too() {
    let dir = scratch("odirect");
    let d = Daemon::start(&dir, &[]);
    let data = pattern(5, 1 << 20);
    fs::write(d.path("f"), &data).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(d.path("f"))
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let n = f.read_at(&mut buf, 0).unwrap();
    assert_eq!(n, 1 << 20);
    assert!(buf == data);
    drop(f);
    d.unmount();
}

#[test]
fn readdir_lists_a_large_directory_once_while_entries_come_and_go() {
    let dir = scratch("readdir");
    let d = Daemon::start(&dir, &[]);
    fs::create_dir(d.path("big")).unwrap();
    let name = |i: usize| format!("entry-with-a-longer-name-{i:05}");
    for i in 0..2000 {
        File::create(d.path(&format!("big/{}", name(i)))).unwrap();
    }
    let mut seen = BTreeSet::new();
    let mut removed = BTreeSet::new();
    for (n, e) in fs::read_dir(d.path("big")).unwrap().enumerate() {
        let e = e.unwrap().file_name().into_string().unwrap();
        assert!(seen.insert(e.clone()), "{e} listed twice");
        if n == 500 {
            // Midway: remove entries not listed yet, add new ones.
            for i in (1500..2000).step_by(5) {
                fs::remove_file(d.path(&format!("big/{}", name(i)))).unwrap();
                removed.insert(name(i));
            }
            for i in 2000..2050 {
                File::create(d.path(&format!("big/{}", name(i)))).unwrap();
            }
        }
    }
    // Every entry there from start to end is listed once; removed ones are not.
    for i in 0..2000 {
        if !removed.contains(&name(i)) {
            assert!(seen.contains(&name(i)), "{} missing", name(i));
        }
    }
    assert!(
        removed.iter().all(|r| !seen.contains(r)),
        "a removed entry was listed"
    );
    assert_eq!(
        fs::read_dir(d.path("big")).unwrap().count(),
        2000 - 100 + 50
    );
    d.unmount();
}

#[test]
fn an_unprivileged_writer_clears_setuid_and_setgid_and_new_entries_inherit_a_setgid_group() {
    use std::os::unix::fs::{chown, PermissionsExt};
    let dir = scratch("suid");
    let d = Daemon::start(&dir, &["--allow-other"]);
    let f = d.path("prog");
    fs::write(&f, b"#!/bin/sh\n").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o6777)).unwrap();
    // Root keeps the bits: it may.
    OpenOptions::new()
        .append(true)
        .open(&f)
        .unwrap()
        .write_all(b"# root\n")
        .unwrap();
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o6777);
    // Anyone else's write takes them away.
    let st = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["sh", "-c", "printf x >> \"$0\"", f.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o0777);
    assert!(fs::read(&f).unwrap().ends_with(b"x"));

    // A setgid directory hands its group to new entries, and its bit to new directories.
    let shared = d.path("shared");
    fs::create_dir(&shared).unwrap();
    chown(&shared, None, Some(1234)).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o2775)).unwrap();
    fs::write(shared.join("file"), b"").unwrap();
    fs::create_dir(shared.join("sub")).unwrap();
    assert_eq!(fs::metadata(shared.join("file")).unwrap().gid(), 1234);
    let sub = fs::metadata(shared.join("sub")).unwrap();
    assert_eq!(sub.gid(), 1234);
    assert_ne!(sub.mode() & libc::S_ISGID, 0, "{:o}", sub.mode());
    d.unmount();
}

#[test]
fn random_operations_from_many_threads_match_a_model() {
    random_operations("random", &["--threads", "4"]);
}

#[test]
fn random_operations_match_a_model_while_the_flusher_trims_a_tiny_cache() {
    random_operations(
        "random-tiny",
        &[
            "--cache-size",
            "8M",
            "--dirty-limit",
            "1M",
            "--dirty-expire",
            "0",
        ],
    );
}

/// Random operations from several threads, each thread on its own file with a byte-vector
/// model: writes at odd offsets and sizes, reads, truncates up and down, punches, zeroing,
/// preallocation and fsyncs, checked after every read and step, after all of them, and again
/// after a remount. `MOUNT_OPS` sets the operations per thread.
fn random_operations(name: &str, args: &[&str]) {
    use nix::fcntl::{fallocate, FallocateFlags as F};
    use rand::{Rng, SeedableRng};

    let ops: usize = std::env::var("MOUNT_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let dir = scratch(name);
    let d = Daemon::start(&dir, args);
    const MAX: usize = 3 << 20;
    let models: Vec<(String, Vec<u8>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let d = &d;
                s.spawn(move || {
                    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5eed + t);
                    let name = format!("t{t}");
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(d.path(&name))
                        .unwrap();
                    let mut model: Vec<u8> = Vec::new();
                    for step in 0..ops {
                        let pos = rng.gen_range(0..MAX);
                        let len = match rng.gen_range(0..4) {
                            0 => rng.gen_range(1..64),
                            1 => rng.gen_range(1..5000),
                            2 => rng.gen_range(4096..300_000),
                            _ => 4096 * rng.gen_range(1..64),
                        }
                        .min(MAX - pos);
                        match rng.gen_range(0..10) {
                            0..=3 => {
                                let data = pattern(step as u64 * 31 + t, len);
                                f.write_all_at(&data, pos as u64).unwrap();
                                if model.len() < pos + len {
                                    model.resize(pos + len, 0);
                                }
                                model[pos..pos + len].copy_from_slice(&data);
                            }
                            4 | 5 => {
                                let mut buf = vec![0u8; len];
                                let n = f.read_at(&mut buf, pos as u64).unwrap();
                                let want = model.len().saturating_sub(pos).min(len);
                                assert_eq!(n, want, "{name} step {step}: read length");
                                assert!(
                                    buf[..n] == *model.get(pos..pos + n).unwrap_or(&[]),
                                    "{name} step {step}: read {len} at {pos}"
                                );
                            }
                            6 => {
                                f.set_len(pos as u64).unwrap();
                                model.resize(pos, 0);
                            }
                            7 => {
                                let mode = if rng.gen_bool(0.5) {
                                    F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE
                                } else {
                                    F::FALLOC_FL_ZERO_RANGE
                                };
                                fallocate(&f, mode, pos as i64, len as i64).unwrap();
                                let end = (pos + len).min(model.len());
                                if pos < end {
                                    model[pos..end].fill(0);
                                }
                                if mode == F::FALLOC_FL_ZERO_RANGE && model.len() < pos + len {
                                    model.resize(pos + len, 0);
                                }
                            }
                            8 => {
                                fallocate(&f, F::FALLOC_FL_KEEP_SIZE, pos as i64, len as i64)
                                    .unwrap();
                            }
                            _ => {
                                if rng.gen_bool(0.5) {
                                    f.sync_data().unwrap();
                                } else {
                                    f.sync_all().unwrap();
                                }
                            }
                        }
                        assert_eq!(
                            f.metadata().unwrap().len(),
                            model.len() as u64,
                            "{name} step {step}: size"
                        );
                    }
                    (name, model)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (name, model) in &models {
        assert!(
            fs::read(d.path(name)).unwrap() == *model,
            "{name} after the run"
        );
    }
    d.unmount();
    assert_eq!(fsck(&dir.join("img")).0, 0);
    let d = Daemon::start(&dir, &[]);
    for (name, model) in &models {
        assert!(
            fs::read(d.path(name)).unwrap() == *model,
            "{name} after a remount"
        );
    }
    d.unmount();
}

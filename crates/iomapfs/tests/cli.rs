//! The command line as a user meets it: help, mkfs, fsck and their errors, read-only mounts.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;

use common::{fsck, run, scratch, Daemon};
use extentfs::format::{SB_LEN, SB_OFFSETS};

#[test]
fn help_and_version_are_claps() {
    let (st, out) = run(&["--help"]);
    assert!(st.success(), "{out}");
    for sub in ["mount", "mkfs", "fsck", "stats"] {
        assert!(out.contains(sub), "{sub} missing from:\n{out}");
    }
    let (st, out) = run(&["--version"]);
    assert!(st.success());
    assert_eq!(out.trim(), format!("iomapfs {}", env!("CARGO_PKG_VERSION")));
    let (st, out) = run(&["mount", "--help"]);
    assert!(st.success());
    for opt in [
        "--device",
        "--cache-size",
        "--dirty-limit",
        "--read-only",
        "--threads",
    ] {
        assert!(out.contains(opt), "{opt} missing from:\n{out}");
    }
    assert!(!out.contains("fail-data-writes"), "test hooks stay hidden");
    let (st, out) = run(&["frobnicate"]);
    assert_eq!(st.code(), Some(2));
    assert!(out.contains("unrecognized subcommand"), "{out}");
}

#[test]
fn mkfs_makes_a_sparse_image_and_will_not_format_over_a_filesystem_unasked() {
    let dir = scratch("mkfs");
    let img = dir.join("img");
    let p = img.to_str().unwrap();
    let (st, out) = run(&["mkfs", p, "--size", "256M", "--block-size", "1024"]);
    assert!(st.success(), "{out}");
    let meta = fs::metadata(&img).unwrap();
    assert_eq!(meta.len(), 256 << 20);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 64 << 20,
        "the image is sparse"
    );
    assert_eq!(fsck(&img).0, 0);

    let (st, out) = run(&["mkfs", p]);
    assert!(!st.success());
    assert!(
        out.contains("already holds an extentfs") && out.contains("--force"),
        "{out}"
    );
    let (st, out) = run(&["mkfs", p, "--force", "--size", "128M"]);
    assert!(st.success(), "{out}");
    assert_eq!(fs::metadata(&img).unwrap().len(), 128 << 20);
    assert_eq!(fsck(&img).0, 0);

    for (args, want) in [
        (vec!["--block-size", "3000"], "not a power of two"),
        (
            vec!["--block-size", "131072"],
            "not a power of two from 512 to 65536",
        ),
        (vec!["--size", "12Q"], "unknown unit"),
    ] {
        let other = dir.join("bad");
        let _ = fs::remove_file(&other);
        let mut a = vec!["mkfs", other.to_str().unwrap()];
        a.extend(args);
        let (st, out) = run(&a);
        assert!(!st.success(), "{a:?}");
        assert!(out.contains(want), "{a:?}: {out}");
    }
    // Anything else that holds data is not formatted over unasked either.
    let doc = dir.join("thesis.pdf");
    fs::write(&doc, b"%PDF-1.7 precious").unwrap();
    let (st, out) = run(&["mkfs", doc.to_str().unwrap(), "--size", "64M"]);
    assert!(!st.success());
    assert!(
        out.contains("is not empty") && out.contains("--force"),
        "{out}"
    );
    assert_eq!(fs::read(&doc).unwrap(), b"%PDF-1.7 precious");
    // A blank file (as `truncate -s` makes) is formatted as it is.
    let blank = dir.join("blank");
    File::create(&blank).unwrap().set_len(64 << 20).unwrap();
    let (st, out) = run(&["mkfs", blank.to_str().unwrap()]);
    assert!(st.success(), "{out}");
    assert_eq!(fsck(&blank).0, 0);

    let tiny = dir.join("tiny");
    let (st, out) = run(&["mkfs", tiny.to_str().unwrap(), "--size", "64K"]);
    assert!(!st.success());
    assert!(out.contains("cannot format"), "{out}");
    assert!(!tiny.exists(), "a failed mkfs leaves no file it made");
}

#[test]
fn fsck_exits_as_e2fsck_does_and_names_what_is_corrupt() {
    let dir = scratch("fsck");
    let img = dir.join("img");
    let (st, out) = run(&["mkfs", img.to_str().unwrap(), "--size", "64M"]);
    assert!(st.success(), "{out}");
    let (code, out) = fsck(&img);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("clean"), "{out}");

    // Both superblocks flipped: nothing to check from.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    for off in SB_OFFSETS {
        let mut sb = vec![0u8; SB_LEN];
        f.read_exact_at(&mut sb, off).unwrap();
        sb[40] ^= 0xff;
        f.write_all_at(&sb, off).unwrap();
    }
    drop(f);
    let (code, out) = fsck(&img);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("superblock: checksum"), "{out}");

    let missing = dir.join("missing");
    let (code, out) = fsck(&missing);
    assert_eq!(code, 8, "{out}");
    assert!(out.contains("cannot open"), "{out}");
}

#[test]
fn a_read_only_mount_refuses_changes_and_leaves_the_image_untouched() {
    let dir = scratch("ro");
    let d = Daemon::start(&dir, &[]);
    fs::write(d.path("f"), b"kept").unwrap();
    d.unmount();
    let before = fs::read(dir.join("img")).unwrap();

    let d = Daemon::start(&dir, &["--read-only"]);
    assert_eq!(fs::read(d.path("f")).unwrap(), b"kept");
    for err in [
        fs::write(d.path("g"), b"x").unwrap_err(),
        fs::write(d.path("f"), b"x").unwrap_err(),
        fs::create_dir(d.path("d")).unwrap_err(),
        fs::remove_file(d.path("f")).unwrap_err(),
    ] {
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    }
    d.unmount();
    assert!(
        fs::read(dir.join("img")).unwrap() == before,
        "a read-only mount wrote"
    );

    let (st, out) = run(&[
        "mount",
        "--read-only",
        dir.join("nope").to_str().unwrap(),
        dir.join("mnt").to_str().unwrap(),
    ]);
    assert!(!st.success());
    assert!(out.contains("read-only mount cannot create it"), "{out}");
}

#[test]
fn a_user_without_fusermount3_is_told_what_to_install() {
    use std::os::unix::fs::PermissionsExt;
    common::require_fuse();
    let dir = scratch("user");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(common::bin())
        .arg("mount")
        .arg(dir.join("img"))
        .arg(dir.join("mnt"))
        .args(["--device", "file", "--size", "64M"])
        .env("FUSERMOUNT_PATH", "/nonexistent/fusermount3")
        .output()
        .expect("setpriv runs the daemon as nobody");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("install the fuse3 package"), "{text}");
}

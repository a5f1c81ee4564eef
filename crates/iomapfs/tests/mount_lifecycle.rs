//! The daemon's life: clean unmounts, signals, a kill -9 and the remount after it, writeback
//! errors reported to fsync and close, live statistics and memory limits.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::FileExt;

use common::{fsck, mounted, pattern, run, scratch, Daemon};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use serde_json::Value;

#[test]
fn unmount_leaves_a_clean_image_holding_every_byte() {
    let dir = scratch("clean");
    let d = Daemon::start(&dir, &[]);
    assert!(d.log().contains("formatted"), "{}", d.log());
    let data = pattern(1, 5 << 20);
    fs::write(d.path("f"), &data).unwrap();
    fs::create_dir(d.path("dir")).unwrap();
    let log = d.unmount();
    assert!(log.contains("unmounted cleanly"), "{log}");
    let (code, report) = fsck(&dir.join("img"));
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("clean"), "{report}");
    assert!(!report.contains("not cleanly unmounted"), "{report}");
    let d = Daemon::start(&dir, &[]);
    assert!(!d.log().contains("recovered"), "{}", d.log());
    assert!(fs::read(d.path("f")).unwrap() == data);
    assert!(d.path("dir").is_dir());
    d.unmount();
}

#[test]
fn sigterm_and_sigint_write_back_and_unmount() {
    for (name, sig) in [("sigterm", Signal::SIGTERM), ("sigint", Signal::SIGINT)] {
        let dir = scratch(name);
        let d = Daemon::start(&dir, &[]);
        let mnt = d.mnt.clone();
        let data = pattern(2, 3 << 20);
        fs::write(d.path("f"), &data).unwrap();
        let (st, log) = d.signal(sig);
        assert!(st.success(), "{name}: exit {st}; log:\n{log}");
        assert!(log.contains("unmounted cleanly"), "{log}");
        assert!(!mounted(&mnt), "{name}: still mounted");
        let (code, report) = fsck(&dir.join("img"));
        assert_eq!(code, 0, "{report}");
        assert!(!report.contains("not cleanly unmounted"), "{report}");
        let d = Daemon::start(&dir, &[]);
        assert!(fs::read(d.path("f")).unwrap() == data, "{name}");
        d.unmount();
    }
}

#[test]
fn sigterm_on_a_busy_mount_writes_back_at_once_and_detaches() {
    let dir = scratch("busy");
    let mut d = Daemon::start(&dir, &[]);
    let data = pattern(8, 2 << 20);
    let mut held = File::create(d.path("f")).unwrap();
    held.write_all(&data).unwrap();
    let pid = nix::unistd::Pid::from_raw(d.pid() as i32);
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    // The open file keeps the mount busy: the daemon writes back, then detaches it.
    d.wait_until(
        |d| d.log().contains("detaching it lazily"),
        "the lazy detach",
    );
    assert!(!mounted(&d.mnt), "detached from the namespace");
    // Even if the daemon is killed now, before the file closes, the data is on the image.
    let (st, _) = d.signal(Signal::SIGKILL);
    assert!(!st.success());
    drop(held);
    let d = Daemon::start(&dir, &[]);
    assert!(fs::read(d.path("f")).unwrap() == data);
    d.unmount();
}

#[test]
fn after_kill_9_the_image_checks_clean_and_a_remount_has_every_fsynced_byte() {
    let dir = scratch("kill9");
    let d = Daemon::start(&dir, &[]);
    let synced = pattern(3, 2 << 20);
    let mut f = File::create(d.path("synced")).unwrap();
    f.write_all(&synced).unwrap();
    f.sync_all().unwrap();
    fs::create_dir(d.path("dir")).unwrap();
    File::open(&d.mnt).unwrap().sync_all().unwrap();
    // Written but never synced: may or may not survive, but must not be garbage.
    f.write_all(&pattern(4, 1 << 20)).unwrap();
    let (st, _) = d.signal(Signal::SIGKILL);
    assert!(!st.success());
    assert!(
        mounted(&dir.join("mnt")),
        "a killed daemon leaves its mount behind"
    );

    let (code, report) = fsck(&dir.join("img"));
    assert_eq!(code, 0, "{report}");
    // The next mount clears the dead mount and recovers from the log.
    let d = Daemon::start(&dir, &[]);
    assert!(d.log().contains("detaching"), "{}", d.log());
    let got = fs::read(d.path("synced")).unwrap();
    assert!(
        got.len() == synced.len() || got.len() == 3 << 20,
        "{}",
        got.len()
    );
    assert!(got[..synced.len()] == synced, "fsynced bytes changed");
    if got.len() > synced.len() {
        assert!(
            got[synced.len()..] == pattern(4, 1 << 20),
            "unsynced bytes are garbage"
        );
    }
    assert!(d.path("dir").is_dir());
    d.unmount();
    let (code, report) = fsck(&dir.join("img"));
    assert_eq!(code, 0, "{report}");
    assert!(!report.contains("not cleanly unmounted"), "{report}");
}

#[test]
fn a_second_mount_of_the_same_image_is_refused() {
    let dir = scratch("twice");
    let d = Daemon::start(&dir, &[]);
    let other = dir.join("mnt2");
    let (st, out) = run(&["mount", d.image.to_str().unwrap(), other.to_str().unwrap()]);
    assert!(!st.success());
    assert!(out.contains("in use by another iomapfs"), "{out}");
    let (code, out) = fsck(&d.image);
    assert_eq!(code, 8, "{out}");
    assert!(out.contains("in use"), "{out}");
    d.unmount();
}

#[test]
fn writeback_errors_reach_fsync_once_and_the_close_of_every_writer_until_then() {
    let dir = scratch("eio");
    // Format first, then mount with every data write failing.
    let (st, out) = run(&["mkfs", dir.join("img").to_str().unwrap(), "--size", "1G"]);
    assert!(st.success(), "{out}");
    let d = Daemon::start(&dir, &["--fail-data-writes"]);
    let open_rw = || OpenOptions::new().read(true).write(true).open(d.path("f"));
    let writer = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(d.path("f"))
        .unwrap();
    let other_writer = open_rw().unwrap();
    let third = open_rw().unwrap();
    let reader = File::open(d.path("f")).unwrap();
    writer.write_all_at(&pattern(5, 64 << 10), 0).unwrap();
    // The data is cached, so reads still see it.
    assert_eq!(fs::read(d.path("f")).unwrap().len(), 64 << 10);
    let err = writer.sync_all().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Seen once by this file: the next fsync has nothing new to report.
    writer.sync_all().unwrap();
    // The writer saw it already: its close is clean.
    assert_eq!(nix::unistd::close(writer.into_raw_fd()), Ok(()));
    // A reader's close never reports writeback errors, as on Linux.
    assert_eq!(nix::unistd::close(reader.into_raw_fd()), Ok(()));
    // A writer that has not fsynced since reports it at every close...
    let dup = other_writer.try_clone().unwrap();
    assert_eq!(nix::unistd::close(dup.into_raw_fd()), Err(Errno::EIO));
    assert_eq!(
        nix::unistd::close(other_writer.into_raw_fd()),
        Err(Errno::EIO)
    );
    // ...and a close never uses up what fsync is owed.
    let err = third.sync_all().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(nix::unistd::close(third.into_raw_fd()), Ok(()));
    let stats = stats_json(&d);
    assert!(
        stats["errors"]["writeback"].as_u64().unwrap() >= 1,
        "{stats}"
    );
}

fn stats_json(d: &Daemon) -> Value {
    let (st, out) = run(&["stats", "--json", d.mnt.to_str().unwrap()]);
    assert!(st.success(), "{out}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn stats_show_the_mounts_cache_requests_and_merging() {
    let dir = scratch("stats");
    let d = Daemon::start(&dir, &[]);
    let f = File::create(d.path("f")).unwrap();
    f.write_all_at(&pattern(6, 8 << 20), 0).unwrap();
    f.sync_all().unwrap();
    let _ = fs::read(d.path("f")).unwrap();
    let v = stats_json(&d);
    assert_eq!(v["device"], "file");
    assert!(v["writes"]["bytes"].as_u64().unwrap() >= 8 << 20, "{v}");
    assert!(
        v["requests"]["write_bytes"].as_u64().unwrap() >= 8 << 20,
        "{v}"
    );
    let reqs = v["requests"]["write_requests"].as_u64().unwrap();
    assert!(
        (1..=16).contains(&reqs),
        "8 MiB went out in {reqs} requests: {v}"
    );
    assert!(
        v["requests"]["blocks_per_request"].as_f64().unwrap() > 100.0,
        "{v}"
    );
    assert!(v["reads"]["hits"].as_u64().unwrap() > 0, "{v}");
    assert!(
        v["cache"]["cached_bytes"].as_u64().unwrap() >= 8 << 20,
        "{v}"
    );
    let (st, table) = run(&["stats", d.mnt.to_str().unwrap()]);
    assert!(st.success(), "{table}");
    assert!(
        table.contains("hit rate") && table.contains("blocks per request"),
        "{table}"
    );
    drop(f);
    d.unmount();
    // Asking a directory no daemon serves says so.
    let (st, out) = run(&["stats", dir.to_str().unwrap()]);
    assert!(!st.success());
    assert!(
        out.contains("not served by a running `iomapfs mount`"),
        "{out}"
    );
}

#[test]
fn writers_are_throttled_at_the_dirty_limit_and_the_cache_stays_within_its_size() {
    let dir = scratch("limits");
    // Each 1 MiB write crosses the 256 KiB dirty limit alone, so each waits for writeback.
    let d = Daemon::start(&dir, &["--cache-size", "24M", "--dirty-limit", "256K"]);
    let data = pattern(7, 1 << 20);
    let f = File::create(d.path("f")).unwrap();
    for i in 0..96u64 {
        f.write_all_at(&data, i << 20).unwrap();
    }
    let v = stats_json(&d);
    assert!(
        v["flusher"]["throttled_writes"].as_u64().unwrap() >= 96,
        "{v}"
    );
    // A write returns only once writeback has brought dirty data back under the limit.
    let dirty = v["cache"]["dirty_bytes"].as_u64().unwrap()
        + v["cache"]["writeback_bytes"].as_u64().unwrap();
    assert!(dirty <= 256 << 10, "{dirty} dirty: {v}");
    // Reading it all back pulls 96 MiB through a 24 MiB cache.
    assert!(fs::read(d.path("f"))
        .unwrap()
        .chunks(1 << 20)
        .all(|c| c == data));
    let mut d = d;
    d.wait_until(
        |d| stats_json(d)["cache"]["cached_bytes"].as_u64().unwrap() <= 24 << 20,
        "the cache to be trimmed to its size",
    );
    let v = stats_json(&d);
    let reclaimed = v["cache"]["reclaimed_bytes"].as_u64().unwrap();
    assert!(reclaimed >= 72 << 20, "{v}");
    assert!(v["cache"]["direct_reclaims"].as_u64().unwrap() > 0, "{v}");
    drop(f);
    d.unmount();
    assert_eq!(fsck(&dir.join("img")).0, 0);
}

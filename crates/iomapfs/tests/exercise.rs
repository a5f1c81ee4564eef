//! `iomapfs exercise`: short seeded runs pass and print their totals, a seed replays the
//! same run, bad options are refused, device faults are checked for being reported, and a
//! corrupted model or a device that loses writes is caught.

#![allow(clippy::unwrap_used)]

mod common;

use common::run;
use iomapfs::exercise::{run_ops, Config, Fault, FaultKind, Op};

fn totals_line(out: &str) -> &str {
    out.lines()
        .find(|l| l.contains("operations passed"))
        .unwrap_or_else(|| panic!("no totals line in:\n{out}"))
}

fn assert_passes(args: &[&str], ops: usize, seed: u64) -> String {
    let (st, out) = run(args);
    assert!(st.success(), "{args:?} failed:\n{out}");
    assert_eq!(
        totals_line(&out),
        format!("{ops} operations passed, 0 failed (seed {seed})"),
        "{out}"
    );
    out
}

#[test]
fn a_short_run_passes_with_4k_blocks() {
    let args = [
        "exercise",
        "--ops",
        "2000",
        "--seed",
        "11",
        "--block-size",
        "4096",
    ];
    assert_passes(&args, 2000, 11);
}

#[test]
fn a_short_run_passes_with_1k_blocks_and_small_folios() {
    let args = [
        "exercise",
        "--ops",
        "2000",
        "--seed",
        "12",
        "--block-size",
        "1024",
        "--max-folio",
        "64K",
    ];
    assert_passes(&args, 2000, 12);
}

#[test]
fn a_run_with_crashes_recovers_what_was_synced() {
    let args = ["exercise", "--ops", "1000", "--seed", "13", "--crash"];
    let out = assert_passes(&args, 1000, 13);
    assert!(out.contains("crash "), "no crash was run:\n{out}");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let args = ["exercise", "--ops", "800", "--seed", "14"];
    let a = assert_passes(&args, 800, 14);
    let b = assert_passes(&args, 800, 14);
    let counts = |out: &str| {
        out.lines()
            .filter(|l| l.starts_with("clone ") || l.contains("operations passed"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(counts(&a), counts(&b));
    assert_eq!(counts(&a).len(), 2, "{a}");
}

#[test]
fn a_bad_block_size_is_a_usage_error() {
    let (st, out) = run(&["exercise", "--block-size", "3000"]);
    assert_eq!(st.code(), Some(2), "{out}");
    assert!(
        out.contains("block size 3000 is not a power of two"),
        "{out}"
    );
}

/// The numbers in the line that starts with `prefix`.
fn numbers_after(out: &str, prefix: &str) -> Vec<usize> {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{out}"));
    line.split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[test]
fn a_run_with_device_faults_and_crashes_checks_that_failures_are_reported() {
    let args = [
        "exercise",
        "--ops",
        "1500",
        "--seed",
        "16",
        "--faults",
        "--crash",
        "--block-size",
        "1024",
    ];
    let out = assert_passes(&args, 1500, 16);
    let n = numbers_after(&out, "device faults: ");
    // [writes or flushes failed, fsyncs that reported, shutdowns, reads failed, EIO reads]
    assert_eq!(n.len(), 5, "{out}");
    assert!(
        n[0] > 0 && n[1] > 0,
        "no write fault was injected and reported:\n{out}"
    );
    assert!(n[3] > 0, "no read fault was injected:\n{out}");
    assert!(
        numbers_after(&out, "power cuts recovered: ")[0] > 0,
        "{out}"
    );
}

#[test]
fn a_run_on_four_threads_with_crashes_and_faults_passes() {
    let args = [
        "exercise",
        "--ops",
        "2000",
        "--seed",
        "17",
        "--threads",
        "4",
        "--files",
        "8",
        "--crash",
        "--faults",
    ];
    let out = assert_passes(&args, 2000, 17);
    assert!(out.contains("8 files by 4 threads"), "{out}");
}

#[test]
fn more_threads_than_files_is_a_usage_error() {
    let (st, out) = run(&["exercise", "--threads", "5", "--files", "4"]);
    assert!(!st.success(), "{out}");
    assert!(out.contains("no more than files"), "{out}");
}

#[test]
fn a_write_the_device_acknowledges_and_loses_fails_the_run() {
    let cfg = Config {
        faults: true,
        ..Config::default()
    };
    let lost = Fault {
        flush: false,
        nth: 1,
        times: 1,
        kind: FaultKind::Lost,
    };
    let ops = [
        Op::Write {
            f: 0,
            pos: 0,
            len: 65536,
            seed: 1,
        },
        Op::WriteFault {
            f: Some(0),
            fault: lost,
        },
    ];
    let failure = run_ops(&cfg, &ops, &mut || {}).expect_err("a lost write went unnoticed");
    assert_eq!(failure.at, Some(1));
    assert!(
        failure.what.contains("no fsync reported it"),
        "{}",
        failure.what
    );
}

#[test]
fn a_corrupted_model_fails_and_is_shrunk() {
    let (st, out) = run(&[
        "exercise",
        "--ops",
        "2000",
        "--seed",
        "15",
        "--inject-mismatch-at",
        "300",
    ]);
    assert_eq!(st.code(), Some(1), "{out}");
    assert!(out.contains("FAILED (seed 15) at operation"), "{out}");
    assert!(out.contains("1 failed (seed 15)"), "{out}");
    let shrunk: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("shrunk to "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no shrunk list in:\n{out}"));
    assert!(shrunk <= 10, "shrunk only to {shrunk} operations:\n{out}");
    assert!(out.contains("CorruptOracle"), "{out}");
    let listed = out.lines().filter(|l| l.starts_with("  ")).count();
    assert_eq!(listed, shrunk, "{out}");
}

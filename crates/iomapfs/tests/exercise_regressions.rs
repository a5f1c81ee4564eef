//! Operation lists the exercise found failing (in the file system or in the checker itself),
//! kept as tests once fixed.

use iomapfs::exercise::{run_ops, Config, Fault, FaultKind, Op};

fn must_pass(cfg: &Config, ops: &[Op]) {
    if let Err(f) = run_ops(cfg, ops, &mut || {}) {
        panic!("fails at {:?}: {}", f.at, f.what);
    }
}

/// What the runs that found these used: 1 KiB blocks, power cuts and device faults.
fn crashes_and_faults_at_1k() -> Config {
    Config {
        block_size: 1024,
        crash: true,
        faults: true,
        ..Config::default()
    }
}

#[test]
fn regression_blocks_cloned_past_the_logged_size_are_not_left_past_eof_by_recovery() {
    // The clone lands inside the file's size in memory but past its logged size (the copy
    // that grew the file is not written back). A failed log write shuts the file system
    // down; recovery brought back the clone's mapping without a size covering it, and the
    // file's later growth exposed the cloned data where zeros belong.
    let cfg = crashes_and_faults_at_1k();
    let ops = [
        Op::Write {
            f: 3,
            pos: 137912,
            len: 1377,
            seed: 17929689984959747192,
        },
        Op::Truncate { f: 3, size: 605054 },
        Op::CopyFileRange {
            src: 3,
            soff: 50177,
            dst: 0,
            doff: 6881867,
            len: 7057,
        },
        Op::CloneRange {
            src: 3,
            soff: 41984,
            dst: 0,
            doff: 2903040,
            len: 185344,
            to_eof: false,
        },
        Op::Write {
            f: 2,
            pos: 348006,
            len: 185725,
            seed: 14515344417997482910,
        },
        Op::Fsync {
            f: 2,
            datasync: false,
        },
        Op::MappedWrite {
            f: 2,
            pos: 510860,
            len: 7702,
            seed: 14812031081034761676,
        },
        Op::WriteFault {
            f: Some(2),
            fault: Fault {
                flush: false,
                nth: 2,
                times: 3,
                kind: FaultKind::Fail,
            },
        },
        Op::ZeroRange {
            f: 0,
            pos: 3186340,
            len: 246292,
            keep_size: false,
        },
    ];
    must_pass(&cfg, &ops);
}

#[test]
fn regression_a_read_that_fails_part_way_may_return_the_bytes_before_the_failure() {
    // The read's first block was cached and its second was not: the engine returned the
    // cached bytes, as Linux's read does, and the checker had expected all or EIO.
    let cfg = crashes_and_faults_at_1k();
    let ops = [
        Op::Write {
            f: 0,
            pos: 1962748,
            len: 23545,
            seed: 4791517260597774739,
        },
        Op::Write {
            f: 2,
            pos: 136341,
            len: 2944,
            seed: 45524949048607800,
        },
        Op::WriteFault {
            f: Some(2),
            fault: Fault {
                flush: false,
                nth: 1,
                times: 1,
                kind: FaultKind::Short { bytes: 252118 },
            },
        },
        Op::MappedWrite {
            f: 0,
            pos: 1032289,
            len: 680,
            seed: 2983536844732133391,
        },
        Op::DropCaches,
        Op::CopyFileRange {
            src: 0,
            soff: 36859,
            dst: 3,
            doff: 733956,
            len: 111411,
        },
        Op::ReadFault {
            f: 0,
            pos: 148383,
            len: 166,
            nth: 1,
            drop: false,
        },
    ];
    must_pass(&cfg, &ops);
}

#[test]
fn a_mapped_store_past_eof_never_shows_when_the_file_grows() {
    // The store past EOF lands in blocks of the EOF page that lie wholly past EOF, which the
    // mapped write does not dirty; growing the file must not expose it.
    for block_size in [512, 1024, 4096] {
        for grow in [
            Op::Truncate { f: 0, size: 20000 },
            Op::Write {
                f: 0,
                pos: 12000,
                len: 10,
                seed: 3,
            },
            Op::Fallocate {
                f: 0,
                pos: 9000,
                len: 100,
                keep_size: false,
            },
            Op::ZeroRange {
                f: 0,
                pos: 9000,
                len: 100,
                keep_size: false,
            },
        ] {
            let cfg = Config {
                block_size,
                ..Config::default()
            };
            let ops = [
                Op::Write {
                    f: 0,
                    pos: 0,
                    len: 5000,
                    seed: 1,
                },
                Op::MappedWrite {
                    f: 0,
                    pos: 4000,
                    len: 100,
                    seed: 2,
                },
                grow.clone(),
                Op::Read {
                    f: 0,
                    pos: 4900,
                    len: 4000,
                },
            ];
            must_pass(&cfg, &ops);
        }
    }
}

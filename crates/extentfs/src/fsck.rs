//! Checking an image: every invariant of the format, each problem reported in words, with
//! e2fsck's exit status (0 clean, 1 errors fixed, 4 errors left, 8 could not check).
//!
//! fsck reads the newer valid superblock and its checkpoint, compares the free-space and
//! shared-extent tables the checkpoint recorded with what its extents imply, replays the log
//! as mount would (in memory), and then checks the result: extents inside the data area and
//! clear of the checkpoint, reference counts against the extents that make them, free space
//! against everything allocated (nothing both, nothing neither), directory entries against
//! the inodes they name, link counts, reachability of every directory from the root, and
//! sizes against inline data and symlink targets. `--repair` mounts the image (which replays
//! the log and rewrites the checkpoint and both superblock copies), corrects link counts and
//! frees unreachable inodes, and checks again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use iomap_dev::BlockDevice;

use crate::error::{Error, Result};
use crate::format::{self, gaps, Superblock};
use crate::fs::{ExtentFs, MountOptions};
use crate::journal::{self, ReplayStats};
use crate::meta::{Body, Ext, FileType, Ino, Meta, Op, Refs, INLINE_MAX, ROOT_INO};
use crate::rangemap::RangeMap;

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The structure at fault.
    pub structure: &'static str,
    /// What is wrong, in words.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.structure, self.message)
    }
}

/// What fsck found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Problems left.
    pub problems: Vec<Problem>,
    /// Problems repaired.
    pub fixed: Vec<Problem>,
    /// Observations that are not errors (an unclean log, files awaiting freeing).
    pub notes: Vec<String>,
    /// Whether checking could not be done at all (the device could not be read).
    pub operational_error: bool,
    /// Inodes checked.
    pub inodes: u64,
    /// Blocks in use by files.
    pub used_blocks: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// What replaying the log did.
    pub replay: ReplayStats,
}

impl Report {
    /// e2fsck's exit status: 0 no errors, 1 errors corrected, 4 errors left uncorrected,
    /// 8 operational error.
    pub fn exit_code(&self) -> i32 {
        if self.operational_error {
            8
        } else if !self.problems.is_empty() {
            4
        } else if !self.fixed.is_empty() {
            1
        } else {
            0
        }
    }

    /// Whether no problems remain.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && !self.operational_error
    }

    fn problem(&mut self, structure: &'static str, message: impl Into<String>) {
        self.problems.push(Problem {
            structure,
            message: message.into(),
        });
    }
}

/// Checks the image on `dev`; with `repair`, fixes what is safe to fix first.
pub fn fsck(dev: Arc<dyn BlockDevice>, repair: bool) -> Report {
    if repair {
        let before = check(&*dev);
        if before.is_clean() {
            return before;
        }
        let mut report = match do_repair(Arc::clone(&dev), &before) {
            Ok(()) => check(&*dev),
            Err(e) => {
                let mut r = before.clone();
                r.problem("repair", format!("could not repair: {e}"));
                return r;
            }
        };
        for p in &before.problems {
            if !report.problems.contains(p) {
                report.fixed.push(p.clone());
            }
        }
        return report;
    }
    check(&*dev)
}

fn check(dev: &dyn BlockDevice) -> Report {
    let mut r = Report::default();
    if let Err(e) = check_into(dev, &mut r) {
        match e {
            Error::Corrupt { structure, detail } => r.problem(structure, detail),
            Error::Version { .. } => r.problem("superblock", e.to_string()),
            other => {
                r.operational_error = true;
                r.problem("device", other.to_string());
            }
        }
    }
    r
}

fn check_into(dev: &dyn BlockDevice, r: &mut Report) -> Result<()> {
    let sb = journal::read_superblock(dev)?;
    check_superblock_copies(dev, &sb, r);
    let (body, ckpt_blocks) = journal::read_checkpoint(dev, &sb)?;
    let (mut meta, stored) = format::decode_checkpoint(&body, &sb, &ckpt_blocks)?;
    let derived_free: Vec<(u64, u64)> = meta.free.iter().collect();
    if stored.free != derived_free {
        r.problem(
            "free space",
            format!(
                "the checkpoint records {} free blocks in {} extents, its extents leave {} free in {}",
                stored.free.iter().map(|f| f.1).sum::<u64>(),
                stored.free.len(),
                derived_free.iter().map(|f| f.1).sum::<u64>(),
                derived_free.len()
            ),
        );
    }
    let derived_shared: Vec<(u64, u64, u32)> = meta
        .refs
        .iter()
        .filter(|(_, _, c)| c.0 > 1)
        .map(|(s, l, c)| (s, l, c.0))
        .collect();
    if stored.shared != derived_shared {
        r.problem(
            "reference counts",
            format!(
                "the checkpoint records {} shared extents, its files share {}",
                stored.shared.len(),
                derived_shared.len()
            ),
        );
    }
    r.replay = journal::replay(dev, &sb, &mut meta)?;
    if r.replay.records > 0 {
        if let Err(Error::Corrupt { structure, detail }) =
            journal::check_checkpointable(&meta, &sb, &ckpt_blocks)
        {
            r.problem(structure, detail);
        }
    }
    if sb.flags & format::SB_CLEAN == 0 || r.replay.records > 0 {
        r.notes.push(format!(
            "not cleanly unmounted: the log holds {} records ({} operations), applied at the next mount",
            r.replay.records, r.replay.ops
        ));
    }
    check_meta(&meta, &sb, &ckpt_blocks, r);
    Ok(())
}

fn check_superblock_copies(dev: &dyn BlockDevice, best: &Superblock, r: &mut Report) {
    use iomap_dev::{BlockDeviceExt, DevAddr};
    let lbs = dev.logical_block_size() as usize;
    let len = format::SB_LEN.div_ceil(lbs) * lbs;
    for off in format::SB_OFFSETS {
        let mut buf = vec![0u8; len];
        if dev.read_at(DevAddr(off), &mut buf).is_err() {
            r.problem(
                "superblock",
                format!("the copy at byte {off} cannot be read"),
            );
            continue;
        }
        match Superblock::decode(&buf, dev.capacity_bytes()) {
            Ok(sb) => {
                let same_geometry = sb.block_size == best.block_size
                    && sb.total_blocks == best.total_blocks
                    && sb.uuid == best.uuid
                    && sb.data_start == best.data_start;
                if !same_geometry {
                    r.problem(
                        "superblock",
                        format!("the copy at byte {off} describes a different filesystem"),
                    );
                }
            }
            Err(e) => r.problem("superblock", format!("the copy at byte {off}: {e}")),
        }
    }
}

/// Checks the invariants of a replayed metadata state.
fn check_meta(meta: &Meta, sb: &Superblock, ckpt: &[(u64, u64)], r: &mut Report) {
    r.inodes = meta.inodes.len() as u64;
    // Extents: bounds and references.
    let mut refs: RangeMap<Refs> = RangeMap::new();
    let max_blocks = crate::fs::max_file_size(u64::from(sb.block_size)) / u64::from(sb.block_size);
    for (&ino, inode) in &meta.inodes {
        if ino >= meta.next_ino {
            r.problem(
                "inode",
                format!(
                    "inode {ino} is at or past the next inode number {}",
                    meta.next_ino
                ),
            );
        }
        let Body::File(f) = &inode.body else { continue };
        if let Some(inline) = &f.inline {
            let len = inline.read().len() as u64;
            if len > INLINE_MAX as u64 || len > u64::from(sb.block_size) {
                r.problem(
                    "inode",
                    format!("inode {ino} holds {len} bytes inline, more than allowed"),
                );
            }
            if len != inode.attr.size {
                r.problem(
                    "inode",
                    format!(
                        "inode {ino} has size {} but {len} bytes of inline data",
                        inode.attr.size
                    ),
                );
            }
            if !f.map.is_empty() {
                r.problem(
                    "inode",
                    format!("inode {ino} has both inline data and extents"),
                );
            }
            continue;
        }
        for (s, l, x) in f.map.iter() {
            let Some(b) = x.block() else {
                r.problem(
                    "extent",
                    format!("inode {ino} has a reservation on disk at file block {s}"),
                );
                continue;
            };
            if s.saturating_add(l) > max_blocks {
                r.problem(
                    "extent",
                    format!("inode {ino} maps file blocks {s}+{l}, past the largest file"),
                );
            }
            if b < sb.data_start || b.saturating_add(l) > sb.total_blocks {
                r.problem(
                    "extent",
                    format!("inode {ino} maps to device blocks {b}+{l}, outside the data area"),
                );
                continue;
            }
            for &(cs, cl) in ckpt {
                if b < cs + cl && cs < b + l {
                    r.problem(
                        "extent",
                        format!(
                            "inode {ino} maps to device blocks {b}+{l}, which hold the checkpoint"
                        ),
                    );
                }
            }
            if matches!(x, Ext::Written(_) | Ext::Unwritten(_)) {
                add_ref(&mut refs, b, l);
            }
        }
    }
    let want: Vec<(u64, u64, u32)> = refs.iter().map(|(s, l, c)| (s, l, c.0)).collect();
    let have: Vec<(u64, u64, u32)> = meta.refs.iter().map(|(s, l, c)| (s, l, c.0)).collect();
    if want != have {
        r.problem(
            "reference counts",
            "the reference counts do not match the extents that make them",
        );
    }
    // Free space against allocated extents and the checkpoint.
    let mut used: Vec<(u64, u64)> = refs.iter().map(|(s, l, _)| (s, l)).collect();
    used.extend_from_slice(ckpt);
    used.sort_unstable();
    let expect_free = gaps(sb.data_start, sb.total_blocks, &used);
    let free: Vec<(u64, u64)> = meta.free.iter().collect();
    r.used_blocks = refs.iter().map(|(_, l, _)| l).sum();
    r.free_blocks = free.iter().map(|f| f.1).sum();
    if free != expect_free {
        let leaked = expect_free
            .iter()
            .map(|f| f.1)
            .sum::<u64>()
            .saturating_sub(r.free_blocks);
        r.problem(
            "free space",
            format!("free space disagrees with the allocated extents ({} free, {} expected; {leaked} blocks leaked)", r.free_blocks, expect_free.iter().map(|f| f.1).sum::<u64>()),
        );
    }
    // Namespace.
    match meta.inodes.get(&ROOT_INO) {
        Some(i) if i.attr.kind == FileType::Dir => {}
        _ => r.problem("directory", "the root directory is missing"),
    }
    let mut links: BTreeMap<Ino, u32> = BTreeMap::new();
    let mut subdirs: BTreeMap<Ino, u32> = BTreeMap::new();
    let mut dir_parents: BTreeMap<Ino, Vec<Ino>> = BTreeMap::new();
    for (&dir, inode) in &meta.inodes {
        let Body::Dir { entries, .. } = &inode.body else {
            continue;
        };
        for (name, de) in entries {
            let shown = String::from_utf8_lossy(name);
            match meta.inodes.get(&de.ino) {
                None => r.problem(
                    "directory",
                    format!(
                        "directory {dir} entry {shown:?} names missing inode {}",
                        de.ino
                    ),
                ),
                Some(child) if child.attr.kind != de.kind => r.problem(
                    "directory",
                    format!(
                        "directory {dir} entry {shown:?} says {:?}, inode {} is {:?}",
                        de.kind, de.ino, child.attr.kind
                    ),
                ),
                Some(_) => {}
            }
            *links.entry(de.ino).or_default() += 1;
            if de.kind == FileType::Dir {
                *subdirs.entry(dir).or_default() += 1;
                dir_parents.entry(de.ino).or_default().push(dir);
            }
            if de.ino == ROOT_INO {
                r.problem("directory", format!("directory {dir} links to the root"));
            }
        }
    }
    for (&ino, inode) in &meta.inodes {
        let a = &inode.attr;
        let n = links.get(&ino).copied().unwrap_or(0);
        match a.kind {
            FileType::Dir => {
                let expect = 2 + subdirs.get(&ino).copied().unwrap_or(0);
                if ino != ROOT_INO && n > 1 {
                    r.problem("directory", format!("directory {ino} has {n} names"));
                }
                if ino != ROOT_INO && n == 0 && a.nlink > 0 {
                    r.problem("directory", format!("directory {ino} is in no directory"));
                } else if a.nlink != expect && !(n == 0 && a.nlink == 0) {
                    r.problem(
                        "link count",
                        format!(
                            "directory {ino} has link count {}, should be {expect}",
                            a.nlink
                        ),
                    );
                }
            }
            _ => {
                if n == 0 && a.nlink == 0 {
                    r.notes.push(format!(
                        "inode {ino} was unlinked while open; the next mount frees it"
                    ));
                } else if n == 0 {
                    r.problem(
                        "inode",
                        format!("inode {ino} ({:?}) is in no directory", a.kind),
                    );
                } else if a.nlink != n {
                    r.problem(
                        "link count",
                        format!("inode {ino} has link count {}, should be {n}", a.nlink),
                    );
                }
            }
        }
        if let Body::Symlink(t) = &inode.body {
            if a.size != t.len() as u64 {
                r.problem(
                    "inode",
                    format!(
                        "symlink {ino} has size {} but a target of {} bytes",
                        a.size,
                        t.len()
                    ),
                );
            }
        }
    }
    // Every directory reaches the root through its parents.
    for &dir in dir_parents.keys() {
        let mut at = dir;
        let mut seen = BTreeSet::new();
        while at != ROOT_INO {
            if !seen.insert(at) {
                r.problem(
                    "directory",
                    format!("directory {dir} is in a loop, cut off from the root"),
                );
                break;
            }
            match dir_parents.get(&at).and_then(|p| p.first()) {
                Some(&p) => at = p,
                None => break,
            }
        }
    }
}

fn add_ref(refs: &mut RangeMap<Refs>, b: u64, n: u64) {
    let pieces: Vec<(u64, u64, Refs)> = refs.range(b, b + n).collect();
    let mut at = b;
    let mut todo = Vec::new();
    for (s, l, c) in pieces {
        if s > at {
            todo.push((at, s - at, 1));
        }
        todo.push((s, l, c.0 + 1));
        at = s + l;
    }
    if at < b + n {
        todo.push((at, b + n - at, 1));
    }
    for (s, l, c) in todo {
        refs.insert(s, l, Refs(c));
    }
}

/// Mounts (replaying the log and rewriting the checkpoint and superblocks), corrects link
/// counts, frees inodes that no directory names, and unmounts.
fn do_repair(dev: Arc<dyn BlockDevice>, before: &Report) -> Result<()> {
    let _ = before;
    let fs = ExtentFs::mount(
        dev,
        MountOptions {
            commit_interval: None,
            ..MountOptions::default()
        },
    )?;
    fs.shared.txn(|t| {
        let meta = t.meta();
        let mut names: BTreeMap<Ino, u32> = BTreeMap::new();
        let mut subdirs: BTreeMap<Ino, u32> = BTreeMap::new();
        for (&dir, inode) in &meta.inodes {
            if let Body::Dir { entries, .. } = &inode.body {
                for de in entries.values() {
                    *names.entry(de.ino).or_default() += 1;
                    if de.kind == FileType::Dir {
                        *subdirs.entry(dir).or_default() += 1;
                    }
                }
            }
        }
        let mut ops = Vec::new();
        for (&ino, inode) in &meta.inodes {
            let n = names.get(&ino).copied().unwrap_or(0);
            let mut a = inode.attr;
            if ino != ROOT_INO && n == 0 {
                ops.push(Op::Free { ino });
                continue;
            }
            a.nlink = if a.kind == FileType::Dir {
                2 + subdirs.get(&ino).copied().unwrap_or(0)
            } else {
                n
            };
            if a.nlink != inode.attr.nlink {
                ops.push(Op::SetAttr { ino, attr: a });
            }
        }
        for op in ops {
            t.op(op)?;
        }
        Ok(())
    })?;
    fs.unmount()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::fs::{mkfs, MkfsOptions};
    use crate::meta::Target;
    use iomap_dev::MemDevice;

    fn image() -> (Arc<dyn BlockDevice>, Arc<ExtentFs>) {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(16 << 20));
        mkfs(Arc::clone(&dev), &MkfsOptions::default()).unwrap();
        let opts = MountOptions {
            commit_interval: None,
            ..MountOptions::default()
        };
        let fs = ExtentFs::mount(Arc::clone(&dev), opts).unwrap();
        let d = fs.mkdir(ROOT_INO, b"dir", 0o755, 0, 0).unwrap();
        let f = fs.create(d.ino, b"file", 0o644, 0, 0).unwrap();
        fs.write(f.ino, 0, &vec![7u8; 100_000]).unwrap();
        fs.symlink(ROOT_INO, b"link", b"dir/file", 0, 0).unwrap();
        fs.syncfs().unwrap();
        (dev, fs)
    }

    /// Logs `op` as if a buggy transaction had, and leaves the image as a power loss would.
    fn break_with(fs: &ExtentFs, op: Op) {
        fs.shared.txn(|t| t.op(op)).unwrap();
        fs.shared.commit().unwrap();
        fs.abandon();
    }

    #[test]
    fn a_clean_image_checks_clean() {
        let (dev, fs) = image();
        fs.unmount().unwrap();
        let r = fsck(dev, false);
        assert!(r.is_clean(), "{:?}", r.problems);
        assert_eq!(r.exit_code(), 0);
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        assert_eq!(r.inodes, 4);
        assert!(r.used_blocks >= 100_000 / 4096);
    }

    #[test]
    fn an_unclean_log_is_a_note_not_a_problem() {
        let (dev, fs) = image();
        fs.abandon();
        let r = fsck(dev, false);
        assert!(r.is_clean(), "{:?}", r.problems);
        assert!(r.replay.records > 0);
        assert!(
            r.notes[0].contains("not cleanly unmounted"),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn a_wrong_link_count_is_reported_and_repaired() {
        let (dev, fs) = image();
        let ino = fs.lookup(ROOT_INO, b"link").unwrap().ino;
        let mut attr = fs.shared.state.lock().meta.inode(ino).unwrap().attr;
        attr.nlink = 3;
        break_with(&fs, Op::SetAttr { ino, attr });
        let r = fsck(Arc::clone(&dev), false);
        assert_eq!(r.exit_code(), 4);
        assert!(
            r.problems
                .iter()
                .any(|p| p.structure == "link count" && p.message.contains("should be 1")),
            "{:?}",
            r.problems
        );
        let r = fsck(Arc::clone(&dev), true);
        assert_eq!(r.exit_code(), 1, "{:?}", r.problems);
        assert_eq!(r.fixed.len(), 1);
        assert_eq!(fsck(dev, false).exit_code(), 0);
    }

    #[test]
    fn an_entry_naming_a_missing_inode_is_reported() {
        let (dev, fs) = image();
        let dir = fs.lookup(ROOT_INO, b"dir").unwrap().ino;
        break_with(
            &fs,
            Op::DirAdd {
                dir,
                name: b"ghost".to_vec(),
                ino: 999,
                kind: FileType::File,
            },
        );
        let r = fsck(dev, false);
        assert!(
            r.problems
                .iter()
                .any(|p| p.message.contains("missing inode 999")),
            "{:?}",
            r.problems
        );
        assert_eq!(r.exit_code(), 4);
    }

    #[test]
    fn blocks_shared_through_the_log_keep_counts_consistent() {
        let (dev, fs) = image();
        let file = fs
            .lookup(fs.lookup(ROOT_INO, b"dir").unwrap().ino, b"file")
            .unwrap()
            .ino;
        let first = {
            let st = fs.shared.state.lock();
            let f = st.meta.inode(file).unwrap().file().unwrap();
            f.map.lookup(0).unwrap().2.block().unwrap()
        };
        let other = fs.create(ROOT_INO, b"other", 0o644, 0, 0).unwrap().ino;
        fs.shared
            .txn(|t| {
                t.op(Op::SetInline {
                    ino: other,
                    data: None,
                })
            })
            .unwrap();
        break_with(
            &fs,
            Op::Map {
                ino: other,
                lblk: 0,
                len: 1,
                to: Target::Written(first),
            },
        );
        // Shared blocks are legal (reflink); fsck must agree the counts match the extents.
        let r = fsck(dev, false);
        assert!(r.is_clean(), "{:?}", r.problems);
    }

    #[test]
    fn a_file_in_no_directory_is_reported_and_freed_by_repair() {
        let (dev, fs) = image();
        let ino = fs.create(ROOT_INO, b"lost", 0o644, 0, 0).unwrap().ino;
        break_with(
            &fs,
            Op::DirRemove {
                dir: ROOT_INO,
                name: b"lost".to_vec(),
            },
        );
        let r = fsck(Arc::clone(&dev), false);
        assert!(
            r.problems
                .iter()
                .any(|p| p.message == format!("inode {ino} (File) is in no directory")),
            "{:?}",
            r.problems
        );
        let r = fsck(Arc::clone(&dev), true);
        assert_eq!(r.exit_code(), 1, "{:?}", r.problems);
        assert!(fsck(dev, false).is_clean());
    }

    #[test]
    fn free_space_overlapping_a_file_and_leaked_blocks_are_reported() {
        let sb = Superblock {
            version: format::VERSION,
            uuid: [0; 16],
            generation: 1,
            block_size: 4096,
            flags: 0,
            total_blocks: 1000,
            log_start: 32,
            log_blocks: 68,
            data_start: 100,
            ckpt_block: 100,
            ckpt_nblocks: 1,
            ckpt_bytes: 10,
            ckpt_crc: 0,
        };
        let mut meta = Meta::new(4096, 100, 1000);
        let (mut freed, mut un) = (Vec::new(), 0);
        let root = crate::meta::Attr::new(FileType::Dir, 0o755, 0, 0);
        meta.apply(
            &Op::Create {
                ino: ROOT_INO,
                attr: root,
                target: Vec::new(),
            },
            &mut freed,
            &mut un,
        )
        .unwrap();
        meta.free.free(101, 899).unwrap();
        let mut r = Report::default();
        check_meta(&meta, &sb, &[(100, 1)], &mut r);
        assert!(r.is_clean(), "{:?}", r.problems);
        // A file's extent over free space.
        let attr = crate::meta::Attr::new(FileType::File, 0o644, 0, 0);
        meta.apply(
            &Op::Create {
                ino: 2,
                attr,
                target: Vec::new(),
            },
            &mut freed,
            &mut un,
        )
        .unwrap();
        meta.apply(
            &Op::DirAdd {
                dir: ROOT_INO,
                name: b"f".to_vec(),
                ino: 2,
                kind: FileType::File,
            },
            &mut freed,
            &mut un,
        )
        .unwrap();
        meta.apply(&Op::SetInline { ino: 2, data: None }, &mut freed, &mut un)
            .unwrap();
        meta.apply(
            &Op::Map {
                ino: 2,
                lblk: 0,
                len: 10,
                to: Target::Written(200),
            },
            &mut freed,
            &mut un,
        )
        .unwrap();
        meta.free.free(200, 5).unwrap();
        let mut r = Report::default();
        check_meta(&meta, &sb, &[(100, 1)], &mut r);
        assert!(
            r.problems.iter().any(|p| p.structure == "free space"),
            "{:?}",
            r.problems
        );
        // Blocks neither free nor used.
        meta.free.take(200, 5).unwrap();
        meta.free.take(500, 3).unwrap();
        let mut r = Report::default();
        check_meta(&meta, &sb, &[(100, 1)], &mut r);
        assert!(
            r.problems
                .iter()
                .any(|p| p.message.contains("3 blocks leaked")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn an_unreadable_image_is_an_operational_error_or_a_problem() {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(1 << 20));
        let r = fsck(dev, false);
        assert_eq!(r.exit_code(), 4);
        assert_eq!(r.problems[0].structure, "superblock");
        assert!(
            r.problems[0].message.contains("not an extentfs image"),
            "{:?}",
            r.problems
        );
    }
}

//! The `image` target: a damaged image, mounted, used, unmounted and checked.
//!
//! The input is a compact description, not an image: its first byte picks the base image's
//! block size (`base.rs`), and the rest is a list of patches. A patch is a kind byte, a
//! little-endian u16 offset, a length byte and that many bytes:
//!
//! | kind & 7 | what it changes |
//! | --- | --- |
//! | 0 | superblock copy `(kind >> 3) & 1`, at `offset % 128`; its checksum is fixed unless bit 7 is set |
//! | 1 | the current checkpoint's body, at `offset % (len + 1)` (cut there first if bit 6 is set); the chain and the superblock's length and checksum follow |
//! | 2 | log record `(kind >> 3) & 3`'s payload likewise (a record just past the last is added); the record is re-checksummed |
//! | 3 | log record `(kind >> 3) & 3`'s operation count, set to `offset` |
//! | 4 | block `(kind >> 3) & 15` of the current chain, at `offset % bs`; re-checksummed unless bit 7 is set |
//! | 5, 6, 7 | raw device bytes at `offset * 16` (modulo the device size), nothing fixed |
//!
//! Patches that keep checksums right reach what the checksums protect: geometry checks,
//! checkpoint decoding, and replay. Then: fsck must not panic; mount must not panic, and a
//! mount that succeeds must survive walking the tree, reading every file, writing, creating,
//! syncing and unmounting, and an image that mounted and unmounted cleanly must mount again;
//! fsck with repair must not panic either.

use std::collections::BTreeSet;
use std::sync::Arc;

use extentfs::format::{self, HDR_LEN, SB_LEN, SB_OFFSETS};
use extentfs::fuzzing;
use extentfs::{fsck, ExtentFs, FileType, Ino, MountOptions, Whence, ROOT_INO};
use iomap_dev::{BlockDevice, BlockDeviceExt, DevAddr, MemDevice};

use crate::base::{Geometry, GENERATION};

/// Most patches an input applies.
const MAX_PATCHES: usize = 64;
/// Most inodes the walk after mounting visits.
const MAX_VISITS: usize = 64;

/// The description of a damaged image.
pub struct Image {
    g: Geometry,
    sb_patches: Vec<(usize, usize, Vec<u8>, bool)>,
    body: Vec<u8>,
    records: Vec<(u32, Vec<u8>)>,
    chain_patches: Vec<(usize, usize, Vec<u8>, bool)>,
    raw: Vec<(u64, Vec<u8>)>,
}

/// Writes `bytes` into `v` at `at`, growing it as needed.
fn splice(v: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    let end = at + bytes.len();
    if v.len() < end {
        v.resize(end, 0);
    }
    v[at..end].copy_from_slice(bytes);
}

fn fix_crc(buf: &mut [u8], at: usize) {
    buf[at..at + 4].fill(0);
    let crc = crc32c::crc32c(buf);
    buf[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

impl Image {
    /// The base image of the block size `data[0]` picks with the patches the rest describes.
    pub fn parse(data: &[u8]) -> Option<Image> {
        let (&first, mut rest) = data.split_first()?;
        let g = Geometry::from_byte(first);
        let records = g
            .log_records()
            .iter()
            .map(|ops| (ops.len() as u32, fuzzing::encode_ops(ops)))
            .collect();
        let mut img = Image {
            g,
            sb_patches: Vec::new(),
            body: g.body(GENERATION),
            records,
            chain_patches: Vec::new(),
            raw: Vec::new(),
        };
        let chain_bytes = g.chain(GENERATION).1 as usize * g.per_block();
        for _ in 0..MAX_PATCHES {
            let [kind, lo, hi, n, ..] = *rest else {
                break;
            };
            let offset = usize::from(u16::from_le_bytes([lo, hi]));
            let end = (4 + usize::from(n)).min(rest.len());
            let bytes = &rest[4..end];
            rest = &rest[end..];
            let sub = usize::from(kind >> 3);
            let (cut, unfixed) = (kind & 0x40 != 0, kind & 0x80 != 0);
            match kind & 7 {
                0 => img
                    .sb_patches
                    .push((sub & 1, offset % SB_LEN, bytes.to_vec(), !unfixed)),
                1 => {
                    let at = offset % (img.body.len() + 1);
                    if cut {
                        img.body.truncate(at);
                    }
                    splice(&mut img.body, at, bytes);
                    img.body.truncate(chain_bytes);
                }
                2 => {
                    let r = sub & 3;
                    if r == img.records.len() {
                        img.records.push((0, Vec::new()));
                    }
                    if let Some((_, payload)) = img.records.get_mut(r) {
                        let at = offset % (payload.len() + 1);
                        if cut {
                            payload.truncate(at);
                        }
                        splice(payload, at, bytes);
                    }
                }
                3 => {
                    if let Some((nops, _)) = img.records.get_mut(sub & 3) {
                        *nops = offset as u32;
                    }
                }
                4 => img.chain_patches.push((
                    sub & 15,
                    offset % g.block_size as usize,
                    bytes.to_vec(),
                    !unfixed,
                )),
                _ => img.raw.push((offset as u64 * 16, bytes.to_vec())),
            }
        }
        Some(img)
    }

    /// Lays the image out on a memory device.
    pub fn device(&self) -> Arc<dyn BlockDevice> {
        let g = self.g;
        let bs = g.block_size as usize;
        let cap = g.capacity_bytes();
        let dev = MemDevice::new(cap);
        let write = |at: u64, buf: &[u8]| {
            dev.write_at(DevAddr(at), buf)
                .unwrap_or_else(|e| panic!("writing the memory device: {e}"));
        };
        // File data: a pattern, so reads see something other than zeros.
        let data: Vec<u8> = (0..g.written_blocks().count() * bs)
            .map(|i| (i as u8).wrapping_mul(7) ^ (i / bs) as u8)
            .collect();
        write(g.written_blocks().start * g.bs(), &data);
        // Both checkpoints, the older one intact in what the newer leaves free.
        let mut sbs = Vec::new();
        for generation in [GENERATION - 1, GENERATION] {
            let body = if generation == GENERATION {
                self.body.clone()
            } else {
                g.body(generation)
            };
            let (start, len) = g.chain(generation);
            let blocks: Vec<u64> = (start..start + len).collect();
            let mut images = format::encode_checkpoint_blocks(&body, generation, &blocks, bs);
            if generation == GENERATION {
                for (i, at, bytes, fix) in &self.chain_patches {
                    let Some(block) = images.get_mut(*i) else {
                        continue;
                    };
                    let n = bytes.len().min(bs - at);
                    block[*at..at + n].copy_from_slice(&bytes[..n]);
                    if *fix {
                        fix_crc(block, 4);
                    }
                }
            }
            write(start * g.bs(), &images.concat());
            sbs.push(g.superblock(generation, &body));
        }
        // The current superblock goes to slot generation % 2, as the writer puts it.
        let mut slots = [Vec::new(), Vec::new()];
        for sb in &sbs {
            slots[(sb.generation % 2) as usize] = sb.encode();
        }
        for (slot, at, bytes, fix) in &self.sb_patches {
            let buf = &mut slots[*slot];
            let n = bytes.len().min(SB_LEN - at);
            buf[*at..at + n].copy_from_slice(&bytes[..n]);
            if *fix {
                fix_crc(&mut buf[..SB_LEN], 12);
            }
        }
        for (slot, mut buf) in slots.into_iter().enumerate() {
            buf.resize(512, 0);
            write(SB_OFFSETS[slot], &buf);
        }
        // The log: records back to back while they fit.
        let mut log = Vec::new();
        for (seq, (nops, payload)) in self.records.iter().enumerate() {
            let rec = format::encode_log_record(
                &crate::base::UUID,
                GENERATION,
                seq as u64,
                *nops,
                payload,
                bs,
            );
            if log.len() + rec.len() > g.log_blocks() as usize * bs {
                break;
            }
            log.extend_from_slice(&rec);
        }
        write(g.log_start() * g.bs(), &log);
        for (at, bytes) in &self.raw {
            let at = at % cap;
            let n = bytes.len().min((cap - at) as usize);
            let mut buf = vec![0u8; 512 * 3];
            let base = at / 512 * 512;
            let span = ((at + n as u64).div_ceil(512) * 512 - base) as usize;
            let buf = &mut buf[..span];
            dev.read_at(DevAddr(base), buf)
                .unwrap_or_else(|e| panic!("reading the memory device: {e}"));
            let off = (at - base) as usize;
            buf[off..off + n].copy_from_slice(&bytes[..n]);
            write(base, buf);
        }
        Arc::new(dev)
    }
}

fn mount_options() -> MountOptions {
    MountOptions {
        commit_interval: None,
        ..MountOptions::default()
    }
}

/// Builds the image `data` describes, then checks, mounts, uses, unmounts and repairs it.
pub fn run(data: &[u8]) {
    let Some(img) = Image::parse(data) else {
        return;
    };
    let dev = img.device();
    let _ = fsck::fsck(Arc::clone(&dev), false);
    if let Ok(fs) = ExtentFs::mount(Arc::clone(&dev), mount_options()) {
        use_filesystem(&fs, img.g.bs());
        if fs.unmount().is_ok() {
            // What one mount accepted and unmounted cleanly, the next must accept too: it
            // reads the checkpoint the first one wrote.
            drop(fs);
            let again = ExtentFs::mount(Arc::clone(&dev), mount_options()).unwrap_or_else(|e| {
                panic!("an image that mounted and unmounted cleanly does not mount again: {e}")
            });
            let _ = again.unmount();
        }
    }
    let _ = fsck::fsck(dev, true);
}

/// Walks the tree from the root, reads what it finds, then changes a little and syncs.
fn use_filesystem(fs: &ExtentFs, bs: u64) {
    let mut seen = BTreeSet::new();
    let mut todo = vec![ROOT_INO];
    let mut files: Vec<Ino> = Vec::new();
    while let Some(ino) = todo.pop() {
        if seen.len() >= MAX_VISITS || !seen.insert(ino) {
            continue;
        }
        let Ok(st) = fs.getattr(ino) else {
            continue;
        };
        if let Ok(names) = fs.listxattr(ino) {
            for name in names {
                let _ = fs.getxattr(ino, &name);
            }
        }
        match st.kind {
            FileType::Dir => {
                for e in fs.readdir(ino, 0).unwrap_or_default() {
                    let _ = fs.lookup(ino, &e.name);
                    todo.push(e.ino);
                }
            }
            FileType::File => {
                files.push(ino);
                let mut buf = vec![0u8; 2 * bs as usize];
                let _ = fs.read(ino, 0, &mut buf);
                let _ = fs.read(ino, st.size.saturating_sub(1), &mut buf);
                let _ = fs.lseek(ino, 0, Whence::Data);
                let _ = fs.lseek(ino, 0, Whence::Hole);
            }
            FileType::Symlink => {
                let _ = fs.readlink(ino);
            }
            _ => {}
        }
    }
    if let Some(&ino) = files.first() {
        let _ = fs.write(ino, bs / 2, &[0xa5; 100]);
        let _ = fs.truncate(ino, bs * 3 / 2);
    }
    if let Ok(st) = fs.create(ROOT_INO, b"fuzz-new", 0o644, 0, 0) {
        let _ = fs.write(st.ino, 0, &vec![0x5a; bs as usize + 1]);
    }
    let _ = fs.statfs();
    let _ = fs.syncfs();
}

/// A description with no patches: the undamaged base image of block size `BLOCK_SIZES[i]`.
pub fn undamaged(i: u8) -> Vec<u8> {
    vec![i]
}

/// The bytes of the header of a patch; `bytes` follow it.
pub fn patch(kind: u8, offset: u16, bytes: &[u8]) -> Vec<u8> {
    let mut p = vec![kind];
    p.extend_from_slice(&offset.to_le_bytes());
    p.push(bytes.len() as u8);
    p.extend_from_slice(bytes);
    p
}

/// Byte offset of a field in a chain block header, for seeds.
pub const CHAIN_NEXT_OFFSET: u16 = (HDR_LEN - 8) as u16;

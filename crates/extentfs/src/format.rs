//! The on-disk format (drawn byte by byte in `docs/format.md`): superblocks, log records and
//! checkpoints, and how the metadata state is encoded into a checkpoint.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::codec::{Dec, Enc};
use crate::error::{Error, Result};
use crate::meta::{
    Attr, Body, Dirent, Ext, FileData, FileType, Ino, Inode, Meta, Refs, INLINE_MAX, NAME_MAX,
    ROOT_INO, SYMLINK_MAX, XATTR_NAME_MAX, XATTR_VALUE_MAX,
};
use crate::rangemap::RangeMap;

/// Superblock magic.
pub const SB_MAGIC: &[u8; 8] = b"EXTENTFS";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of a superblock that carry data (the rest of its slot is zero).
pub const SB_LEN: usize = 128;
/// Byte offsets of the two superblock copies.
pub const SB_OFFSETS: [u64; 2] = [0, 64 << 10];
/// Where the log starts, in bytes: after both superblock slots.
pub const LOG_OFFSET: u64 = 128 << 10;
/// Smallest and largest block size.
pub const MIN_BLOCK: u32 = 512;
/// Largest block size.
pub const MAX_BLOCK: u32 = 64 << 10;
/// Superblock flag: unmounted cleanly, nothing in the log.
pub const SB_CLEAN: u32 = 1;

/// Log record magic, "EXLG".
pub const LOG_MAGIC: u32 = 0x474c_5845;
/// Checkpoint block magic, "EXCK".
pub const CKPT_MAGIC: u32 = 0x4b43_5845;
/// Header bytes of a log record and of a checkpoint block.
pub const HDR_LEN: usize = 32;

/// A superblock: where everything is, and which checkpoint is current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Format version.
    pub version: u32,
    /// Identifies this filesystem; log records carry it so another's cannot be replayed.
    pub uuid: [u8; 16],
    /// Counts checkpoints; the copy with the higher valid generation wins, and log records
    /// belong to the checkpoint whose generation they carry.
    pub generation: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// `SB_CLEAN` when unmounted cleanly.
    pub flags: u32,
    /// Blocks on the device.
    pub total_blocks: u64,
    /// First log block.
    pub log_start: u64,
    /// Log blocks.
    pub log_blocks: u64,
    /// First data block.
    pub data_start: u64,
    /// First block of the checkpoint chain.
    pub ckpt_block: u64,
    /// Blocks in the checkpoint chain.
    pub ckpt_nblocks: u64,
    /// Bytes of checkpoint body.
    pub ckpt_bytes: u64,
    /// CRC32C of the checkpoint body.
    pub ckpt_crc: u32,
}

fn crc_with_hole(buf: &[u8], at: usize) -> u32 {
    let c = crc32c::crc32c(&buf[..at]);
    let c = crc32c::crc32c_append(c, &[0; 4]);
    crc32c::crc32c_append(c, &buf[at + 4..])
}

impl Superblock {
    /// Encodes into `SB_LEN` bytes with its checksum.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.0.extend_from_slice(SB_MAGIC);
        e.u32(self.version);
        e.u32(0);
        e.0.extend_from_slice(&self.uuid);
        e.u64(self.generation);
        e.u32(self.block_size);
        e.u32(self.flags);
        for v in [
            self.total_blocks,
            self.log_start,
            self.log_blocks,
            self.data_start,
            self.ckpt_block,
            self.ckpt_nblocks,
            self.ckpt_bytes,
        ] {
            e.u64(v);
        }
        e.u32(self.ckpt_crc);
        e.0.resize(SB_LEN, 0);
        let crc = crc_with_hole(&e.0, 12);
        e.0[12..16].copy_from_slice(&crc.to_le_bytes());
        e.0
    }

    /// Decodes and checks a superblock copy: magic, checksum, version, geometry.
    pub fn decode(buf: &[u8], capacity: u64) -> Result<Self> {
        let mut d = Dec::new(buf, "superblock");
        if buf.len() < SB_LEN {
            return Err(d.err(format!("only {} bytes", buf.len())));
        }
        if &buf[..8] != SB_MAGIC {
            return Err(d.err("wrong magic: not an extentfs image"));
        }
        let stored = u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]);
        let crc = crc_with_hole(&buf[..SB_LEN], 12);
        if stored != crc {
            return Err(d.err(format!("checksum {stored:#x} does not match {crc:#x}")));
        }
        d.u64()?;
        let version = d.u32()?;
        if version != VERSION {
            return Err(Error::Version {
                found: version,
                supported: VERSION,
            });
        }
        d.u32()?;
        let mut uuid = [0u8; 16];
        for b in &mut uuid {
            *b = d.u8()?;
        }
        let sb = Superblock {
            version,
            uuid,
            generation: d.u64()?,
            block_size: d.u32()?,
            flags: d.u32()?,
            total_blocks: d.u64()?,
            log_start: d.u64()?,
            log_blocks: d.u64()?,
            data_start: d.u64()?,
            ckpt_block: d.u64()?,
            ckpt_nblocks: d.u64()?,
            ckpt_bytes: d.u64()?,
            ckpt_crc: d.u32()?,
        };
        sb.check(capacity)
            .map_err(|detail| Error::corrupt("superblock", detail))?;
        Ok(sb)
    }

    fn check(&self, capacity: u64) -> std::result::Result<(), String> {
        let bs = self.block_size;
        if !(MIN_BLOCK..=MAX_BLOCK).contains(&bs) || !bs.is_power_of_two() {
            return Err(format!("block size {bs}"));
        }
        let bs = u64::from(bs);
        let dev_blocks = capacity / bs;
        if self.total_blocks > dev_blocks {
            return Err(format!(
                "{} blocks, but the device holds {dev_blocks}: the image is truncated",
                self.total_blocks
            ));
        }
        if self.log_start.checked_mul(bs) != Some(LOG_OFFSET.max(2 * bs)) {
            return Err(format!("log at block {}", self.log_start));
        }
        if self.log_blocks < 2
            || self.log_start.checked_add(self.log_blocks) != Some(self.data_start)
        {
            return Err(format!(
                "log of {} blocks ending at {}",
                self.log_blocks, self.data_start
            ));
        }
        if self.data_start >= self.total_blocks {
            return Err(format!(
                "data starts at block {}, past the end",
                self.data_start
            ));
        }
        let ck_ok = self.ckpt_block >= self.data_start
            && self.ckpt_block < self.total_blocks
            && self.ckpt_nblocks >= 1
            && self.ckpt_nblocks <= self.total_blocks - self.data_start
            && self.ckpt_bytes <= self.ckpt_nblocks * (bs - HDR_LEN as u64);
        if !ck_ok {
            return Err(format!(
                "checkpoint at block {} ({} blocks, {} bytes) is out of bounds",
                self.ckpt_block, self.ckpt_nblocks, self.ckpt_bytes
            ));
        }
        Ok(())
    }
}

/// Where the log starts for a block size, in blocks.
pub fn log_start(block_size: u32) -> u64 {
    LOG_OFFSET.max(2 * u64::from(block_size)) / u64::from(block_size)
}

/// A block-aligned log record holding `payload` (encoded ops).
pub fn encode_log_record(
    uuid: &[u8; 16],
    epoch: u64,
    seq: u64,
    nops: u32,
    payload: &[u8],
    block_size: usize,
) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(LOG_MAGIC);
    e.u32(0);
    e.u64(epoch ^ u64::from_le_bytes(uuid[..8].try_into().unwrap_or_default()));
    e.u64(seq);
    e.u32(payload.len() as u32);
    e.u32(nops);
    e.0.extend_from_slice(payload);
    let len = e.0.len().div_ceil(block_size) * block_size;
    let crc = crc_with_hole(&e.0, 4);
    e.0[4..8].copy_from_slice(&crc.to_le_bytes());
    e.0.resize(len, 0);
    e.0
}

/// A log record header that passed its first checks.
pub struct LogHeader {
    /// Sequence number.
    pub seq: u64,
    /// Payload bytes.
    pub payload_len: usize,
    /// Ops in the payload.
    pub nops: u32,
}

/// Checks whether `first_block` starts a record of this epoch; `None` means the log ends
/// here (stale, torn or never written).
pub fn log_header(first_block: &[u8], uuid: &[u8; 16], epoch: u64) -> Option<LogHeader> {
    let mut d = Dec::new(first_block, "log record");
    if d.u32().ok()? != LOG_MAGIC {
        return None;
    }
    d.u32().ok()?;
    let tag = epoch ^ u64::from_le_bytes(uuid[..8].try_into().ok()?);
    if d.u64().ok()? != tag {
        return None;
    }
    Some(LogHeader {
        seq: d.u64().ok()?,
        payload_len: d.u32().ok()? as usize,
        nops: d.u32().ok()?,
    })
}

/// Whether a whole record (header block first) has an intact checksum.
pub fn log_record_intact(record: &[u8], payload_len: usize) -> bool {
    let n = HDR_LEN + payload_len;
    if record.len() < n {
        return false;
    }
    let stored = u32::from_le_bytes([record[4], record[5], record[6], record[7]]);
    stored == crc_with_hole(&record[..n], 4)
}

/// Splits a checkpoint body into block images chained through `blocks`.
pub fn encode_checkpoint_blocks(
    body: &[u8],
    generation: u64,
    blocks: &[u64],
    block_size: usize,
) -> Vec<Vec<u8>> {
    let per = block_size - HDR_LEN;
    let mut out = Vec::with_capacity(blocks.len());
    for i in 0..blocks.len() {
        let chunk = body
            .get(i * per..((i + 1) * per).min(body.len()))
            .unwrap_or(&[]);
        let next = blocks.get(i + 1).copied().unwrap_or(0);
        let mut e = Enc::new();
        e.u32(CKPT_MAGIC);
        e.u32(0);
        e.u64(generation);
        e.u32(i as u32);
        e.u32(chunk.len() as u32);
        e.u64(next);
        e.0.extend_from_slice(chunk);
        e.0.resize(block_size, 0);
        let crc = crc_with_hole(&e.0, 4);
        e.0[4..8].copy_from_slice(&crc.to_le_bytes());
        out.push(e.0);
    }
    out
}

/// Checks one checkpoint block; returns its payload and the next block (0 at the end).
pub fn decode_checkpoint_block<'a>(
    block: &'a [u8],
    generation: u64,
    index: u32,
    sb: &Superblock,
) -> Result<(&'a [u8], u64)> {
    let mut d = Dec::new(block, "checkpoint block");
    if d.u32()? != CKPT_MAGIC {
        return Err(d.err(format!("block {index} of the chain has the wrong magic")));
    }
    let stored = d.u32()?;
    let crc = crc_with_hole(block, 4);
    if stored != crc {
        return Err(d.err(format!("block {index} of the chain fails its checksum")));
    }
    let (gen, idx, len, next) = (d.u64()?, d.u32()?, d.u32()? as usize, d.u64()?);
    if gen != generation || idx != index {
        return Err(d.err(format!(
            "block {index} of the chain belongs to checkpoint {gen} block {idx}, not {generation}"
        )));
    }
    if len > block.len() - HDR_LEN {
        return Err(d.err(format!("block {index} claims {len} bytes")));
    }
    if next != 0 && (next < sb.data_start || next >= sb.total_blocks) {
        return Err(d.err(format!(
            "block {index} links to block {next}, outside the data area"
        )));
    }
    Ok((&block[HDR_LEN..HDR_LEN + len], next))
}

/// What a checkpoint stores besides inodes, kept to cross-check what a mount derives.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Free extents as recorded.
    pub free: Vec<(u64, u64)>,
    /// Shared extents and their reference counts as recorded.
    pub shared: Vec<(u64, u64, u32)>,
}

/// Encodes the durable part of `meta`. `ckpt_blocks` are the blocks this checkpoint will
/// occupy (recorded as not free).
pub fn encode_checkpoint(meta: &Meta, ckpt_blocks: &[(u64, u64)]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u64(meta.next_ino);
    e.u32(meta.inodes.len() as u32);
    for (&ino, inode) in &meta.inodes {
        e.u64(ino);
        let attr = inode.attr;
        attr_encode(&attr, &mut e);
        e.u32(inode.xattrs.len() as u32);
        for (k, v) in &inode.xattrs {
            e.bytes(k);
            e.bytes(v);
        }
        match &inode.body {
            Body::File(f) => {
                e.u8(1);
                match &f.inline {
                    Some(inline) => {
                        // The engine copies into inline data before the write logs it, so
                        // store exactly the logged size: a write not yet logged is not here.
                        let mut data = inline.read().clone();
                        data.resize(attr.size.min(INLINE_MAX as u64) as usize, 0);
                        e.u8(1);
                        e.bytes(&data);
                    }
                    None => {
                        e.u8(0);
                        let n = f.map.iter().filter(|(_, _, x)| x.block().is_some()).count();
                        e.u32(n as u32);
                        for (s, l, x) in f.map.iter() {
                            let (code, b) = match *x {
                                Ext::Delalloc => continue,
                                Ext::Unwritten(b) => (1, b),
                                Ext::Written(b) => (2, b),
                            };
                            e.u64(s);
                            e.u64(l);
                            e.u8(code);
                            e.u64(b);
                        }
                    }
                }
            }
            Body::Dir {
                entries,
                next_cookie,
                ..
            } => {
                e.u8(2);
                e.u64(*next_cookie);
                e.u32(entries.len() as u32);
                for (name, de) in entries {
                    e.u64(de.cookie);
                    e.u64(de.ino);
                    e.u8(de.kind.code());
                    e.bytes(name);
                }
            }
            Body::Symlink(t) => {
                e.u8(3);
                e.bytes(t);
            }
            Body::Special => e.u8(4),
        }
    }
    // Free space as this checkpoint leaves it: everything in the data area that no file and
    // not this checkpoint occupies.
    let mut used: Vec<(u64, u64)> = meta.refs.iter().map(|(s, l, _)| (s, l)).collect();
    used.extend_from_slice(ckpt_blocks);
    used.sort_unstable();
    let free = gaps(meta.data_start, meta.total_blocks, &used);
    e.u32(free.len() as u32);
    for (s, l) in free {
        e.u64(s);
        e.u64(l);
    }
    let shared: Vec<(u64, u64, u32)> = meta
        .refs
        .iter()
        .filter(|(_, _, r)| r.0 > 1)
        .map(|(s, l, r)| (s, l, r.0))
        .collect();
    e.u32(shared.len() as u32);
    for (s, l, c) in shared {
        e.u64(s);
        e.u64(l);
        e.u32(c);
    }
    e.0
}

/// The gaps between sorted `used` extents within `[start, end)`.
pub fn gaps(start: u64, end: u64, used: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = start;
    for &(s, l) in used {
        if s > at {
            out.push((at, s.min(end) - at));
        }
        at = at.max(s.saturating_add(l));
        if at >= end {
            break;
        }
    }
    if at < end {
        out.push((at, end - at));
    }
    out
}

fn attr_encode(a: &Attr, e: &mut Enc) {
    crate::meta::Op::SetAttr { ino: 0, attr: *a }.encode(e);
}

fn attr_decode(d: &mut Dec<'_>) -> Result<Attr> {
    match crate::meta::Op::decode(d)? {
        crate::meta::Op::SetAttr { attr, .. } => Ok(attr),
        _ => Err(d.err("inode attributes malformed")),
    }
}

/// Decodes a checkpoint body into a metadata state; references and free space are derived
/// from the extents (the recorded copies are returned for fsck to compare). `ckpt_blocks`
/// are the blocks the checkpoint occupies.
pub fn decode_checkpoint(
    body: &[u8],
    sb: &Superblock,
    ckpt_blocks: &[(u64, u64)],
) -> Result<(Meta, Stored)> {
    let mut d = Dec::new(body, "checkpoint");
    let mut meta = Meta::new(sb.block_size, sb.data_start, sb.total_blocks);
    let bs = u64::from(sb.block_size);
    let max_blocks = crate::fs::max_file_size(bs) / bs;
    meta.next_ino = d.u64()?;
    let n = d.count(8 + Attr::LEN, "inodes")?;
    for _ in 0..n {
        let ino = d.u64()?;
        if ino == 0 || ino >= meta.next_ino || meta.inodes.contains_key(&ino) {
            return Err(d.err(format!("inode number {ino} is out of range or repeated")));
        }
        d.structure = "inode";
        let attr = attr_decode(&mut d)?;
        let nx = d.count(8, "extended attributes")?;
        let mut xattrs = BTreeMap::new();
        for _ in 0..nx {
            let k = d.bytes(XATTR_NAME_MAX, "attribute name")?;
            let v = d.bytes(XATTR_VALUE_MAX, "attribute value")?;
            xattrs.insert(k, v);
        }
        let tag = d.u8()?;
        let body = match (tag, attr.kind) {
            (1, FileType::File) => {
                let mut f = FileData::default();
                if d.u8()? != 0 {
                    let max = INLINE_MAX.min(sb.block_size as usize);
                    let data = d.bytes(max, "inline data")?;
                    // The writer stores exactly the logged size; any other length would be
                    // cut or padded by the next checkpoint, past what decoding accepts.
                    if data.len() as u64 != attr.size {
                        return Err(d.err(format!(
                            "inode {ino} has size {} but {} bytes of inline data",
                            attr.size,
                            data.len()
                        )));
                    }
                    f.inline = Some(Arc::new(RwLock::new(data)));
                } else {
                    let ne = d.count(25, "extents")?;
                    let mut last_end = 0u64;
                    for _ in 0..ne {
                        let (s, l, code, b) = (d.u64()?, d.u64()?, d.u8()?, d.u64()?);
                        let in_dev = b >= sb.data_start
                            && b.checked_add(l).is_some_and(|e| e <= sb.total_blocks);
                        let ordered = s >= last_end
                            && l > 0
                            && s.checked_add(l).is_some_and(|e| e <= max_blocks);
                        if !in_dev || !ordered {
                            return Err(d.err(format!(
                                "inode {ino} maps file blocks {s}+{l} to device blocks {b}+{l}, out of bounds or order"
                            )));
                        }
                        last_end = s + l;
                        let x = match code {
                            1 => Ext::Unwritten(b),
                            2 => Ext::Written(b),
                            _ => return Err(d.err(format!("inode {ino} has extent kind {code}"))),
                        };
                        f.map.insert(s, l, x);
                        add_refs(&mut meta.refs, b, l);
                    }
                }
                Body::File(f)
            }
            (2, FileType::Dir) => {
                let next_cookie = d.u64()?;
                let ne = d.count(21, "directory entries")?;
                let mut entries = BTreeMap::new();
                let mut order = BTreeMap::new();
                for _ in 0..ne {
                    let (cookie, child, code) = (d.u64()?, d.u64()?, d.u8()?);
                    let kind = FileType::from_code(code)
                        .ok_or_else(|| d.err(format!("directory {ino} entry of type {code}")))?;
                    let name = d.bytes(NAME_MAX, "name")?;
                    if cookie < 3
                        || cookie >= next_cookie
                        || order.contains_key(&cookie)
                        || entries.contains_key(&name)
                    {
                        return Err(d.err(format!(
                            "directory {ino} has a repeated or out-of-range entry"
                        )));
                    }
                    if name.is_empty()
                        || name.contains(&b'/')
                        || name.contains(&0)
                        || name == b"."
                        || name == b".."
                    {
                        return Err(d.err(format!(
                            "directory {ino} has an invalid name {:?}",
                            String::from_utf8_lossy(&name)
                        )));
                    }
                    order.insert(cookie, name.clone());
                    entries.insert(
                        name,
                        Dirent {
                            ino: child,
                            kind,
                            cookie,
                        },
                    );
                }
                Body::Dir {
                    parent: ROOT_INO,
                    entries,
                    order,
                    next_cookie,
                }
            }
            (3, FileType::Symlink) => Body::Symlink(d.bytes(SYMLINK_MAX, "symlink target")?),
            (4, FileType::Fifo | FileType::Socket | FileType::CharDev | FileType::BlockDev) => {
                Body::Special
            }
            _ => {
                return Err(d.err(format!(
                    "inode {ino} of type {:?} has body tag {tag}",
                    attr.kind
                )))
            }
        };
        d.structure = "checkpoint";
        meta.inodes.insert(ino, Inode { attr, xattrs, body });
    }
    for (&dir, inode) in &meta.inodes {
        let Body::Dir { entries, .. } = &inode.body else {
            continue;
        };
        for (name, de) in entries {
            let found = meta.inodes.get(&de.ino).map(|i| i.attr.kind);
            if found != Some(de.kind) || de.ino == ROOT_INO {
                return Err(d.err(format!(
                    "directory {dir} entry {:?} names inode {} as {:?}, but it is {found:?}",
                    String::from_utf8_lossy(name),
                    de.ino,
                    de.kind
                )));
            }
        }
    }
    let links: Vec<(Ino, Ino)> = meta
        .inodes
        .iter()
        .filter_map(|(&ino, i)| match &i.body {
            Body::Dir { entries, .. } => Some(
                entries
                    .values()
                    .filter(|e| e.kind == FileType::Dir)
                    .map(move |e| (e.ino, ino)),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    for (child, dir) in links {
        if let Some(Inode {
            body: Body::Dir { parent, .. },
            ..
        }) = meta.inodes.get_mut(&child)
        {
            *parent = dir;
        }
    }
    if !meta
        .inodes
        .get(&ROOT_INO)
        .is_some_and(|i| i.attr.kind == FileType::Dir)
    {
        return Err(d.err("no root directory"));
    }
    let mut stored = Stored::default();
    let nf = d.count(16, "free extents")?;
    for _ in 0..nf {
        stored.free.push((d.u64()?, d.u64()?));
    }
    let ns = d.count(20, "shared extents")?;
    for _ in 0..ns {
        stored.shared.push((d.u64()?, d.u64()?, d.u32()?));
    }
    if d.remaining() != 0 {
        return Err(d.err(format!("{} bytes left over", d.remaining())));
    }
    let mut used: Vec<(u64, u64)> = meta.refs.iter().map(|(s, l, _)| (s, l)).collect();
    used.extend_from_slice(ckpt_blocks);
    used.sort_unstable();
    for w in used.windows(2) {
        if w[0].0 + w[0].1 > w[1].0 {
            return Err(Error::corrupt(
                "checkpoint",
                format!(
                    "the checkpoint's own blocks at {} overlap file data",
                    w[1].0
                ),
            ));
        }
    }
    for (s, l) in gaps(sb.data_start, sb.total_blocks, &used) {
        meta.free
            .free(s, l)
            .map_err(|e| Error::corrupt("checkpoint", e.to_string()))?;
    }
    Ok((meta, stored))
}

fn add_refs(refs: &mut RangeMap<Refs>, b: u64, n: u64) {
    let pieces: Vec<(u64, u64, Refs)> = refs.range(b, b + n).collect();
    let mut at = b;
    let mut todo = Vec::new();
    for (s, l, r) in pieces {
        if s > at {
            todo.push((at, s - at, 1));
        }
        todo.push((s, l, r.0 + 1));
        at = s + l;
    }
    if at < b + n {
        todo.push((at, b + n - at, 1));
    }
    for (s, l, c) in todo {
        refs.insert(s, l, Refs(c));
    }
}

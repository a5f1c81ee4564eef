//! Transactions, the metadata log and checkpoints.
//!
//! A transaction applies [`Op`]s to the in-memory [`Meta`] under the state lock and appends
//! their encoding to the pending log buffer. A commit writes the pending buffer as one
//! checksummed log record after flushing the device (so data that completed before the
//! metadata pointing at it is durable first), then flushes again. When a record would not
//! fit in the log, a checkpoint writes the whole metadata state as a chain of checksummed
//! blocks in free space, then the superblock copy not in use with the next generation; log
//! records carry their checkpoint's generation, so records older than the current checkpoint
//! are never replayed.
//!
//! Blocks freed by a transaction stay busy (unallocatable) until a commit or checkpoint has
//! made that transaction durable: otherwise new data could land in blocks that a crash would
//! hand back to their old file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use iomap::{ErrSeq, PageCache};
use iomap_dev::{BlockDevice, BlockDeviceExt, DevAddr};
use parking_lot::{Mutex, MutexGuard};
use tracing::{debug, error, warn};

use crate::codec::{Dec, Enc};
use crate::error::{Error, Result};
use crate::format::{self, Superblock, HDR_LEN, SB_CLEAN, SB_OFFSETS};
use crate::meta::{Meta, Op};

/// Everything that changes under the state lock.
pub(crate) struct State {
    /// The metadata.
    pub meta: Meta,
    /// Blocks reserved by delalloc and copy-on-write reservations.
    pub reserved: u64,
    /// Freed blocks not yet durable as freed: (start, len, transaction).
    pub busy: Vec<(u64, u64, u64)>,
    /// Encoded ops not yet committed.
    pub pending: Vec<u8>,
    /// Ops in `pending`.
    pub pending_ops: u32,
    /// The last transaction applied.
    pub txn: u64,
    /// Blocks of the current checkpoint.
    pub ckpt_blocks: Vec<(u64, u64)>,
    /// Inodes whose timestamps changed in memory only; the next commit logs them.
    pub dirty_attrs: std::collections::BTreeSet<crate::meta::Ino>,
}

impl State {
    /// Blocks that new reservations may still claim: free and busy blocks, less those
    /// reserved, less room for the next checkpoint.
    pub fn available(&self) -> u64 {
        let busy: u64 = self.busy.iter().map(|b| b.1).sum();
        let ckpt: u64 = self.ckpt_blocks.iter().map(|b| b.1).sum();
        let headroom = 2 * ckpt + 8 + self.meta.total_blocks / 256;
        (self.meta.free.free_blocks() + busy).saturating_sub(self.reserved + headroom)
    }

    fn release_busy(&mut self, upto: u64) {
        let busy = std::mem::take(&mut self.busy);
        for (s, l, t) in busy {
            if t <= upto {
                if let Err(e) = self.meta.free.free(s, l) {
                    error!("freeing busy blocks: {e}");
                }
            } else {
                self.busy.push((s, l, t));
            }
        }
    }
}

/// Where the log stands.
pub(crate) struct LogState {
    /// The current superblock.
    pub sb: Superblock,
    /// Next log block to write, relative to the log start.
    pub head: u64,
    /// Next record's sequence number.
    pub seq: u64,
}

/// What the filesystem's parts share.
pub(crate) struct Shared {
    pub dev: Arc<dyn BlockDevice>,
    pub bs: u64,
    pub cache: Arc<PageCache>,
    pub sb_errseq: Arc<ErrSeq>,
    pub state: Mutex<State>,
    pub log: Mutex<LogState>,
    pub read_only: bool,
    pub shutdown: AtomicBool,
}

/// A transaction in progress: ops applied now, logged when it finishes.
pub(crate) struct Txn<'a> {
    pub st: MutexGuard<'a, State>,
    enc: Enc,
    nops: u32,
    freed: Vec<(u64, u64)>,
    unreserved: u64,
    failed: bool,
}

impl Txn<'_> {
    /// The metadata.
    pub fn meta(&self) -> &Meta {
        &self.st.meta
    }

    /// Applies and logs `op`.
    pub fn op(&mut self, op: Op) -> Result<()> {
        let st = &mut *self.st;
        if let Err(e) = st.meta.apply(&op, &mut self.freed, &mut self.unreserved) {
            self.failed = true;
            return Err(e);
        }
        op.encode(&mut self.enc);
        self.nops += 1;
        Ok(())
    }
}

impl Shared {
    /// Runs `f` as one transaction. `f` checks everything before its first op; an op that
    /// fails after others applied means memory and log disagree, so the filesystem shuts down.
    pub fn txn<R>(&self, f: impl FnOnce(&mut Txn<'_>) -> Result<R>) -> Result<R> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.check_live()?;
        let mut t = Txn {
            st: self.state.lock(),
            enc: Enc::new(),
            nops: 0,
            freed: Vec::new(),
            unreserved: 0,
            failed: false,
        };
        let res = f(&mut t);
        let Txn {
            mut st,
            enc,
            nops,
            freed,
            unreserved,
            failed,
        } = t;
        st.reserved = st.reserved.saturating_sub(unreserved);
        if nops > 0 {
            st.txn += 1;
            let txn = st.txn;
            st.pending.extend_from_slice(&enc.0);
            st.pending_ops += nops;
            st.busy.extend(freed.into_iter().map(|(s, l)| (s, l, txn)));
        } else {
            for (s, l) in freed {
                // Nothing logged refers to these (staged copies): free at once.
                if let Err(e) = st.meta.free.free(s, l) {
                    error!("freeing staged blocks: {e}");
                }
            }
        }
        if failed {
            drop(st);
            self.shut_down("a transaction failed part-way");
        }
        res
    }

    /// Fails once the filesystem has shut down.
    pub fn check_live(&self) -> Result<()> {
        if self.shutdown.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        Ok(())
    }

    /// Stops all further changes after an error that left memory and disk out of step.
    pub fn shut_down(&self, why: &str) {
        if !self.shutdown.swap(true, Ordering::AcqRel) {
            error!("extentfs shutting down: {why}");
            self.sb_errseq.set(libc::EIO);
        }
    }

    /// Makes every transaction so far durable.
    pub fn commit(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.check_live()?;
        let mut log = self.log.lock();
        let dirty = std::mem::take(&mut self.state.lock().dirty_attrs);
        if !dirty.is_empty() {
            self.txn(|t| {
                for ino in dirty {
                    if let Some(i) = t.meta().inodes.get(&ino) {
                        let attr = i.attr;
                        t.op(Op::SetAttr { ino, attr })?;
                    }
                }
                Ok(())
            })?;
        }
        let (payload, nops, upto) = {
            let mut st = self.state.lock();
            if st.pending.is_empty() {
                return Ok(());
            }
            let nops = std::mem::take(&mut st.pending_ops);
            (std::mem::take(&mut st.pending), nops, st.txn)
        };
        let bs = self.bs as usize;
        let rec =
            format::encode_log_record(&log.sb.uuid, log.sb.generation, log.seq, nops, &payload, bs);
        let nblocks = (rec.len() / bs) as u64;
        if log.head + nblocks > log.sb.log_blocks {
            // The ops are in memory already: a checkpoint makes them durable without the log.
            debug!("log full at block {}: checkpointing", log.head);
            return self.checkpoint_locked(&mut log, false);
        }
        let at = DevAddr((log.sb.log_start + log.head) * self.bs);
        let res = self
            .dev
            .flush()
            .and_then(|()| self.dev.write_at(at, &rec))
            .and_then(|()| self.dev.flush());
        if let Err(e) = res {
            self.shut_down("writing the log failed");
            return Err(e.into());
        }
        log.head += nblocks;
        log.seq += 1;
        self.state.lock().release_busy(upto);
        Ok(())
    }

    /// Writes a checkpoint of the whole state (`clean`: at unmount) and starts a new log.
    pub fn checkpoint(&self, clean: bool) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.check_live()?;
        let mut log = self.log.lock();
        self.checkpoint_locked(&mut log, clean)
    }

    fn checkpoint_locked(&self, log: &mut LogState, clean: bool) -> Result<()> {
        let res = self.write_checkpoint(log, clean);
        if let Err(e) = &res {
            if !matches!(e, Error::NoSpace) {
                self.shut_down("writing a checkpoint failed");
            }
        }
        res
    }

    fn write_checkpoint(&self, log: &mut LogState, clean: bool) -> Result<()> {
        let bs = self.bs as usize;
        let per = (bs - HDR_LEN) as u64;
        let (body, runs, upto) = {
            let mut st = self.state.lock();
            let mut slack = 4;
            loop {
                let est = format::encode_checkpoint(&st.meta, &[]).len() as u64;
                let need = est.div_ceil(per).max(1) + slack;
                let mut runs = Vec::new();
                let mut got = 0;
                while got < need {
                    let hint = runs
                        .last()
                        .map_or(st.meta.data_start, |&(s, l): &(u64, u64)| s + l);
                    match st.meta.free.alloc(need - got, hint) {
                        Some((s, l)) => {
                            runs.push((s, l));
                            got += l;
                        }
                        None => break,
                    }
                }
                if got < need {
                    for (s, l) in runs {
                        let _ = st.meta.free.free(s, l);
                    }
                    warn!("no room for a checkpoint of {need} blocks");
                    return Err(Error::NoSpace);
                }
                let body = format::encode_checkpoint(&st.meta, &runs);
                if (body.len() as u64).div_ceil(per) <= need {
                    st.dirty_attrs.clear();
                    st.pending.clear();
                    st.pending_ops = 0;
                    let upto = st.txn;
                    break (body, runs, upto);
                }
                for (s, l) in runs {
                    let _ = st.meta.free.free(s, l);
                }
                slack *= 2;
            }
        };
        let blocks: Vec<u64> = runs.iter().flat_map(|&(s, l)| s..s + l).collect();
        let generation = log.sb.generation + 1;
        let images = format::encode_checkpoint_blocks(&body, generation, &blocks, bs);
        let write = || -> std::io::Result<()> {
            self.dev.flush()?;
            let mut i = 0;
            for &(s, l) in &runs {
                let mut buf = Vec::with_capacity(l as usize * bs);
                for img in &images[i..i + l as usize] {
                    buf.extend_from_slice(img);
                }
                self.dev.write_at(DevAddr(s * self.bs), &buf)?;
                i += l as usize;
            }
            self.dev.flush()
        };
        if let Err(e) = write() {
            let mut st = self.state.lock();
            for (s, l) in runs {
                let _ = st.meta.free.free(s, l);
            }
            return Err(e.into());
        }
        let mut sb = log.sb.clone();
        sb.generation = generation;
        sb.flags = if clean { SB_CLEAN } else { 0 };
        sb.ckpt_block = blocks[0];
        sb.ckpt_nblocks = blocks.len() as u64;
        sb.ckpt_bytes = body.len() as u64;
        sb.ckpt_crc = crc32c::crc32c(&body);
        write_superblock(&*self.dev, &sb)?;
        log.sb = sb;
        log.head = 0;
        log.seq = 0;
        let mut st = self.state.lock();
        let old = std::mem::replace(&mut st.ckpt_blocks, runs);
        for (s, l) in old {
            if let Err(e) = st.meta.free.free(s, l) {
                error!("freeing the previous checkpoint: {e}");
            }
        }
        st.release_busy(upto);
        debug!(
            generation,
            blocks = blocks.len(),
            bytes = body.len(),
            "checkpoint written"
        );
        Ok(())
    }
}

/// Writes `sb` into the slot its generation selects, durably.
pub(crate) fn write_superblock(dev: &dyn BlockDevice, sb: &Superblock) -> Result<()> {
    let slot = SB_OFFSETS[(sb.generation % 2) as usize];
    let mut buf = sb.encode();
    let lbs = dev.logical_block_size() as usize;
    buf.resize(buf.len().div_ceil(lbs) * lbs, 0);
    dev.write_at(DevAddr(slot), &buf)?;
    dev.flush()?;
    Ok(())
}

/// Reads both superblock copies and returns the valid one with the higher generation.
pub(crate) fn read_superblock(dev: &dyn BlockDevice) -> Result<Superblock> {
    let cap = dev.capacity_bytes();
    let lbs = dev.logical_block_size() as usize;
    let len = format::SB_LEN.div_ceil(lbs) * lbs;
    let mut best: Option<Superblock> = None;
    let mut first_err = None;
    for off in SB_OFFSETS {
        if off + len as u64 > cap {
            first_err.get_or_insert(Error::corrupt(
                "superblock",
                format!("the device holds only {cap} bytes: too small for an extentfs image"),
            ));
            continue;
        }
        let mut buf = vec![0u8; len];
        dev.read_at(DevAddr(off), &mut buf)?;
        match Superblock::decode(&buf, cap) {
            Ok(sb) => {
                if best.as_ref().is_none_or(|b| sb.generation > b.generation) {
                    best = Some(sb);
                }
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e @ Error::Version { .. }) = first_err {
        // A newer format wrote at least one copy: never fall back to an older one.
        return Err(e);
    }
    match (best, first_err) {
        (Some(sb), Some(e)) => {
            // One copy is damaged. A crash while writing the newer copy leaves the older one
            // and its log intact, so falling back is right; but if the log already holds
            // records of the next generation, the damaged copy was in use and the older one
            // would roll the filesystem back onto blocks since reused.
            let mut first = vec![0u8; sb.block_size as usize];
            dev.read_at(DevAddr(sb.log_start * u64::from(sb.block_size)), &mut first)?;
            if format::log_header(&first, &sb.uuid, sb.generation + 1).is_some() {
                return Err(Error::corrupt(
                    "superblock",
                    format!(
                        "the newer copy is damaged ({e}) and the log shows it was in use; \
                         the older copy (generation {}) would roll back to stale metadata",
                        sb.generation
                    ),
                ));
            }
            warn!(
                "using superblock generation {}; the other copy: {e}",
                sb.generation
            );
            Ok(sb)
        }
        (Some(sb), None) => Ok(sb),
        (None, Some(e)) => Err(e),
        (None, None) => Err(Error::corrupt("superblock", "none found")),
    }
}

/// A checkpoint's body and the block runs it occupies.
pub(crate) type CheckpointImage = (Vec<u8>, Vec<(u64, u64)>);

/// Reads the checkpoint `sb` names: its body and the blocks it occupies.
pub(crate) fn read_checkpoint(dev: &dyn BlockDevice, sb: &Superblock) -> Result<CheckpointImage> {
    let bs = sb.block_size as usize;
    let mut body = Vec::with_capacity(sb.ckpt_bytes as usize);
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut block = sb.ckpt_block;
    let mut buf = vec![0u8; bs];
    for i in 0..sb.ckpt_nblocks {
        if block == 0 {
            return Err(Error::corrupt(
                "checkpoint",
                format!("chain ends after {i} of {} blocks", sb.ckpt_nblocks),
            ));
        }
        if runs.iter().any(|&(s, l)| block >= s && block < s + l) {
            return Err(Error::corrupt(
                "checkpoint",
                format!("chain loops back to block {block}"),
            ));
        }
        dev.read_at(DevAddr(block * bs as u64), &mut buf)?;
        let (payload, next) = format::decode_checkpoint_block(&buf, sb.generation, i as u32, sb)?;
        body.extend_from_slice(payload);
        match runs.last_mut() {
            Some((s, l)) if *s + *l == block => *l += 1,
            _ => runs.push((block, 1)),
        }
        block = next;
    }
    if block != 0 {
        return Err(Error::corrupt(
            "checkpoint",
            "chain is longer than the superblock says",
        ));
    }
    if body.len() as u64 != sb.ckpt_bytes || crc32c::crc32c(&body) != sb.ckpt_crc {
        return Err(Error::corrupt(
            "checkpoint",
            "body does not match the superblock's length and checksum",
        ));
    }
    runs.sort_unstable();
    Ok((body, runs))
}

/// What replaying the log found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayStats {
    /// Records applied.
    pub records: u64,
    /// Ops applied.
    pub ops: u64,
    /// Log blocks they took.
    pub blocks: u64,
}

/// Replays the log records of `sb`'s generation onto `meta`.
pub(crate) fn replay(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    meta: &mut Meta,
) -> Result<ReplayStats> {
    let bs = sb.block_size as usize;
    let mut stats = ReplayStats::default();
    let mut first = vec![0u8; bs];
    while stats.blocks < sb.log_blocks {
        let at = DevAddr((sb.log_start + stats.blocks) * bs as u64);
        dev.read_at(at, &mut first)?;
        let Some(h) = format::log_header(&first, &sb.uuid, sb.generation) else {
            break;
        };
        let nblocks = ((HDR_LEN + h.payload_len).div_ceil(bs)) as u64;
        if h.seq != stats.records || stats.blocks + nblocks > sb.log_blocks {
            break;
        }
        let mut rec = vec![0u8; nblocks as usize * bs];
        dev.read_at(at, &mut rec)?;
        if !format::log_record_intact(&rec, h.payload_len) {
            debug!(seq = h.seq, "log ends at a torn record");
            break;
        }
        stats.ops += apply_record(meta, &rec[HDR_LEN..HDR_LEN + h.payload_len], h.nops, h.seq)?;
        stats.records += 1;
        stats.blocks += nblocks;
    }
    Ok(stats)
}

/// Decodes the `nops` ops of record `seq`'s payload and applies them to `meta` as replay
/// does, freeing the blocks they release; returns the ops applied. A payload that does not
/// decode, leaves bytes after its ops, or holds an op that does not fit the state is corrupt.
pub(crate) fn apply_record(meta: &mut Meta, payload: &[u8], nops: u32, seq: u64) -> Result<u64> {
    let mut d = Dec::new(payload, "log record");
    let mut freed = Vec::new();
    let mut unreserved = 0;
    for _ in 0..nops {
        let op = Op::decode(&mut d)?;
        meta.apply(&op, &mut freed, &mut unreserved)?;
        for (s, l) in freed.drain(..) {
            meta.free
                .free(s, l)
                .map_err(|e| Error::corrupt("log record", e.to_string()))?;
        }
    }
    if d.remaining() != 0 {
        return Err(Error::corrupt(
            "log record",
            format!("record {seq} has {} bytes after its ops", d.remaining()),
        ));
    }
    Ok(u64::from(nops))
}

/// Checks that `meta` is a state a checkpoint can hold, by encoding and decoding it. Log
/// records are only checked op by op as they replay, so intact records can still leave a
/// state no checkpoint decodes (an entry naming a freed inode, a name such as `..`); a mount
/// that wrote its checkpoint of such a state would leave an image no later mount accepts.
pub(crate) fn check_checkpointable(
    meta: &Meta,
    sb: &Superblock,
    ckpt_blocks: &[(u64, u64)],
) -> Result<()> {
    let body = format::encode_checkpoint(meta, ckpt_blocks);
    match format::decode_checkpoint(&body, sb, ckpt_blocks) {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::corrupt(
            "log record",
            format!("replaying the log leaves a state no checkpoint can hold: {e}"),
        )),
    }
}

//! Entry points for the fuzz targets in `fuzz/` and the regression tests of what they found:
//! thin wrappers over decoders that live behind private modules. The superblock, checkpoint
//! and log-record codecs in [`crate::format`] are public already; what is here reaches the
//! operation codec (whose decoder reads from the crate's private `Dec`) and the replay of
//! one log record. Not a stable interface: it changes with the format.

use crate::codec::{Dec, Enc};
use crate::error::Result;
use crate::format::Superblock;
use crate::meta::{Meta, Op};

/// Decodes one operation from the start of `bytes`; returns it and the bytes it took.
pub fn decode_op(bytes: &[u8]) -> Result<(Op, usize)> {
    let mut d = Dec::new(bytes, "log record");
    let op = Op::decode(&mut d)?;
    Ok((op, d.pos()))
}

/// Encodes `ops` back to back, as a log record's payload holds them.
pub fn encode_ops(ops: &[Op]) -> Vec<u8> {
    let mut e = Enc::new();
    for op in ops {
        op.encode(&mut e);
    }
    e.0
}

/// Replays one log record's payload of `nops` operations onto `meta`, exactly as mount does
/// for each intact record of the log, and checks the result as mount does before writing
/// its checkpoint (against `sb` and the chain `ckpt_blocks`); returns the operations applied.
pub fn replay_payload(
    meta: &mut Meta,
    payload: &[u8],
    nops: u32,
    sb: &Superblock,
    ckpt_blocks: &[(u64, u64)],
) -> Result<u64> {
    let n = crate::journal::apply_record(meta, payload, nops, 0)?;
    crate::journal::check_checkpointable(meta, sb, ckpt_blocks)?;
    Ok(n)
}

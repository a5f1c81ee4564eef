//! The corpus seeds: a few small valid inputs per target, encoded from real structures so the
//! fuzzer starts from inputs that pass the checksums and checks. `examples/seeds.rs` writes
//! them under `corpus/<target>/`; inputs that once crashed a target are kept beside them
//! (named `regression-*`) and are never regenerated.

use extentfs::format;
use extentfs::fuzzing;

use crate::base::{Geometry, BLOCK_SIZES, GENERATION, UUID};
use crate::image::{patch, CHAIN_NEXT_OFFSET};

/// One seed: its target, its file name and its bytes.
pub struct Seed {
    /// The fuzz target it is for.
    pub target: &'static str,
    /// File name under `corpus/<target>/`.
    pub name: String,
    /// The input.
    pub bytes: Vec<u8>,
}

fn seed(target: &'static str, name: impl Into<String>, bytes: Vec<u8>) -> Seed {
    Seed {
        target,
        name: name.into(),
        bytes,
    }
}

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    out.extend(decode());
    out.extend(checkpoint());
    out.extend(replay());
    out.extend(image());
    out.extend(ops());
    out
}

fn decode() -> Vec<Seed> {
    let mut out = Vec::new();
    for (i, &bs) in BLOCK_SIZES.iter().enumerate().step_by(3) {
        let g = Geometry::from_byte(i as u8);
        let body = g.body(GENERATION);
        let mut sb = vec![0u8];
        sb.extend_from_slice(&g.superblock(GENERATION, &body).encode());
        out.push(seed("decode", format!("superblock-{bs}"), sb));
    }
    // Chain blocks of the 512-byte geometry the target checks against: the first, which
    // links on, and the last.
    let g = Geometry::from_byte(0);
    let body = g.body(GENERATION);
    let (start, len) = g.chain(GENERATION);
    let blocks: Vec<u64> = (start..start + len).collect();
    let images = format::encode_checkpoint_blocks(&body, GENERATION, &blocks, 512);
    for index in [0usize, 3] {
        let mut b = vec![1u8, index as u8];
        b.extend_from_slice(&images[index]);
        out.push(seed("decode", format!("checkpoint-block-{index}"), b));
    }
    for (seq, ops) in g.log_records().iter().enumerate().take(2) {
        let payload = fuzzing::encode_ops(ops);
        let rec = format::encode_log_record(
            &UUID,
            GENERATION,
            seq as u64,
            ops.len() as u32,
            &payload,
            512,
        );
        let mut b = vec![2u8];
        b.extend_from_slice(&rec);
        out.push(seed("decode", format!("log-record-{seq}"), b));
    }
    out
}

fn checkpoint() -> Vec<Seed> {
    let mut out = Vec::new();
    for i in [0u8, 3] {
        let g = Geometry::from_byte(i);
        for generation in [GENERATION - 1, GENERATION] {
            let mut b = vec![i];
            b.extend_from_slice(&g.body(generation));
            out.push(seed(
                "checkpoint",
                format!("body-{}-gen{generation}", g.block_size),
                b,
            ));
        }
    }
    out
}

fn replay() -> Vec<Seed> {
    let g = Geometry::from_byte(0);
    g.log_records()
        .iter()
        .enumerate()
        .map(|(i, ops)| {
            let mut b = vec![ops.len() as u8];
            b.extend_from_slice(&fuzzing::encode_ops(ops));
            seed("replay", format!("record-{i}"), b)
        })
        .collect()
}

fn image() -> Vec<Seed> {
    let mut out = Vec::new();
    for (i, &bs) in BLOCK_SIZES.iter().enumerate() {
        out.push(seed(
            "image",
            format!("undamaged-{bs}"),
            crate::image::undamaged(i as u8),
        ));
    }
    let one = |name: &str, p: Vec<u8>| {
        let mut b = vec![0u8];
        b.extend_from_slice(&p);
        seed("image", name.to_string(), b)
    };
    // The superblock's generation (offset 32) raised, its checksum fixed.
    out.push(one("superblock-generation", patch(0, 32, &[9])));
    // A byte of the current checkpoint's body changed, the chain and superblock following.
    out.push(one("checkpoint-body", patch(1, 200, &[0xff])));
    // A log record's payload cut short, and another's operation count raised.
    out.push(one("log-payload-cut", patch(2 | 0x40 | 0x08, 30, &[])));
    out.push(one("log-nops", patch(3, 40, &[])));
    // The first chain block's link pointed back at itself, re-checksummed.
    let (start, _) = Geometry::from_byte(0).chain(GENERATION);
    out.push(one(
        "chain-loop",
        patch(4, CHAIN_NEXT_OFFSET, &start.to_le_bytes()),
    ));
    // Raw bytes over the first superblock's checksum: the older copy is used.
    out.push(one("raw-superblock", patch(5, 0, &[0; 16])));
    out
}

fn ops() -> Vec<Seed> {
    // A few fixed pseudo-random byte strings (xorshift), one per block size.
    (0u8..3)
        .map(|i| {
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(i);
            let mut b = vec![i];
            for _ in 0..256 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push(x as u8);
            }
            seed("ops", format!("random-{i}"), b)
        })
        .collect()
}

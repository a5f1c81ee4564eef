//! The `decode` target: the fixed-layout headers read from device bytes. The first byte picks
//! the structure: a superblock copy, a checkpoint chain block, or a log record. A decoder
//! must refuse bad bytes with an error (or, for a log header, `None`) and never panic; what
//! it accepts must encode back to the same value.

use extentfs::format::{self, Superblock, HDR_LEN};

use crate::base::{Geometry, GENERATION, UUID};

/// Decodes `data[1..]` as the structure `data[0]` selects.
pub fn run(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => superblock(which, rest),
        1 => checkpoint_block(rest),
        _ => log_record(rest),
    }
}

/// The device sizes a superblock is checked against: one that holds the base image, one
/// that is too small for most, and the largest.
const CAPACITIES: [u64; 3] = [1 << 20, 64 << 10, u64::MAX];

fn superblock(which: u8, buf: &[u8]) {
    let capacity = CAPACITIES[usize::from(which / 3) % CAPACITIES.len()];
    let Ok(sb) = Superblock::decode(buf, capacity) else {
        return;
    };
    let again = Superblock::decode(&sb.encode(), capacity)
        .unwrap_or_else(|e| panic!("a decoded superblock does not decode once encoded: {e}"));
    assert_eq!(sb, again, "a superblock changed on its way through encode");
}

fn checkpoint_block(rest: &[u8]) {
    let Some((&index, block)) = rest.split_first() else {
        return;
    };
    let index = u32::from(index % 4);
    let g = Geometry::from_byte(0);
    let sb = g.superblock(GENERATION, &[]);
    let Ok((payload, next)) = format::decode_checkpoint_block(block, GENERATION, index, &sb) else {
        return;
    };
    // Encode a chain whose block `index` carries this payload and links to `next`.
    let per = block.len() - HDR_LEN;
    let mut body = vec![0u8; index as usize * per];
    body.extend_from_slice(payload);
    let mut blocks = vec![sb.data_start; index as usize + 1];
    if next != 0 {
        blocks.push(next);
    }
    let images = format::encode_checkpoint_blocks(&body, GENERATION, &blocks, block.len());
    let (p2, n2) = format::decode_checkpoint_block(&images[index as usize], GENERATION, index, &sb)
        .unwrap_or_else(|e| panic!("a decoded checkpoint block does not decode once encoded: {e}"));
    assert_eq!(
        (payload, next),
        (p2, n2),
        "a checkpoint block changed on its way through encode"
    );
}

fn log_record(record: &[u8]) {
    let Some(h) = format::log_header(record, &UUID, GENERATION) else {
        return;
    };
    if !format::log_record_intact(record, h.payload_len) {
        return;
    }
    let payload = &record[HDR_LEN..HDR_LEN + h.payload_len];
    let again = format::encode_log_record(&UUID, GENERATION, h.seq, h.nops, payload, 512);
    let h2 = format::log_header(&again, &UUID, GENERATION)
        .unwrap_or_else(|| panic!("an encoded log record has no header"));
    assert_eq!(
        (h.seq, h.payload_len, h.nops),
        (h2.seq, h2.payload_len, h2.nops),
        "a log header changed on its way through encode"
    );
    assert!(format::log_record_intact(&again, h2.payload_len));
    assert_eq!(
        &again[..HDR_LEN + h.payload_len],
        &record[..HDR_LEN + h.payload_len],
        "an intact log record encodes to other bytes"
    );
}

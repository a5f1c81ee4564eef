//! The `checkpoint` target: a checkpoint body (every inode, extent map, directory, extended
//! attribute and the free and shared lists), decoded against the base geometry the first
//! byte picks. Bad bytes must be refused, not panic; a body that decodes must encode to one
//! that decodes again to the same encoding, so that the checkpoint a mount writes of what it
//! read can always be mounted.

use extentfs::format;

use crate::base::{Geometry, GENERATION};

/// Decodes `data[1..]` as a checkpoint body.
pub fn run(data: &[u8]) {
    let Some((&geometry, body)) = data.split_first() else {
        return;
    };
    let g = Geometry::from_byte(geometry);
    let sb = g.superblock(GENERATION, body);
    let chain = [g.chain(GENERATION)];
    let Ok((meta, _stored)) = format::decode_checkpoint(body, &sb, &chain) else {
        return;
    };
    let encoded = format::encode_checkpoint(&meta, &chain);
    let (again, stored) = format::decode_checkpoint(&encoded, &sb, &chain)
        .unwrap_or_else(|e| panic!("a decoded checkpoint does not decode once encoded: {e}"));
    let derived: Vec<(u64, u64)> = again.free.iter().collect();
    assert_eq!(
        stored.free, derived,
        "the encoded free list is not the derived one"
    );
    assert_eq!(
        encoded,
        format::encode_checkpoint(&again, &chain),
        "a checkpoint changed on its way through decode and encode"
    );
}

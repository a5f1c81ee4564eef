//! The `replay` target: one log record's payload replayed onto the base checkpoint's state,
//! as mount does. The first byte is the record's operation count. Each operation that
//! decodes must encode back to itself; replay must refuse what does not fit the state with
//! an error, never panic, and a state it accepts must be one a checkpoint can hold, since
//! mount writes one of it next.

use extentfs::format;
use extentfs::fuzzing;

use crate::base::{Geometry, GENERATION};

/// Replays `data[1..]` as a payload of `data[0]` operations.
pub fn run(data: &[u8]) {
    let Some((&nops, payload)) = data.split_first() else {
        return;
    };
    let mut at = 0;
    for _ in 0..nops {
        let Ok((op, used)) = fuzzing::decode_op(&payload[at..]) else {
            break;
        };
        let encoded = fuzzing::encode_ops(std::slice::from_ref(&op));
        assert_eq!(encoded.len(), used, "{op:?} encodes to another length");
        let (again, _) = fuzzing::decode_op(&encoded)
            .unwrap_or_else(|e| panic!("{op:?} does not decode once encoded: {e}"));
        assert_eq!(op, again, "an operation changed on its way through encode");
        at += used;
    }
    let g = Geometry::from_byte(0);
    let mut meta = g.state(GENERATION);
    let sb = g.superblock(GENERATION, &[]);
    let chain = [g.chain(GENERATION)];
    if fuzzing::replay_payload(&mut meta, payload, u32::from(nops), &sb, &chain).is_err() {
        return;
    }
    // Mount writes a checkpoint of what it replayed; the next mount must be able to read it.
    let body = format::encode_checkpoint(&meta, &chain);
    if let Err(e) = format::decode_checkpoint(&body, &sb, &chain) {
        panic!("a replayed state does not decode once checkpointed: {e}");
    }
}

//! A small, fully deterministic extentfs built from the format's own encoders: the state the
//! corpus seeds encode and the image target damages.
//!
//! Everything is fixed (uuid, times, block numbers), so a crashing input reproduces in any
//! process. The checkpoint holds a file with written, unwritten and shared extents and an
//! extended attribute, a second file sharing blocks with it, an inline file, a directory with
//! a symlink and a fifo; three log records after it create a file, remove one, punch and
//! collapse extents, add a hard link and change inline data, so replay touches every kind of
//! operation.

use extentfs::format::{self, Superblock, VERSION};
use extentfs::fuzzing;
use extentfs::meta::{Attr, FileType, Ino, Meta, Op, Target, ROOT_INO};
use extentfs::Time;

/// The filesystem's uuid.
pub const UUID: [u8; 16] = *b"extentfs-fuzzing";
/// The generation of the current checkpoint; the older copy has the one before.
pub const GENERATION: u64 = 2;
/// The block sizes an input's first byte chooses among.
pub const BLOCK_SIZES: [u32; 4] = [512, 1024, 2048, 4096];
/// Log blocks.
const LOG_BLOCKS: u64 = 8;
/// Data blocks.
const DATA_BLOCKS: u64 = 128;
/// Blocks each checkpoint chain may take: they sit at the end of the data area, the current
/// one last.
pub const CHAIN_BLOCKS: u64 = 12;

/// Where everything is for one block size.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    /// Block size in bytes.
    pub block_size: u32,
}

impl Geometry {
    /// The geometry an input byte selects.
    pub fn from_byte(b: u8) -> Self {
        Geometry {
            block_size: BLOCK_SIZES[usize::from(b) % BLOCK_SIZES.len()],
        }
    }

    /// Block size in bytes.
    pub fn bs(&self) -> u64 {
        u64::from(self.block_size)
    }

    /// First log block.
    pub fn log_start(&self) -> u64 {
        format::log_start(self.block_size)
    }

    /// Log blocks.
    pub fn log_blocks(&self) -> u64 {
        LOG_BLOCKS
    }

    /// First data block.
    pub fn data_start(&self) -> u64 {
        self.log_start() + LOG_BLOCKS
    }

    /// Blocks in the filesystem.
    pub fn total_blocks(&self) -> u64 {
        self.data_start() + DATA_BLOCKS
    }

    /// Bytes of the device.
    pub fn capacity_bytes(&self) -> u64 {
        self.total_blocks() * self.bs()
    }

    /// The chain of the checkpoint of `generation` (1 or 2) as one run.
    pub fn chain(&self, generation: u64) -> (u64, u64) {
        let end = self.total_blocks() - (GENERATION - generation.min(GENERATION)) * CHAIN_BLOCKS;
        (end - CHAIN_BLOCKS, CHAIN_BLOCKS)
    }

    /// Payload bytes a chain block carries.
    pub fn per_block(&self) -> usize {
        self.block_size as usize - format::HDR_LEN
    }

    /// The superblock of `generation` whose checkpoint body is `body`.
    pub fn superblock(&self, generation: u64, body: &[u8]) -> Superblock {
        let (start, len) = self.chain(generation);
        Superblock {
            version: VERSION,
            uuid: UUID,
            generation,
            block_size: self.block_size,
            flags: 0,
            total_blocks: self.total_blocks(),
            log_start: self.log_start(),
            log_blocks: LOG_BLOCKS,
            data_start: self.data_start(),
            ckpt_block: start,
            ckpt_nblocks: len,
            ckpt_bytes: body.len() as u64,
            ckpt_crc: crc32c::crc32c(body),
        }
    }

    /// An empty state over this geometry: every data block free.
    pub fn empty_meta(&self) -> Meta {
        let mut meta = Meta::new(self.block_size, self.data_start(), self.total_blocks());
        meta.free
            .free(self.data_start(), DATA_BLOCKS)
            .unwrap_or_else(|e| panic!("freeing the data area of an empty state: {e}"));
        meta
    }

    /// The state of checkpoint `generation`: only the root for 1, the files for 2.
    pub fn state(&self, generation: u64) -> Meta {
        let mut meta = self.empty_meta();
        let ops = if generation >= GENERATION {
            self.checkpoint_ops()
        } else {
            vec![create(ROOT_INO, dir_attr(2))]
        };
        let payload = fuzzing::encode_ops(&ops);
        let sb = self.superblock(generation, &[]);
        fuzzing::replay_payload(
            &mut meta,
            &payload,
            ops.len() as u32,
            &sb,
            &[self.chain(generation)],
        )
        .unwrap_or_else(|e| panic!("building the base state: {e}"));
        meta
    }

    /// The checkpoint body of `generation`.
    pub fn body(&self, generation: u64) -> Vec<u8> {
        format::encode_checkpoint(&self.state(generation), &[self.chain(generation)])
    }

    /// Data blocks that hold written data (filled with a pattern in the image).
    pub fn written_blocks(&self) -> std::ops::Range<u64> {
        self.data_start()..self.data_start() + 9
    }

    fn checkpoint_ops(&self) -> Vec<Op> {
        let d = self.data_start();
        let bs = self.bs();
        vec![
            create(ROOT_INO, dir_attr(3)),
            create(2, file_attr(6 * bs, 1)),
            dir_add(ROOT_INO, b"a", 2, FileType::File),
            Op::SetInline { ino: 2, data: None },
            map(2, 0, 2, Target::Written(d)),
            map(2, 2, 1, Target::Unwritten(d + 2)),
            map(2, 4, 2, Target::Written(d + 4)),
            Op::SetXattr {
                ino: 2,
                name: b"user.k".to_vec(),
                value: Some(b"v".to_vec()),
            },
            create(3, file_attr(2 * bs, 1)),
            dir_add(ROOT_INO, b"b", 3, FileType::File),
            Op::SetInline { ino: 3, data: None },
            map(3, 0, 2, Target::Written(d + 4)),
            create(4, file_attr(13, 1)),
            dir_add(ROOT_INO, b"small", 4, FileType::File),
            Op::SetInline {
                ino: 4,
                data: Some(b"hello, inline".to_vec()),
            },
            create(5, dir_attr(2)),
            dir_add(ROOT_INO, b"d", 5, FileType::Dir),
            Op::Create {
                ino: 6,
                attr: attr(FileType::Symlink, 0o777, 4, 1),
                target: b"../a".to_vec(),
            },
            dir_add(5, b"link", 6, FileType::Symlink),
            create(7, attr(FileType::Fifo, 0o600, 0, 1)),
            dir_add(5, b"fifo", 7, FileType::Fifo),
        ]
    }

    /// The log after the current checkpoint, one op list per record.
    pub fn log_records(&self) -> Vec<Vec<Op>> {
        let d = self.data_start();
        let bs = self.bs();
        vec![
            vec![
                create(8, file_attr(0, 1)),
                dir_add(ROOT_INO, b"new", 8, FileType::File),
                Op::SetInline { ino: 8, data: None },
                map(8, 0, 1, Target::Unwritten(d + 8)),
                map(8, 0, 1, Target::Written(d + 8)),
                Op::SetAttr {
                    ino: 8,
                    attr: file_attr(bs, 1),
                },
            ],
            vec![
                Op::SetXattr {
                    ino: 2,
                    name: b"user.k".to_vec(),
                    value: None,
                },
                Op::SetXattr {
                    ino: 5,
                    name: b"user.x".to_vec(),
                    value: Some(b"y".to_vec()),
                },
                Op::DirRemove {
                    dir: ROOT_INO,
                    name: b"b".to_vec(),
                },
                Op::Free { ino: 3 },
                map(2, 2, 2, Target::Hole),
                Op::Shift {
                    ino: 2,
                    from: 4,
                    delta: 2,
                    up: false,
                },
                Op::SetAttr {
                    ino: 2,
                    attr: file_attr(4 * bs, 1),
                },
            ],
            vec![
                dir_add(5, b"hard", 4, FileType::File),
                Op::SetAttr {
                    ino: 4,
                    attr: file_attr(15, 2),
                },
                Op::SetInline {
                    ino: 4,
                    data: Some(b"hello, inline!!".to_vec()),
                },
                Op::Shift {
                    ino: 2,
                    from: 2,
                    delta: 1,
                    up: true,
                },
            ],
        ]
    }
}

const T: Time = Time {
    sec: 1_700_000_000,
    nsec: 5,
};

fn attr(kind: FileType, perm: u16, size: u64, nlink: u32) -> Attr {
    Attr {
        kind,
        perm,
        nlink,
        uid: 1000,
        gid: 1000,
        size,
        atime: T,
        mtime: T,
        ctime: T,
        crtime: T,
        rdev: 0,
        flags: 0,
    }
}

fn file_attr(size: u64, nlink: u32) -> Attr {
    attr(FileType::File, 0o644, size, nlink)
}

fn dir_attr(nlink: u32) -> Attr {
    attr(FileType::Dir, 0o755, 0, nlink)
}

fn create(ino: Ino, attr: Attr) -> Op {
    Op::Create {
        ino,
        attr,
        target: Vec::new(),
    }
}

fn dir_add(dir: Ino, name: &[u8], ino: Ino, kind: FileType) -> Op {
    Op::DirAdd {
        dir,
        name: name.to_vec(),
        ino,
        kind,
    }
}

fn map(ino: Ino, lblk: u64, len: u64, to: Target) -> Op {
    Op::Map { ino, lblk, len, to }
}

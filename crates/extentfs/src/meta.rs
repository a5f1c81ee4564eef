//! The filesystem's metadata as it lives in memory: inodes with their extent maps, directory
//! entries and extended attributes; reference counts of device blocks; free space. Every
//! change is an [`Op`], applied by [`Meta::apply`] both when it happens and when the log is
//! replayed at mount, so what a mount rebuilds is exactly what ran.

use std::collections::BTreeMap;
use std::sync::Arc;

use iomap::InlineData;
use parking_lot::RwLock;

use crate::alloc::FreeSpace;
use crate::codec::{Dec, Enc};
use crate::error::{Error, Result};
use crate::rangemap::{Extent, RangeMap};

/// An inode number.
pub type Ino = u64;
/// The root directory.
pub const ROOT_INO: Ino = 1;
/// Longest name in a directory.
pub const NAME_MAX: usize = 255;
/// Longest symlink target.
pub const SYMLINK_MAX: usize = 4095;
/// Longest extended attribute name.
pub const XATTR_NAME_MAX: usize = 255;
/// Largest extended attribute value.
pub const XATTR_VALUE_MAX: usize = 65536;
/// Most hard links to one inode.
pub const LINK_MAX: u32 = 65000;
/// Largest inline file: small files keep their data in the inode.
pub const INLINE_MAX: usize = 2048;

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
    /// A character device.
    CharDev,
    /// A block device.
    BlockDev,
}

impl FileType {
    /// On-disk code.
    pub fn code(self) -> u8 {
        match self {
            FileType::File => 1,
            FileType::Dir => 2,
            FileType::Symlink => 3,
            FileType::Fifo => 4,
            FileType::Socket => 5,
            FileType::CharDev => 6,
            FileType::BlockDev => 7,
        }
    }

    /// From the on-disk code.
    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => FileType::File,
            2 => FileType::Dir,
            3 => FileType::Symlink,
            4 => FileType::Fifo,
            5 => FileType::Socket,
            6 => FileType::CharDev,
            7 => FileType::BlockDev,
            _ => return None,
        })
    }
}

/// A time: seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time {
    /// Seconds since 1970.
    pub sec: i64,
    /// Nanoseconds, below 1e9.
    pub nsec: u32,
}

impl Time {
    /// The current time.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Time {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    }
}

/// An inode's attributes as they are on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// What it is.
    pub kind: FileType,
    /// Permission bits (mode & 0o7777).
    pub perm: u16,
    /// Hard links (directories: 2 plus subdirectories).
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes as durable on disk (for files, grown at writeback completion).
    pub size: u64,
    /// Last access.
    pub atime: Time,
    /// Last data change.
    pub mtime: Time,
    /// Last inode change.
    pub ctime: Time,
    /// Creation.
    pub crtime: Time,
    /// Device number for device files.
    pub rdev: u32,
    /// Inode flags (reserved, zero).
    pub flags: u32,
}

impl Attr {
    /// Fresh attributes for a new inode.
    pub fn new(kind: FileType, perm: u16, uid: u32, gid: u32) -> Self {
        let now = Time::now();
        Attr {
            kind,
            perm: perm & 0o7777,
            nlink: if kind == FileType::Dir { 2 } else { 1 },
            uid,
            gid,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            rdev: 0,
            flags: 0,
        }
    }

    /// Encoded length.
    pub const LEN: usize = 1 + 2 + 4 * 3 + 8 + 12 * 4 + 4 + 4;

    fn encode(&self, e: &mut Enc) {
        e.u8(self.kind.code());
        e.u16(self.perm);
        e.u32(self.nlink);
        e.u32(self.uid);
        e.u32(self.gid);
        e.u64(self.size);
        for t in [self.atime, self.mtime, self.ctime, self.crtime] {
            e.i64(t.sec);
            e.u32(t.nsec);
        }
        e.u32(self.rdev);
        e.u32(self.flags);
    }

    fn decode(d: &mut Dec<'_>) -> Result<Self> {
        let code = d.u8()?;
        let kind = FileType::from_code(code).ok_or_else(|| d.err(format!("file type {code}")))?;
        let perm = d.u16()?;
        if perm & !0o7777 != 0 {
            return Err(d.err(format!("permission bits {perm:o}")));
        }
        let (nlink, uid, gid, size) = (d.u32()?, d.u32()?, d.u32()?, d.u64()?);
        let mut t = [Time::default(); 4];
        for slot in &mut t {
            let (sec, nsec) = (d.i64()?, d.u32()?);
            if nsec >= 1_000_000_000 {
                return Err(d.err(format!("time with {nsec} nanoseconds")));
            }
            *slot = Time { sec, nsec };
        }
        Ok(Attr {
            kind,
            perm,
            nlink,
            uid,
            gid,
            size,
            atime: t[0],
            mtime: t[1],
            ctime: t[2],
            crtime: t[3],
            rdev: d.u32()?,
            flags: d.u32()?,
        })
    }
}

/// What a file block maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Space reserved, not allocated (in memory only).
    Delalloc,
    /// Allocated at this device block, never written: reads as zeros.
    Unwritten(u64),
    /// Allocated and written at this device block.
    Written(u64),
}

impl Ext {
    /// The device block, if allocated.
    pub fn block(self) -> Option<u64> {
        match self {
            Ext::Delalloc => None,
            Ext::Unwritten(b) | Ext::Written(b) => Some(b),
        }
    }
}

impl Extent for Ext {
    fn advance(&self, d: u64) -> Self {
        match *self {
            Ext::Delalloc => Ext::Delalloc,
            Ext::Unwritten(b) => Ext::Unwritten(b + d),
            Ext::Written(b) => Ext::Written(b + d),
        }
    }
}

/// Copy-on-write staging for blocks of a file that share their device blocks (in memory
/// only: nothing here is durable until the remap at writeback completion).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cow {
    /// Space reserved for the new copy.
    Reserved,
    /// New copy allocated at this device block, being written.
    Staged(u64),
}

impl Extent for Cow {
    fn advance(&self, d: u64) -> Self {
        match *self {
            Cow::Reserved => Cow::Reserved,
            Cow::Staged(b) => Cow::Staged(b + d),
        }
    }
}

/// How many file extents reference a device block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refs(pub u32);

impl Extent for Refs {
    fn advance(&self, _d: u64) -> Self {
        *self
    }
}

/// What a mapping op sets a file range to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Nothing: the range becomes a hole.
    Hole,
    /// Allocated, unwritten, from this device block.
    Unwritten(u64),
    /// Allocated and written, from this device block.
    Written(u64),
}

/// A directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dirent {
    /// The inode it names.
    pub ino: Ino,
    /// Its type.
    pub kind: FileType,
    /// Its position in readdir order, stable while it exists.
    pub cookie: u64,
}

/// A regular file's data.
#[derive(Debug, Default)]
pub struct FileData {
    /// File blocks to device blocks.
    pub map: RangeMap<Ext>,
    /// Copy-on-write staging (in memory only).
    pub cow: RangeMap<Cow>,
    /// Inline data while the file is small; `None` once it has extents.
    pub inline: Option<InlineData>,
    /// Changes with every change to `map` or `cow`, so a mapping handed out can be checked.
    pub cookie: u64,
}

/// What an inode holds besides its attributes.
#[derive(Debug)]
pub enum Body {
    /// A regular file.
    File(FileData),
    /// A directory: entries by name, and names by readdir cookie.
    Dir {
        /// The parent directory (the root is its own parent); derived from the entries.
        parent: Ino,
        /// Entries by name.
        entries: BTreeMap<Vec<u8>, Dirent>,
        /// Names by cookie.
        order: BTreeMap<u64, Vec<u8>>,
        /// The next cookie to hand out (cookies 1 and 2 are "." and "..").
        next_cookie: u64,
    },
    /// A symbolic link's target.
    Symlink(Vec<u8>),
    /// A device, pipe or socket: attributes only.
    Special,
}

/// An inode.
#[derive(Debug)]
pub struct Inode {
    /// Attributes.
    pub attr: Attr,
    /// Extended attributes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Contents.
    pub body: Body,
}

impl Inode {
    /// A new inode of `attr.kind`; regular files start inline and empty.
    pub fn new(attr: Attr, target: Vec<u8>) -> Self {
        let body = match attr.kind {
            FileType::File => Body::File(FileData {
                inline: Some(Arc::new(RwLock::new(Vec::new()))),
                ..FileData::default()
            }),
            FileType::Dir => Body::Dir {
                parent: ROOT_INO,
                entries: BTreeMap::new(),
                order: BTreeMap::new(),
                next_cookie: 3,
            },
            FileType::Symlink => Body::Symlink(target),
            _ => Body::Special,
        };
        Inode {
            attr,
            xattrs: BTreeMap::new(),
            body,
        }
    }

    /// The file data, if a regular file.
    pub fn file(&self) -> Option<&FileData> {
        match &self.body {
            Body::File(f) => Some(f),
            _ => None,
        }
    }

    /// The file data, if a regular file.
    pub fn file_mut(&mut self) -> Option<&mut FileData> {
        match &mut self.body {
            Body::File(f) => Some(f),
            _ => None,
        }
    }
}

/// One logged change. Applying the same ops in the same order to the same state gives the
/// same state; that is what makes replay exact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Creates inode `ino` (a symlink with `target`).
    Create {
        /// Inode number.
        ino: Ino,
        /// Attributes.
        attr: Attr,
        /// Symlink target (empty otherwise).
        target: Vec<u8>,
    },
    /// Replaces an inode's attributes.
    SetAttr {
        /// Inode number.
        ino: Ino,
        /// New attributes.
        attr: Attr,
    },
    /// Frees an inode and drops its references to device blocks.
    Free {
        /// Inode number.
        ino: Ino,
    },
    /// Adds a directory entry.
    DirAdd {
        /// Directory.
        dir: Ino,
        /// Name.
        name: Vec<u8>,
        /// Inode named.
        ino: Ino,
        /// Its type.
        kind: FileType,
    },
    /// Removes a directory entry.
    DirRemove {
        /// Directory.
        dir: Ino,
        /// Name.
        name: Vec<u8>,
    },
    /// Maps file blocks `[lblk, lblk + len)` to `to`.
    Map {
        /// Inode number.
        ino: Ino,
        /// First file block.
        lblk: u64,
        /// Blocks.
        len: u64,
        /// What they map to.
        to: Target,
    },
    /// Sets the inline data (`None`: the file uses extents from now on).
    SetInline {
        /// Inode number.
        ino: Ino,
        /// The data.
        data: Option<Vec<u8>>,
    },
    /// Sets (`Some`) or removes an extended attribute.
    SetXattr {
        /// Inode number.
        ino: Ino,
        /// Name.
        name: Vec<u8>,
        /// Value.
        value: Option<Vec<u8>>,
    },
    /// Moves every extent at or after file block `from` down (`up == false`, collapse) or up
    /// by `delta` blocks.
    Shift {
        /// Inode number.
        ino: Ino,
        /// First file block moved.
        from: u64,
        /// Blocks moved by.
        delta: u64,
        /// Direction.
        up: bool,
    },
}

impl Op {
    /// Appends the op's encoding.
    pub fn encode(&self, e: &mut Enc) {
        match self {
            Op::Create { ino, attr, target } => {
                e.u8(1);
                e.u64(*ino);
                attr.encode(e);
                e.bytes(target);
            }
            Op::SetAttr { ino, attr } => {
                e.u8(2);
                e.u64(*ino);
                attr.encode(e);
            }
            Op::Free { ino } => {
                e.u8(3);
                e.u64(*ino);
            }
            Op::DirAdd {
                dir,
                name,
                ino,
                kind,
            } => {
                e.u8(4);
                e.u64(*dir);
                e.bytes(name);
                e.u64(*ino);
                e.u8(kind.code());
            }
            Op::DirRemove { dir, name } => {
                e.u8(5);
                e.u64(*dir);
                e.bytes(name);
            }
            Op::Map { ino, lblk, len, to } => {
                e.u8(6);
                e.u64(*ino);
                e.u64(*lblk);
                e.u64(*len);
                let (code, b) = match to {
                    Target::Hole => (0, 0),
                    Target::Unwritten(b) => (1, *b),
                    Target::Written(b) => (2, *b),
                };
                e.u8(code);
                e.u64(b);
            }
            Op::SetInline { ino, data } => {
                e.u8(7);
                e.u64(*ino);
                match data {
                    Some(d) => {
                        e.u8(1);
                        e.bytes(d);
                    }
                    None => e.u8(0),
                }
            }
            Op::SetXattr { ino, name, value } => {
                e.u8(8);
                e.u64(*ino);
                e.bytes(name);
                match value {
                    Some(v) => {
                        e.u8(1);
                        e.bytes(v);
                    }
                    None => e.u8(0),
                }
            }
            Op::Shift {
                ino,
                from,
                delta,
                up,
            } => {
                e.u8(9);
                e.u64(*ino);
                e.u64(*from);
                e.u64(*delta);
                e.u8(u8::from(*up));
            }
        }
    }

    /// Decodes one op.
    pub fn decode(d: &mut Dec<'_>) -> Result<Self> {
        let tag = d.u8()?;
        Ok(match tag {
            1 => Op::Create {
                ino: d.u64()?,
                attr: Attr::decode(d)?,
                target: d.bytes(SYMLINK_MAX, "symlink target")?,
            },
            2 => Op::SetAttr {
                ino: d.u64()?,
                attr: Attr::decode(d)?,
            },
            3 => Op::Free { ino: d.u64()? },
            4 => {
                let dir = d.u64()?;
                let name = d.bytes(NAME_MAX, "name")?;
                let ino = d.u64()?;
                let code = d.u8()?;
                let kind =
                    FileType::from_code(code).ok_or_else(|| d.err(format!("file type {code}")))?;
                Op::DirAdd {
                    dir,
                    name,
                    ino,
                    kind,
                }
            }
            5 => Op::DirRemove {
                dir: d.u64()?,
                name: d.bytes(NAME_MAX, "name")?,
            },
            6 => {
                let (ino, lblk, len, code, b) = (d.u64()?, d.u64()?, d.u64()?, d.u8()?, d.u64()?);
                let to = match code {
                    0 => Target::Hole,
                    1 => Target::Unwritten(b),
                    2 => Target::Written(b),
                    _ => return Err(d.err(format!("mapping kind {code}"))),
                };
                Op::Map { ino, lblk, len, to }
            }
            7 => {
                let ino = d.u64()?;
                let data = match d.u8()? {
                    0 => None,
                    _ => Some(d.bytes(INLINE_MAX, "inline data")?),
                };
                Op::SetInline { ino, data }
            }
            8 => {
                let ino = d.u64()?;
                let name = d.bytes(XATTR_NAME_MAX, "attribute name")?;
                let value = match d.u8()? {
                    0 => None,
                    _ => Some(d.bytes(XATTR_VALUE_MAX, "attribute value")?),
                };
                Op::SetXattr { ino, name, value }
            }
            9 => Op::Shift {
                ino: d.u64()?,
                from: d.u64()?,
                delta: d.u64()?,
                up: d.u8()? != 0,
            },
            _ => return Err(d.err(format!("unknown operation {tag}"))),
        })
    }
}

/// The whole metadata state.
#[derive(Debug)]
pub struct Meta {
    /// Block size in bytes.
    pub block_size: u32,
    /// First data block (everything before is superblocks and log).
    pub data_start: u64,
    /// Blocks on the device.
    pub total_blocks: u64,
    /// Inodes by number.
    pub inodes: BTreeMap<Ino, Inode>,
    /// The next inode number to hand out.
    pub next_ino: Ino,
    /// References to device blocks from file extents.
    pub refs: RangeMap<Refs>,
    /// Free device blocks (not referenced, not holding the checkpoint, not busy).
    pub free: FreeSpace,
}

impl Meta {
    /// An empty state over a device of `total_blocks`, data from `data_start`.
    pub fn new(block_size: u32, data_start: u64, total_blocks: u64) -> Self {
        Meta {
            block_size,
            data_start,
            total_blocks,
            inodes: BTreeMap::new(),
            next_ino: ROOT_INO + 1,
            refs: RangeMap::new(),
            free: FreeSpace::new(),
        }
    }

    /// The inode, or a corruption error naming it.
    pub fn inode(&self, ino: Ino) -> Result<&Inode> {
        self.inodes.get(&ino).ok_or(Error::NotFound)
    }

    /// The inode, mutably.
    pub fn inode_mut(&mut self, ino: Ino) -> Result<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Error::NotFound)
    }

    /// Whether any block of `[b, b + n)` is referenced more than once.
    pub fn shared(&self, b: u64, n: u64) -> bool {
        self.refs.range(b, b + n).any(|(_, _, r)| r.0 > 1)
    }

    /// How many blocks from `b` (at most `n`) have the same shared-ness as `b`.
    pub fn shared_run(&self, b: u64, n: u64) -> (bool, u64) {
        let first = self.refs.lookup(b).map_or(0, |(_, _, r)| r.0) > 1;
        let mut at = b;
        for (s, l, r) in self.refs.range(b, b + n) {
            if s != at || (r.0 > 1) != first {
                break;
            }
            at = s + l;
        }
        (first, (at - b).max(1).min(n))
    }

    fn add_ref(&mut self, b: u64, n: u64) {
        let mut pieces: Vec<(u64, u64, u32)> = Vec::new();
        let mut at = b;
        for (s, l, r) in self.refs.range(b, b + n) {
            if s > at {
                pieces.push((at, s - at, 0));
            }
            pieces.push((s, l, r.0));
            at = s + l;
        }
        if at < b + n {
            pieces.push((at, b + n - at, 0));
        }
        for (s, l, c) in pieces {
            if c == 0 {
                // Taken by the allocator already when running; free when replaying.
                self.free.take_if_free(s, l);
            }
            self.refs.insert(s, l, Refs(c + 1));
        }
    }

    fn drop_ref(&mut self, b: u64, n: u64, freed: &mut Vec<(u64, u64)>) {
        let pieces: Vec<(u64, u64, Refs)> = self.refs.range(b, b + n).collect();
        for (s, l, r) in pieces {
            if r.0 <= 1 {
                self.refs.remove(s, l);
                freed.push((s, l));
            } else {
                self.refs.insert(s, l, Refs(r.0 - 1));
            }
        }
    }

    fn drop_map_refs(&mut self, removed: &[(u64, u64, Ext)], freed: &mut Vec<(u64, u64)>) {
        for &(_, l, e) in removed {
            if let Some(b) = e.block() {
                self.drop_ref(b, l, freed);
            }
        }
    }

    /// Applies `op`. Device blocks whose last reference went are pushed on `freed`; delalloc
    /// blocks the op replaced are counted in `unreserved`. Fails only on an op that does not
    /// fit the state, which means the log is corrupt.
    pub fn apply(
        &mut self,
        op: &Op,
        freed: &mut Vec<(u64, u64)>,
        unreserved: &mut u64,
    ) -> Result<()> {
        let bad = |detail: String| Error::corrupt("log record", detail);
        match op {
            Op::Create { ino, attr, target } => {
                // The next inode number must stay representable: u64::MAX is never an inode.
                let Some(after) = ino.checked_add(1).filter(|_| *ino != 0) else {
                    return Err(bad(format!("creates inode {ino}, out of range")));
                };
                if self.inodes.contains_key(ino) {
                    return Err(bad(format!("creates inode {ino}, which exists")));
                }
                self.inodes.insert(*ino, Inode::new(*attr, target.clone()));
                self.next_ino = self.next_ino.max(after);
            }
            Op::SetAttr { ino, attr } => {
                let inode = self
                    .inodes
                    .get_mut(ino)
                    .ok_or_else(|| bad(format!("sets attributes of missing inode {ino}")))?;
                if inode.attr.kind != attr.kind {
                    return Err(bad(format!("changes the type of inode {ino}")));
                }
                inode.attr = *attr;
            }
            Op::Free { ino } => {
                let inode = self
                    .inodes
                    .remove(ino)
                    .ok_or_else(|| bad(format!("frees missing inode {ino}")))?;
                if let Body::File(f) = inode.body {
                    let removed: Vec<(u64, u64, Ext)> =
                        f.map.iter().map(|(s, l, e)| (s, l, *e)).collect();
                    for &(_, l, e) in &removed {
                        if e == Ext::Delalloc {
                            *unreserved += l;
                        }
                    }
                    for (_, l, c) in f.cow.iter() {
                        match c {
                            Cow::Reserved => *unreserved += l,
                            Cow::Staged(b) => freed.push((*b, l)),
                        }
                    }
                    self.drop_map_refs(&removed, freed);
                }
            }
            Op::DirAdd {
                dir,
                name,
                ino,
                kind,
            } => {
                let Some(Inode {
                    body:
                        Body::Dir {
                            entries,
                            order,
                            next_cookie,
                            ..
                        },
                    ..
                }) = self.inodes.get_mut(dir)
                else {
                    return Err(bad(format!(
                        "adds an entry to {dir}, which is not a directory"
                    )));
                };
                if entries.contains_key(name) {
                    return Err(bad(format!(
                        "adds a second entry {:?} to directory {dir}",
                        String::from_utf8_lossy(name)
                    )));
                }
                let cookie = *next_cookie;
                *next_cookie += 1;
                entries.insert(
                    name.clone(),
                    Dirent {
                        ino: *ino,
                        kind: *kind,
                        cookie,
                    },
                );
                order.insert(cookie, name.clone());
                if *kind == FileType::Dir {
                    if let Some(Inode {
                        body: Body::Dir { parent, .. },
                        ..
                    }) = self.inodes.get_mut(ino)
                    {
                        *parent = *dir;
                    }
                }
            }
            Op::DirRemove { dir, name } => {
                let Some(Inode {
                    body: Body::Dir { entries, order, .. },
                    ..
                }) = self.inodes.get_mut(dir)
                else {
                    return Err(bad(format!(
                        "removes an entry from {dir}, which is not a directory"
                    )));
                };
                let Some(de) = entries.remove(name) else {
                    return Err(bad(format!(
                        "removes missing entry {:?} from directory {dir}",
                        String::from_utf8_lossy(name)
                    )));
                };
                order.remove(&de.cookie);
            }
            Op::Map { ino, lblk, len, to } => {
                if lblk.checked_add(*len).is_none() {
                    return Err(bad(format!(
                        "maps {len} blocks at {lblk} of inode {ino}, past the largest block"
                    )));
                }
                if let Target::Unwritten(b) | Target::Written(b) = to {
                    let ok = *b >= self.data_start
                        && b.checked_add(*len).is_some_and(|e| e <= self.total_blocks);
                    if !ok {
                        return Err(bad(format!(
                            "maps inode {ino} to device blocks {b}+{len}, outside the data area"
                        )));
                    }
                    self.add_ref(*b, *len);
                }
                let f = self
                    .inodes
                    .get_mut(ino)
                    .and_then(Inode::file_mut)
                    .ok_or_else(|| bad(format!("maps blocks of {ino}, which is not a file")))?;
                let removed = match to {
                    Target::Hole => f.map.remove(*lblk, *len),
                    Target::Unwritten(b) => f.map.insert(*lblk, *len, Ext::Unwritten(*b)),
                    Target::Written(b) => f.map.insert(*lblk, *len, Ext::Written(*b)),
                };
                f.cookie += 1;
                for &(_, l, e) in &removed {
                    if e == Ext::Delalloc {
                        *unreserved += l;
                    }
                }
                if *to == Target::Hole {
                    // A hole punched over staged copies drops them too.
                    for (_, l, c) in f.cow.remove(*lblk, *len) {
                        match c {
                            Cow::Reserved => *unreserved += l,
                            Cow::Staged(b) => freed.push((b, l)),
                        }
                    }
                }
                self.drop_map_refs(&removed, freed);
            }
            Op::SetInline { ino, data } => {
                let f = self
                    .inodes
                    .get_mut(ino)
                    .and_then(Inode::file_mut)
                    .ok_or_else(|| {
                        bad(format!("sets inline data of {ino}, which is not a file"))
                    })?;
                match data {
                    Some(d) => match &f.inline {
                        Some(inline) => *inline.write() = d.clone(),
                        None => {
                            if !f.map.is_empty() {
                                return Err(bad(format!(
                                    "makes inode {ino} inline while it has extents"
                                )));
                            }
                            f.inline = Some(Arc::new(RwLock::new(d.clone())));
                        }
                    },
                    None => f.inline = None,
                }
                f.cookie += 1;
            }
            Op::SetXattr { ino, name, value } => {
                let inode = self
                    .inodes
                    .get_mut(ino)
                    .ok_or_else(|| bad(format!("sets an attribute of missing inode {ino}")))?;
                match value {
                    Some(v) => {
                        inode.xattrs.insert(name.clone(), v.clone());
                    }
                    None => {
                        inode.xattrs.remove(name);
                    }
                }
            }
            Op::Shift {
                ino,
                from,
                delta,
                up,
            } => {
                let f = self
                    .inodes
                    .get_mut(ino)
                    .and_then(Inode::file_mut)
                    .ok_or_else(|| bad(format!("shifts extents of {ino}, which is not a file")))?;
                let ok = if *up {
                    f.map.shift_up(*from, *delta)
                } else {
                    f.map.shift_down(*from, *delta)
                };
                if !ok {
                    return Err(bad(format!(
                        "shifts extents of inode {ino} from block {from} by {delta} over others"
                    )));
                }
                f.cookie += 1;
            }
        }
        Ok(())
    }
}

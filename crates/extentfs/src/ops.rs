//! The filesystem's operations: namespace, attributes, data, space, sync.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use iomap::{Advice, IomapOps, OpenFile, RaState, SliceSource};
use iomap_dev::{BlockDeviceExt, DevAddr};

use crate::error::{Error, Result};
use crate::fs::{max_file_size, ExtentFs, Node};
use crate::journal::Txn;
use crate::meta::{
    Attr, Body, Ext, FileType, Ino, Inode, Op, Target, Time, INLINE_MAX, LINK_MAX, NAME_MAX,
    ROOT_INO, SYMLINK_MAX, XATTR_NAME_MAX, XATTR_VALUE_MAX,
};

/// An inode's attributes as `stat` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Inode number.
    pub ino: Ino,
    /// Type.
    pub kind: FileType,
    /// Permission bits.
    pub perm: u16,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte sectors allocated (including reservations).
    pub blocks: u64,
    /// Last access.
    pub atime: Time,
    /// Last data change.
    pub mtime: Time,
    /// Last inode change.
    pub ctime: Time,
    /// Creation.
    pub crtime: Time,
    /// Device number.
    pub rdev: u32,
    /// Preferred I/O size.
    pub blksize: u32,
}

/// Attribute changes for [`ExtentFs::setattr`]; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    /// Permission bits.
    pub perm: Option<u16>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// Size (truncate or extend).
    pub size: Option<u64>,
    /// Access time.
    pub atime: Option<Time>,
    /// Modification time.
    pub mtime: Option<Time>,
}

/// A directory entry from [`ExtentFs::readdir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode named.
    pub ino: Ino,
    /// Its type.
    pub kind: FileType,
    /// The name.
    pub name: Vec<u8>,
    /// Pass this to `readdir` to continue after this entry.
    pub offset: u64,
}

/// Filesystem totals for `statfs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    /// Block size.
    pub bsize: u32,
    /// Blocks for data.
    pub blocks: u64,
    /// Blocks free.
    pub bfree: u64,
    /// Blocks free for new data.
    pub bavail: u64,
    /// Inodes in use.
    pub files: u64,
    /// Inodes that can still be made.
    pub ffree: u64,
    /// Longest name.
    pub namelen: u32,
}

/// SEEK_DATA or SEEK_HOLE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whence {
    /// The next data at or after the offset.
    Data,
    /// The next hole at or after the offset.
    Hole,
}

/// An open regular file: what it has seen of writeback errors, and its readahead state.
pub struct FileHandle {
    ino: Ino,
    node: Arc<Node>,
    open: OpenFile,
    ra: RaState,
}

impl FileHandle {
    /// The inode.
    pub fn ino(&self) -> Ino {
        self.ino
    }
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(Error::NameTooLong {
            len: name.len(),
            max: NAME_MAX,
        });
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Error::Invalid(format!(
            "{:?} is not a valid name",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

/// Whether `fallocate` mode bits are among those extentfs knows.
const FALLOC_KNOWN: i32 = libc::FALLOC_FL_KEEP_SIZE
    | libc::FALLOC_FL_PUNCH_HOLE
    | libc::FALLOC_FL_ZERO_RANGE
    | libc::FALLOC_FL_COLLAPSE_RANGE
    | libc::FALLOC_FL_INSERT_RANGE;

fn dir_entry(t: &Txn<'_>, dir: Ino, name: &[u8]) -> Result<Option<crate::meta::Dirent>> {
    match &t.meta().inode(dir)?.body {
        Body::Dir { entries, .. } => Ok(entries.get(name).copied()),
        _ => Err(Error::NotDir),
    }
}

impl ExtentFs {
    fn stat_of(&self, ino: Ino, inode: &Inode, size: Option<u64>) -> Stat {
        let a = &inode.attr;
        let bs = self.shared.bs;
        let (size, blocks) = match &inode.body {
            Body::File(f) => {
                let used = match &f.inline {
                    Some(d) => (d.read().len() as u64).div_ceil(512),
                    None => (f.map.total() + f.cow.total()) * (bs / 512),
                };
                (size.unwrap_or(a.size), used)
            }
            Body::Symlink(t) => (t.len() as u64, 0),
            Body::Dir { entries, .. } => (entries.len() as u64 + 2, 0),
            Body::Special => (0, 0),
        };
        Stat {
            ino,
            kind: a.kind,
            perm: a.perm,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            size,
            blocks,
            atime: a.atime,
            mtime: a.mtime,
            ctime: a.ctime,
            crtime: a.crtime,
            rdev: a.rdev,
            blksize: self.shared.bs as u32,
        }
    }

    fn live_size(&self, ino: Ino) -> Option<u64> {
        self.nodes.lock().get(&ino).map(|n| n.mapping.size())
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: Ino) -> Result<Stat> {
        let size = self.live_size(ino);
        let st = self.shared.state.lock();
        Ok(self.stat_of(ino, st.meta.inode(ino)?, size))
    }

    /// Looks `name` up in directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Stat> {
        if name.len() > NAME_MAX {
            return Err(Error::NameTooLong {
                len: name.len(),
                max: NAME_MAX,
            });
        }
        let ino = {
            let st = self.shared.state.lock();
            match &st.meta.inode(parent)?.body {
                Body::Dir {
                    entries,
                    parent: up,
                    ..
                } => match name {
                    b"." => parent,
                    b".." => *up,
                    _ => entries.get(name).ok_or(Error::NotFound)?.ino,
                },
                _ => return Err(Error::NotDir),
            }
        };
        self.getattr(ino)
    }

    /// Creates `name` in `parent`: a file, directory, device, pipe or socket (`kind`), or a
    /// symlink to `target`.
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileType,
        perm: u16,
        uid: u32,
        gid: u32,
        rdev: u32,
        target: &[u8],
    ) -> Result<Stat> {
        check_name(name)?;
        if kind == FileType::Symlink && (target.is_empty() || target.len() > SYMLINK_MAX) {
            if target.is_empty() {
                return Err(Error::NotFound);
            }
            return Err(Error::NameTooLong {
                len: target.len(),
                max: SYMLINK_MAX,
            });
        }
        let ino = self.shared.txn(|t| {
            let pattr = t.meta().inode(parent)?.attr;
            if dir_entry(t, parent, name)?.is_some() {
                return Err(Error::Exists);
            }
            if pattr.nlink == 0 {
                return Err(Error::NotFound);
            }
            if kind == FileType::Dir && pattr.nlink >= LINK_MAX {
                return Err(Error::TooManyLinks(LINK_MAX));
            }
            let ino = t.meta().next_ino;
            if ino == Ino::MAX {
                // Refused before any op: an op failing part-way shuts the filesystem down.
                return Err(Error::NoSpace);
            }
            let mut attr = Attr::new(kind, perm, uid, gid);
            attr.rdev = rdev;
            if kind == FileType::Symlink {
                attr.size = target.len() as u64;
            }
            t.op(Op::Create {
                ino,
                attr,
                target: if kind == FileType::Symlink {
                    target.to_vec()
                } else {
                    Vec::new()
                },
            })?;
            t.op(Op::DirAdd {
                dir: parent,
                name: name.to_vec(),
                ino,
                kind,
            })?;
            let mut pattr = pattr;
            pattr.mtime = attr.ctime;
            pattr.ctime = attr.ctime;
            if kind == FileType::Dir {
                pattr.nlink += 1;
            }
            t.op(Op::SetAttr {
                ino: parent,
                attr: pattr,
            })?;
            Ok(ino)
        })?;
        self.getattr(ino)
    }

    /// Creates a regular file.
    pub fn create(&self, parent: Ino, name: &[u8], perm: u16, uid: u32, gid: u32) -> Result<Stat> {
        self.mknod(parent, name, FileType::File, perm, uid, gid, 0, &[])
    }

    /// Creates a directory.
    pub fn mkdir(&self, parent: Ino, name: &[u8], perm: u16, uid: u32, gid: u32) -> Result<Stat> {
        self.mknod(parent, name, FileType::Dir, perm, uid, gid, 0, &[])
    }

    /// Creates a symlink to `target`.
    pub fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Stat> {
        self.mknod(parent, name, FileType::Symlink, 0o777, uid, gid, 0, target)
    }

    /// A symlink's target.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let st = self.shared.state.lock();
        match &st.meta.inode(ino)?.body {
            Body::Symlink(t) => Ok(t.clone()),
            _ => Err(Error::Invalid(format!("inode {ino} is not a symlink"))),
        }
    }

    /// Adds a hard link `newparent/newname` to `ino`.
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> Result<Stat> {
        check_name(newname)?;
        self.shared.txn(|t| {
            let mut attr = t.meta().inode(ino)?.attr;
            if attr.kind == FileType::Dir {
                return Err(Error::NotPermitted("hard links to directories"));
            }
            if dir_entry(t, newparent, newname)?.is_some() {
                return Err(Error::Exists);
            }
            if attr.nlink == 0 {
                return Err(Error::NotFound);
            }
            if attr.nlink >= LINK_MAX {
                return Err(Error::TooManyLinks(LINK_MAX));
            }
            let now = Time::now();
            attr.nlink += 1;
            attr.ctime = now;
            t.op(Op::SetAttr { ino, attr })?;
            t.op(Op::DirAdd {
                dir: newparent,
                name: newname.to_vec(),
                ino,
                kind: attr.kind,
            })?;
            touch_dir(t, newparent, now, 0)
        })?;
        self.getattr(ino)
    }

    /// Removes the non-directory `name` from `parent`.
    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        check_name(name)?;
        let freed = self.shared.txn(|t| {
            let de = dir_entry(t, parent, name)?.ok_or(Error::NotFound)?;
            if de.kind == FileType::Dir {
                return Err(Error::IsDir);
            }
            let now = Time::now();
            t.op(Op::DirRemove {
                dir: parent,
                name: name.to_vec(),
            })?;
            touch_dir(t, parent, now, 0)?;
            self.drop_link(t, de.ino, now)
        })?;
        self.forget(freed)
    }

    /// Drops one link of `ino`. Returns the inode when no link remains: the caller frees it
    /// with [`Self::forget`] once the transaction is done.
    fn drop_link(&self, t: &mut Txn<'_>, ino: Ino, now: Time) -> Result<Option<Ino>> {
        let mut attr = t.meta().inode(ino)?.attr;
        attr.nlink = attr
            .nlink
            .saturating_sub(if attr.kind == FileType::Dir { 2 } else { 1 });
        attr.ctime = now;
        t.op(Op::SetAttr { ino, attr })?;
        Ok((attr.nlink == 0).then_some(ino))
    }

    /// Frees an inode that lost its last link, unless it is open (then its last close does).
    /// Its cached data is dropped first, waiting for writeback in flight, so that no write
    /// can still land in its blocks once they are free. A crash before the free leaves an
    /// inode without links, which the next mount frees.
    fn forget(&self, unlinked: Option<Ino>) -> Result<()> {
        let Some(ino) = unlinked else {
            return Ok(());
        };
        let node = self.nodes.lock().get(&ino).cloned();
        if let Some(node) = &node {
            if node.opens.load(Ordering::Acquire) > 0 {
                return Ok(());
            }
            let _io = node.io.write();
            let _inval = node.mapping.invalidate_lock().write();
            node.mapping.truncate_to(0);
        }
        self.shared.txn(|t| match t.meta().inodes.get(&ino) {
            Some(i) if i.attr.nlink == 0 => t.op(Op::Free { ino }),
            _ => Ok(()),
        })?;
        self.nodes.lock().remove(&ino);
        Ok(())
    }

    /// Removes the empty directory `name` from `parent`.
    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        if name == b"." {
            return Err(Error::Invalid("cannot remove \".\"".into()));
        }
        if name == b".." {
            return Err(Error::NotEmpty);
        }
        check_name(name)?;
        self.shared.txn(|t| {
            let de = dir_entry(t, parent, name)?.ok_or(Error::NotFound)?;
            if de.kind != FileType::Dir {
                return Err(Error::NotDir);
            }
            if let Body::Dir { entries, .. } = &t.meta().inode(de.ino)?.body {
                if !entries.is_empty() {
                    return Err(Error::NotEmpty);
                }
            }
            let now = Time::now();
            t.op(Op::DirRemove {
                dir: parent,
                name: name.to_vec(),
            })?;
            touch_dir(t, parent, now, -1)?;
            t.op(Op::Free { ino: de.ino })?;
            Ok(())
        })
    }

    /// Renames `parent/name` to `newparent/newname`. `noreplace`: fail with EEXIST if the
    /// target exists; `exchange`: swap the two, which must both exist.
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        noreplace: bool,
        exchange: bool,
    ) -> Result<()> {
        check_name(name)?;
        check_name(newname)?;
        if noreplace && exchange {
            return Err(Error::Invalid(
                "RENAME_NOREPLACE and RENAME_EXCHANGE together".into(),
            ));
        }
        let freed = self.shared.txn(|t| {
            let src = dir_entry(t, parent, name)?.ok_or(Error::NotFound)?;
            let dst = dir_entry(t, newparent, newname)?;
            if let FileType::Dir = t.meta().inode(newparent)?.attr.kind {
            } else {
                return Err(Error::NotDir);
            }
            if src.kind == FileType::Dir && is_ancestor(t, src.ino, newparent)? {
                return Err(Error::Invalid("cannot move a directory into itself".into()));
            }
            let now = Time::now();
            if exchange {
                let dst = dst.ok_or(Error::NotFound)?;
                if dst.ino == src.ino {
                    // A name exchanged with itself, or with another link to its inode.
                    return Ok(None);
                }
                if dst.kind == FileType::Dir && is_ancestor(t, dst.ino, parent)? {
                    return Err(Error::Invalid("cannot move a directory into itself".into()));
                }
                if parent != newparent {
                    let d =
                        i32::from(src.kind == FileType::Dir) - i32::from(dst.kind == FileType::Dir);
                    room_for_links(t, newparent, d)?;
                    room_for_links(t, parent, -d)?;
                }
                t.op(Op::DirRemove {
                    dir: parent,
                    name: name.to_vec(),
                })?;
                t.op(Op::DirRemove {
                    dir: newparent,
                    name: newname.to_vec(),
                })?;
                t.op(Op::DirAdd {
                    dir: parent,
                    name: name.to_vec(),
                    ino: dst.ino,
                    kind: dst.kind,
                })?;
                t.op(Op::DirAdd {
                    dir: newparent,
                    name: newname.to_vec(),
                    ino: src.ino,
                    kind: src.kind,
                })?;
                let d = i32::from(src.kind == FileType::Dir) - i32::from(dst.kind == FileType::Dir);
                if parent != newparent {
                    touch_dir(t, parent, now, -d)?;
                    touch_dir(t, newparent, now, d)?;
                } else {
                    touch_dir(t, parent, now, 0)?;
                }
                for ino in [src.ino, dst.ino] {
                    let mut a = t.meta().inode(ino)?.attr;
                    a.ctime = now;
                    t.op(Op::SetAttr { ino, attr: a })?;
                }
                return Ok(None);
            }
            let mut freed = None;
            if let Some(dst) = dst {
                if noreplace {
                    return Err(Error::Exists);
                }
                if dst.ino == src.ino {
                    return Ok(None);
                }
                match (src.kind == FileType::Dir, dst.kind == FileType::Dir) {
                    (true, false) => return Err(Error::NotDir),
                    (false, true) => return Err(Error::IsDir),
                    (true, true) => {
                        if let Body::Dir { entries, .. } = &t.meta().inode(dst.ino)?.body {
                            if !entries.is_empty() {
                                return Err(Error::NotEmpty);
                            }
                        }
                    }
                    (false, false) => {}
                }
            } else if parent != newparent && src.kind == FileType::Dir {
                room_for_links(t, newparent, 1)?;
            }
            if let Some(dst) = dst {
                t.op(Op::DirRemove {
                    dir: newparent,
                    name: newname.to_vec(),
                })?;
                if dst.kind == FileType::Dir {
                    touch_dir(t, newparent, now, -1)?;
                    t.op(Op::Free { ino: dst.ino })?;
                } else {
                    freed = self.drop_link(t, dst.ino, now)?;
                }
            }
            t.op(Op::DirRemove {
                dir: parent,
                name: name.to_vec(),
            })?;
            t.op(Op::DirAdd {
                dir: newparent,
                name: newname.to_vec(),
                ino: src.ino,
                kind: src.kind,
            })?;
            let d = i32::from(src.kind == FileType::Dir);
            if parent != newparent {
                touch_dir(t, parent, now, -d)?;
                touch_dir(t, newparent, now, d)?;
            } else {
                touch_dir(t, parent, now, 0)?;
            }
            let mut a = t.meta().inode(src.ino)?.attr;
            a.ctime = now;
            t.op(Op::SetAttr {
                ino: src.ino,
                attr: a,
            })?;
            Ok(freed)
        })?;
        self.forget(freed)
    }

    /// Entries of directory `ino` after `offset` (0: from the start, with "." and "..").
    /// Offsets stay valid while entries come and go.
    pub fn readdir(&self, ino: Ino, offset: u64) -> Result<Vec<DirEntry>> {
        self.readdir_page(ino, offset, usize::MAX)
    }

    /// At most `max` entries of directory `ino` after `offset`, as [`Self::readdir`]: a
    /// caller that sends them a page at a time copies only what it sends.
    pub fn readdir_page(&self, ino: Ino, offset: u64, max: usize) -> Result<Vec<DirEntry>> {
        let st = self.shared.state.lock();
        let Body::Dir {
            entries,
            order,
            parent,
            ..
        } = &st.meta.inode(ino)?.body
        else {
            return Err(Error::NotDir);
        };
        let mut out = Vec::new();
        if offset < 1 {
            out.push(DirEntry {
                ino,
                kind: FileType::Dir,
                name: b".".to_vec(),
                offset: 1,
            });
        }
        if offset < 2 {
            out.push(DirEntry {
                ino: *parent,
                kind: FileType::Dir,
                name: b"..".to_vec(),
                offset: 2,
            });
        }
        for (&cookie, name) in order.range(offset.max(2) + 1..) {
            if out.len() >= max {
                break;
            }
            if let Some(de) = entries.get(name) {
                out.push(DirEntry {
                    ino: de.ino,
                    kind: de.kind,
                    name: name.clone(),
                    offset: cookie,
                });
            }
        }
        Ok(out)
    }

    /// Changes attributes; a size change truncates or extends.
    pub fn setattr(&self, ino: Ino, set: SetAttr) -> Result<Stat> {
        if let Some(size) = set.size {
            self.truncate(ino, size)?;
        }
        if set.perm.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.atime.is_some()
            || set.mtime.is_some()
        {
            self.shared.txn(|t| {
                let mut a = t.meta().inode(ino)?.attr;
                if let Some(p) = set.perm {
                    a.perm = p & 0o7777;
                }
                if let Some(u) = set.uid {
                    a.uid = u;
                }
                if let Some(g) = set.gid {
                    a.gid = g;
                }
                if let Some(at) = set.atime {
                    a.atime = at;
                }
                if let Some(m) = set.mtime {
                    a.mtime = m;
                }
                a.ctime = Time::now();
                t.op(Op::SetAttr { ino, attr: a })
            })?;
        }
        self.getattr(ino)
    }

    /// Filesystem totals.
    pub fn statfs(&self) -> StatFs {
        let st = self.shared.state.lock();
        let m = &st.meta;
        let busy: u64 = st.busy.iter().map(|b| b.1).sum();
        let free = m.free.free_blocks() + busy;
        StatFs {
            bsize: self.shared.bs as u32,
            blocks: m.total_blocks - m.data_start,
            bfree: free.saturating_sub(st.reserved),
            bavail: st.available(),
            files: m.inodes.len() as u64,
            // A checkpoint may carry any next inode number, even one past the half.
            ffree: (u64::MAX / 2).saturating_sub(m.next_ino),
            namelen: NAME_MAX as u32,
        }
    }

    // ---- extended attributes ----

    /// The value of extended attribute `name`.
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        let st = self.shared.state.lock();
        st.meta
            .inode(ino)?
            .xattrs
            .get(name)
            .cloned()
            .ok_or(Error::NoAttr)
    }

    /// Names of the extended attributes.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let st = self.shared.state.lock();
        Ok(st.meta.inode(ino)?.xattrs.keys().cloned().collect())
    }

    /// Sets extended attribute `name`; `create`: fail if it exists, `replace`: fail if not.
    pub fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> Result<()> {
        if name.is_empty() || name.len() > XATTR_NAME_MAX {
            return Err(Error::NameTooLong {
                len: name.len(),
                max: XATTR_NAME_MAX,
            });
        }
        if value.len() > XATTR_VALUE_MAX {
            return Err(Error::AttrTooBig {
                len: value.len(),
                max: XATTR_VALUE_MAX,
            });
        }
        self.shared.txn(|t| {
            let inode = t.meta().inode(ino)?;
            let exists = inode.xattrs.contains_key(name);
            if create && exists {
                return Err(Error::Exists);
            }
            if replace && !exists {
                return Err(Error::NoAttr);
            }
            let mut a = inode.attr;
            a.ctime = Time::now();
            t.op(Op::SetXattr {
                ino,
                name: name.to_vec(),
                value: Some(value.to_vec()),
            })?;
            t.op(Op::SetAttr { ino, attr: a })
        })
    }

    /// Removes extended attribute `name`.
    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.shared.txn(|t| {
            let inode = t.meta().inode(ino)?;
            if !inode.xattrs.contains_key(name) {
                return Err(Error::NoAttr);
            }
            let mut a = inode.attr;
            a.ctime = Time::now();
            t.op(Op::SetXattr {
                ino,
                name: name.to_vec(),
                value: None,
            })?;
            t.op(Op::SetAttr { ino, attr: a })
        })
    }

    // ---- open files and data ----

    /// Opens regular file `ino`.
    pub fn open(&self, ino: Ino) -> Result<FileHandle> {
        let node = self.node(ino)?;
        node.opens.fetch_add(1, Ordering::AcqRel);
        let open = OpenFile::open(&node.mapping);
        Ok(FileHandle {
            ino,
            node,
            open,
            ra: RaState::default(),
        })
    }

    /// Closes a handle; reports a writeback error this handle has not seen (as `flush`
    /// does). The last close of an unlinked file frees it.
    pub fn release(&self, fh: FileHandle) -> Result<()> {
        let res = fh.open.check_and_advance().map_err(Error::from);
        if fh.node.opens.fetch_sub(1, Ordering::AcqRel) == 1 {
            let orphan = {
                let st = self.shared.state.lock();
                st.meta
                    .inodes
                    .get(&fh.ino)
                    .is_some_and(|i| i.attr.nlink == 0)
            };
            if orphan && !self.shared.read_only {
                self.forget(Some(fh.ino))?;
            }
        }
        res
    }

    /// Reports a writeback error this handle has not seen yet (close-time `flush`), without
    /// marking it seen: every close of the open file reports it until an fsync does.
    pub fn flush(&self, fh: &FileHandle) -> Result<()> {
        fh.open.check().map_err(Error::from)
    }

    /// Reads at `pos` into `buf`; returns the bytes read (short at end of file).
    pub fn read(&self, ino: Ino, pos: u64, buf: &mut [u8]) -> Result<usize> {
        let node = self.node(ino)?;
        Ok(iomap::buffered_read(&node.mapping, &*node.map, pos, buf)?)
    }

    /// Reads at `pos` into `buf` through an open file, reading ahead as its access pattern
    /// calls for; returns the bytes read (short at end of file).
    pub fn read_fh(&self, fh: &FileHandle, pos: u64, buf: &mut [u8]) -> Result<usize> {
        let node = &fh.node;
        Ok(iomap::buffered_read_ra(
            &node.mapping,
            &*node.map,
            &fh.ra,
            pos,
            buf,
        )?)
    }

    /// Applies a `posix_fadvise` hint to an open file's later reads.
    pub fn fadvise(&self, fh: &FileHandle, advice: Advice) {
        fh.ra.advise(advice);
    }

    /// Writes `data` at `pos`; returns the bytes written.
    pub fn write(&self, ino: Ino, pos: u64, data: &[u8]) -> Result<usize> {
        self.shared.check_live()?;
        if self.shared.read_only {
            return Err(Error::ReadOnly);
        }
        let node = self.node(ino)?;
        let _io = node.io.write();
        let len = data.len() as u64;
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= max_file_size(self.shared.bs))
            .ok_or(Error::FileTooBig(max_file_size(self.shared.bs)))?;
        if len == 0 {
            return Ok(0);
        }
        let inline = self.is_inline(ino)?;
        if inline && end > self.inline_max() {
            self.uninline(ino, &node)?;
        }
        let size = node.mapping.size();
        if pos > size && !inline {
            iomap::zero_range(&node.mapping, &*node.map, size, pos - size)?;
        }
        let n = iomap::buffered_write(
            &node.mapping,
            &*node.map,
            pos,
            len,
            &mut SliceSource::new(data),
        );
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                self.after_write(ino, &node, inline && end <= self.inline_max())?;
                return Err(e.into());
            }
        };
        self.after_write(ino, &node, inline && end <= self.inline_max())?;
        Ok(n as usize)
    }

    fn inline_max(&self) -> u64 {
        (INLINE_MAX as u64).min(self.shared.bs)
    }

    fn is_inline(&self, ino: Ino) -> Result<bool> {
        let st = self.shared.state.lock();
        Ok(st
            .meta
            .inode(ino)?
            .file()
            .is_some_and(|f| f.inline.is_some()))
    }

    /// Logs what a write changed: inline data and size for inline files, times for all.
    fn after_write(&self, ino: Ino, node: &Node, inline: bool) -> Result<()> {
        let now = Time::now();
        if inline {
            let size = node.mapping.size();
            return self.shared.txn(|t| {
                let inode = t.meta().inode(ino)?;
                let Some(data) = inode.file().and_then(|f| f.inline.clone()) else {
                    return Ok(());
                };
                let mut bytes = data.read().clone();
                bytes.resize(size as usize, 0);
                let mut a = inode.attr;
                a.size = size;
                a.mtime = now;
                a.ctime = now;
                t.op(Op::SetInline {
                    ino,
                    data: Some(bytes),
                })?;
                t.op(Op::SetAttr { ino, attr: a })
            });
        }
        let mut st = self.shared.state.lock();
        if let Ok(i) = st.meta.inode_mut(ino) {
            i.attr.mtime = now;
            i.attr.ctime = now;
            st.dirty_attrs.insert(ino);
        }
        Ok(())
    }

    /// Moves an inline file's data to a block on the device, written before the metadata
    /// that points at it is logged.
    fn uninline(&self, ino: Ino, node: &Node) -> Result<()> {
        let bs = self.shared.bs;
        let data = {
            let st = self.shared.state.lock();
            match st.meta.inode(ino)?.file().and_then(|f| f.inline.clone()) {
                Some(d) => d.read().clone(),
                None => return Ok(()),
            }
        };
        let size = node.mapping.size();
        // Drop the cached copy of the inline data: the block's contents go through the cache
        // from now on, read back from the device.
        {
            let _inval = node.mapping.invalidate_lock().write();
            node.mapping
                .truncate_range(0, node.mapping.max_folio_size() as u64);
        }
        if data.iter().all(|&b| b == 0) || size == 0 {
            return self.shared.txn(|t| t.op(Op::SetInline { ino, data: None }));
        }
        let block = self.shared.txn(|t| {
            if t.st.available() == 0 {
                return Err(Error::NoSpace);
            }
            let hint = t.st.meta.data_start;
            t.st.meta
                .free
                .alloc(1, hint)
                .map(|(b, _)| b)
                .ok_or(Error::NoSpace)
        })?;
        let mut buf = data.clone();
        buf.resize(bs as usize, 0);
        if let Err(e) = self.shared.dev.write_at(DevAddr(block * bs), &buf) {
            let _ = self.shared.state.lock().meta.free.free(block, 1);
            return Err(e.into());
        }
        self.shared.txn(|t| {
            t.op(Op::SetInline { ino, data: None })?;
            t.op(Op::Map {
                ino,
                lblk: 0,
                len: 1,
                to: Target::Written(block),
            })?;
            let mut a = t.meta().inode(ino)?.attr;
            a.size = a.size.max(data.len() as u64);
            t.op(Op::SetAttr { ino, attr: a })
        })
    }

    /// Truncates or extends `ino` to `size`.
    pub fn truncate(&self, ino: Ino, size: u64) -> Result<()> {
        self.shared.check_live()?;
        if self.shared.read_only {
            return Err(Error::ReadOnly);
        }
        if size > max_file_size(self.shared.bs) {
            return Err(Error::FileTooBig(max_file_size(self.shared.bs)));
        }
        let node = self.node(ino)?;
        let _io = node.io.write();
        let m = &node.mapping;
        let old = m.size();
        let now = Time::now();
        let mut inline = self.is_inline(ino)?;
        if inline && size > self.inline_max() {
            self.uninline(ino, &node)?;
            inline = false;
        }
        if inline {
            {
                let _inval = m.invalidate_lock().write();
                m.truncate_to(size);
            }
            m.set_size(size);
            return self.shared.txn(|t| {
                let inode = t.meta().inode(ino)?;
                let Some(data) = inode.file().and_then(|f| f.inline.clone()) else {
                    return Ok(());
                };
                let bytes = {
                    let mut d = data.write();
                    d.resize(size as usize, 0);
                    d.clone()
                };
                let mut a = inode.attr;
                a.size = size;
                a.mtime = now;
                a.ctime = now;
                t.op(Op::SetInline {
                    ino,
                    data: Some(bytes),
                })?;
                t.op(Op::SetAttr { ino, attr: a })
            });
        }
        let bs = self.shared.bs;
        if size > old {
            iomap::zero_range(m, &*node.map, old, size - old)?;
            // The zeroed tail of the old last block goes to disk before the size that
            // exposes it.
            let tail = old / bs * bs;
            iomap::write_and_wait_range(m, &node.wb, tail, old.div_ceil(bs) * bs)?;
            m.set_size(size);
        } else {
            // Shrinking, or the same size: either way blocks past the new end (preallocated
            // past EOF with KEEP_SIZE) are freed, as truncate does on Linux.
            iomap::truncate_page(m, &*node.map, size)?;
            let tail = size / bs * bs;
            iomap::write_and_wait_range(m, &node.wb, tail, size.div_ceil(bs) * bs)?;
            let _inval = m.invalidate_lock().write();
            m.truncate_to(size);
        }
        let first = size.div_ceil(bs);
        self.shared.txn(|t| {
            let mut a = t.meta().inode(ino)?.attr;
            if size <= old {
                t.op(Op::Map {
                    ino,
                    lblk: first,
                    len: u64::MAX - first,
                    to: Target::Hole,
                })?;
            }
            a.size = size;
            a.mtime = now;
            a.ctime = now;
            t.op(Op::SetAttr { ino, attr: a })
        })
    }

    /// Before a file grows from `old` by anything but a write over the gap: zeroes the tail
    /// of the block holding the old end of file, and writes it back. That block can hold
    /// bytes past the end (written before a crash that lost the size raise, say), and the
    /// zeros must reach the disk before the size that would expose those bytes.
    fn zero_eof_tail(&self, node: &Node, old: u64) -> Result<()> {
        let bs = self.shared.bs;
        if old % bs == 0 {
            return Ok(());
        }
        iomap::truncate_page(&node.mapping, &*node.map, old)?;
        let tail = old / bs * bs;
        iomap::write_and_wait_range(&node.mapping, &node.wb, tail, tail + bs)?;
        Ok(())
    }

    /// `fallocate(2)` with `mode` made of `FALLOC_FL_*` bits.
    pub fn fallocate(&self, ino: Ino, mode: i32, offset: u64, len: u64) -> Result<()> {
        self.shared.check_live()?;
        if self.shared.read_only {
            return Err(Error::ReadOnly);
        }
        if mode & !FALLOC_KNOWN != 0 {
            return Err(Error::Unsupported("fallocate mode"));
        }
        let max = max_file_size(self.shared.bs);
        if len == 0 {
            return Err(Error::Invalid("fallocate of zero bytes".into()));
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= max)
            .ok_or(Error::FileTooBig(max))?;
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let node = self.node(ino)?;
        let _io = node.io.write();
        if self.is_inline(ino)? {
            self.uninline(ino, &node)?;
        }
        let bs = self.shared.bs;
        let m = &node.mapping;
        let size = m.size();
        let now = Time::now();
        let exclusive = |bits: i32| (mode & !libc::FALLOC_FL_KEEP_SIZE) == bits;
        if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
            if !keep || !exclusive(libc::FALLOC_FL_PUNCH_HOLE) {
                return Err(Error::Invalid(
                    "PUNCH_HOLE needs KEEP_SIZE and nothing else".into(),
                ));
            }
            self.punch(ino, &node, offset, end.min(size.max(offset)))?;
            return self.touch(ino, now);
        }
        if mode & libc::FALLOC_FL_COLLAPSE_RANGE != 0 || mode & libc::FALLOC_FL_INSERT_RANGE != 0 {
            let collapse = mode & libc::FALLOC_FL_COLLAPSE_RANGE != 0;
            if mode != libc::FALLOC_FL_COLLAPSE_RANGE && mode != libc::FALLOC_FL_INSERT_RANGE {
                return Err(Error::Invalid(
                    "COLLAPSE_RANGE and INSERT_RANGE take no other flags".into(),
                ));
            }
            if offset % bs != 0 || len % bs != 0 {
                return Err(Error::Invalid(format!(
                    "offset and length must be multiples of the block size {bs}"
                )));
            }
            if collapse && end >= size {
                return Err(Error::Invalid(
                    "COLLAPSE_RANGE must end before the end of the file".into(),
                ));
            }
            if !collapse && offset >= size {
                return Err(Error::Invalid(
                    "INSERT_RANGE must start inside the file".into(),
                ));
            }
            if !collapse && size.checked_add(len).is_none_or(|s| s > max) {
                return Err(Error::FileTooBig(max));
            }
            drop_cached(&node, offset, u64::MAX)?;
            let (b, n) = (offset / bs, len / bs);
            let new_size = if collapse { size - len } else { size + len };
            self.shared.txn(|t| {
                if collapse {
                    t.op(Op::Map {
                        ino,
                        lblk: b,
                        len: n,
                        to: Target::Hole,
                    })?;
                    t.op(Op::Shift {
                        ino,
                        from: b + n,
                        delta: n,
                        up: false,
                    })?;
                } else {
                    t.op(Op::Shift {
                        ino,
                        from: b,
                        delta: n,
                        up: true,
                    })?;
                }
                let mut a = t.meta().inode(ino)?.attr;
                a.size = new_size;
                a.mtime = now;
                a.ctime = now;
                t.op(Op::SetAttr { ino, attr: a })
            })?;
            m.set_size(new_size);
            return Ok(());
        }
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        if !keep && end > size {
            self.zero_eof_tail(&node, size)?;
        }
        if zero {
            // Edges are zeroed in the cache; whole blocks become unwritten extents.
            self.punch(ino, &node, offset, end.min(size.max(offset)))?;
        }
        let (first, last) = (offset / bs, end.div_ceil(bs));
        let (first, last) = if zero {
            (offset.div_ceil(bs), end / bs)
        } else {
            (first, last)
        };
        let mut at = first;
        while at < last {
            let res = self.shared.txn(|t| {
                let f = t.meta().inode(ino)?.file().ok_or(Error::IsDir)?;
                let run = match f.map.lookup(at) {
                    Some((_, l, _)) => return Ok(l.min(last - at)),
                    None => match f.map.next_from(at) {
                        Some((s, _, _)) if s < last => s - at,
                        _ => last - at,
                    },
                };
                let avail = t.st.available();
                if avail == 0 {
                    return Err(Error::NoSpace);
                }
                let hint = match at.checked_sub(1).and_then(|p| f.map.lookup(p)) {
                    Some((_, _, v)) => v.block().map_or(t.st.meta.data_start, |b| b + 1),
                    None => t.st.meta.data_start,
                };
                let (p, got) =
                    t.st.meta
                        .free
                        .alloc(run.min(avail), hint)
                        .ok_or(Error::NoSpace)?;
                t.op(Op::Map {
                    ino,
                    lblk: at,
                    len: got,
                    to: Target::Unwritten(p),
                })?;
                Ok(got)
            });
            match res {
                Ok(n) => at += n,
                Err(Error::NoSpace) if self.shared.state.lock().busy.iter().any(|b| b.1 > 0) => {
                    self.shared.commit()?
                }
                Err(e) => return Err(e),
            }
        }
        if !keep && end > size {
            m.set_size(end);
            self.shared.txn(|t| {
                let mut a = t.meta().inode(ino)?.attr;
                a.size = end;
                a.mtime = now;
                a.ctime = now;
                t.op(Op::SetAttr { ino, attr: a })
            })?;
        } else {
            self.touch(ino, now)?;
        }
        Ok(())
    }

    fn touch(&self, ino: Ino, now: Time) -> Result<()> {
        let mut st = self.shared.state.lock();
        let i = st.meta.inode_mut(ino)?;
        i.attr.mtime = now;
        i.attr.ctime = now;
        st.dirty_attrs.insert(ino);
        Ok(())
    }

    /// Zeroes `[start, end)`: partial blocks at the edges in the cache, whole blocks freed.
    fn punch(&self, ino: Ino, node: &Node, start: u64, end: u64) -> Result<()> {
        if start >= end {
            return Ok(());
        }
        let bs = self.shared.bs;
        let m = &node.mapping;
        let (fw, ew) = (start.div_ceil(bs), end / bs);
        if fw >= ew {
            iomap::zero_range(m, &*node.map, start, end - start)?;
            return Ok(());
        }
        iomap::zero_range(m, &*node.map, start, fw * bs - start)?;
        if end > ew * bs {
            iomap::zero_range(m, &*node.map, ew * bs, end - ew * bs)?;
        }
        {
            let _inval = m.invalidate_lock().write();
            m.truncate_range(fw * bs, ew * bs);
        }
        self.shared.txn(|t| {
            t.op(Op::Map {
                ino,
                lblk: fw,
                len: ew - fw,
                to: Target::Hole,
            })
        })
    }

    /// Copies `len` bytes from `src` at `soff` to `dst` at `doff`, sharing blocks where the
    /// ranges are block-aligned and copying otherwise. Returns the bytes copied.
    pub fn copy_file_range(
        &self,
        src: Ino,
        soff: u64,
        dst: Ino,
        doff: u64,
        len: u64,
    ) -> Result<u64> {
        let ssize = self.getattr(src)?.size;
        let dsize = self.getattr(dst)?.size;
        let len = len.min(ssize.saturating_sub(soff));
        if len == 0 {
            return Ok(0);
        }
        let bs = self.shared.bs;
        let tail_ok = len % bs == 0 || (soff + len == ssize && doff + len >= dsize);
        let overlap = src == dst && soff < doff + len && doff < soff + len;
        if overlap {
            return Err(Error::Invalid(
                "copy_file_range within one file must not overlap".into(),
            ));
        }
        if soff % bs == 0 && doff % bs == 0 && tail_ok {
            match self.clone_range(src, soff, dst, doff, len) {
                Ok(()) => return Ok(len),
                Err(Error::NoSpace | Error::Unsupported(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let mut buf = vec![0u8; (1 << 20).min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let want = buf.len().min((len - done) as usize);
            let n = self.read(src, soff + done, &mut buf[..want])?;
            if n == 0 {
                break;
            }
            self.write(dst, doff + done, &buf[..n])?;
            done += n as u64;
        }
        Ok(done)
    }

    /// Makes `[doff, doff + len)` of `dst` share the blocks of `[soff, soff + len)` of `src`
    /// (`FICLONERANGE`); offsets must be block-aligned, and so must the length unless the
    /// range ends at the end of `src`.
    pub fn clone_range(&self, src: Ino, soff: u64, dst: Ino, doff: u64, len: u64) -> Result<()> {
        self.shared.check_live()?;
        if self.shared.read_only {
            return Err(Error::ReadOnly);
        }
        let bs = self.shared.bs;
        let sn = self.node(src)?;
        let dn = self.node(dst)?;
        if len == 0 {
            return Ok(());
        }
        let ssize = sn.mapping.size();
        if soff % bs != 0 || doff % bs != 0 || (len % bs != 0 && soff + len != ssize) {
            return Err(Error::Invalid(format!(
                "clone ranges must be aligned to the block size {bs}"
            )));
        }
        if soff.checked_add(len).is_none_or(|e| e > ssize) {
            return Err(Error::Invalid(
                "clone source reaches past the end of the file".into(),
            ));
        }
        let max = max_file_size(bs);
        let dend = doff
            .checked_add(len)
            .filter(|&e| e <= max)
            .ok_or(Error::FileTooBig(max))?;
        if src == dst && soff < dend && doff < soff + len {
            return Err(Error::Invalid("clone ranges overlap".into()));
        }
        if len % bs != 0 && dend < dn.mapping.size() {
            // The whole last block is shared, so the range must end the destination too.
            return Err(Error::Invalid(
                "an unaligned clone must end at the end of both files".into(),
            ));
        }
        let _g1;
        let _g2;
        if src == dst {
            _g1 = sn.io.write();
        } else if src < dst {
            _g1 = sn.io.write();
            _g2 = dn.io.write();
        } else {
            _g2 = dn.io.write();
            _g1 = sn.io.write();
        }
        if self.is_inline(src)? {
            self.uninline(src, &sn)?;
        }
        if self.is_inline(dst)? {
            self.uninline(dst, &dn)?;
        }
        let nblocks = len.div_ceil(bs);
        iomap::write_and_wait_range(&sn.mapping, &sn.wb, soff, soff + nblocks * bs)?;
        let dsize = dn.mapping.size();
        if doff > dsize {
            self.zero_eof_tail(&dn, dsize)?;
        }
        drop_cached(&dn, doff, doff + nblocks * bs)?;
        let (sb, db) = (soff / bs, doff / bs);
        let now = Time::now();
        self.shared.txn(|t| {
            let sf = t.meta().inode(src)?.file().ok_or(Error::IsDir)?;
            let pieces: Vec<(u64, u64, Ext)> = sf.map.range(sb, sb + nblocks).collect();
            if pieces.iter().any(|p| p.2 == Ext::Delalloc) {
                return Err(Error::Invalid(
                    "clone source has unwritten-back data".into(),
                ));
            }
            t.op(Op::Map {
                ino: dst,
                lblk: db,
                len: nblocks,
                to: Target::Hole,
            })?;
            for (s, l, v) in pieces {
                if let Ext::Written(p) = v {
                    t.op(Op::Map {
                        ino: dst,
                        lblk: db + (s - sb),
                        len: l,
                        to: Target::Written(p),
                    })?;
                }
            }
            let mut a = t.meta().inode(dst)?.attr;
            // The logged size must cover the shared blocks, also where it lags the size in
            // memory for writes not yet done: otherwise recovery after a crash leaves them
            // mapped past the end of file, where growing the file would expose them.
            a.size = a.size.max(dend);
            a.mtime = now;
            a.ctime = now;
            t.op(Op::SetAttr { ino: dst, attr: a })
        })?;
        if dend > dsize {
            dn.mapping.set_size(dend);
        }
        Ok(())
    }

    /// `lseek` with SEEK_DATA or SEEK_HOLE.
    pub fn lseek(&self, ino: Ino, pos: u64, whence: Whence) -> Result<u64> {
        let node = self.node(ino)?;
        let map: &dyn IomapOps = &*node.map;
        Ok(match whence {
            Whence::Data => iomap::seek_data(&node.mapping, map, pos)?,
            Whence::Hole => iomap::seek_hole(&node.mapping, map, pos)?,
        })
    }

    /// fsync (`datasync`: fdatasync) of an open file: writes back, flushes, commits, and
    /// reports a writeback error this handle has not seen.
    pub fn fsync(&self, fh: &FileHandle, datasync: bool) -> Result<()> {
        fh.open.fsync(&fh.node.wb, 0, u64::MAX, datasync)?;
        Ok(())
    }

    /// Makes metadata (directories, attributes) durable: fsync of a directory or anything
    /// without an open handle.
    pub fn commit(&self) -> Result<()> {
        self.shared.commit()
    }

    /// Writes back every file, flushes and commits.
    pub fn syncfs(&self) -> Result<()> {
        let nodes: Vec<Arc<Node>> = self.nodes.lock().values().cloned().collect();
        let first = iomap::sync_mappings(nodes.iter().map(|n| (&n.mapping, &n.wb))).err();
        self.shared.commit()?;
        first.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Writes back and drops every clean cached folio (like `echo 3 > drop_caches`).
    pub fn drop_caches(&self) -> Result<()> {
        let nodes: Vec<Arc<Node>> = self.nodes.lock().values().cloned().collect();
        let mut first = None;
        for n in nodes {
            if let Err(e) = iomap::write_and_wait_range(&n.mapping, &n.wb, 0, u64::MAX) {
                first.get_or_insert(e);
            }
            n.mapping.release_clean(0, u64::MAX);
        }
        first.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Makes the folio at `pos` writable for a mapped write (`page_mkwrite`).
    pub fn page_mkwrite(&self, ino: Ino, pos: u64) -> Result<iomap::MkwriteFolio> {
        let node = self.node(ino)?;
        if self.is_inline(ino)? {
            let _io = node.io.write();
            self.uninline(ino, &node)?;
        }
        let f = iomap::page_mkwrite(&node.mapping, &*node.map, pos)?;
        self.touch(ino, Time::now())?;
        Ok(f)
    }

    /// Writes zeros over `[pos, pos + len)` inside the file through the cache.
    pub fn zero_range(&self, ino: Ino, pos: u64, len: u64) -> Result<()> {
        let node = self.node(ino)?;
        let _io = node.io.write();
        if self.is_inline(ino)? {
            self.uninline(ino, &node)?;
        }
        iomap::zero_range(&node.mapping, &*node.map, pos, len)?;
        Ok(())
    }

    /// Makes `[pos, pos + len)` of `ino` stop sharing blocks with other files.
    pub fn unshare(&self, ino: Ino, pos: u64, len: u64) -> Result<()> {
        let node = self.node(ino)?;
        let _io = node.io.write();
        iomap::file_unshare(&node.mapping, &*node.map, pos, len)?;
        Ok(())
    }
}

/// Writes back and drops every cached folio that overlaps `[start, end)`, whole: for
/// operations that move or replace extents under the cache (collapse, insert, clone), where
/// a folio kept because it straddles the range would hold data from before the move.
fn drop_cached(node: &Node, start: u64, end: u64) -> Result<()> {
    let m = &node.mapping;
    let align = m.max_folio_size() as u64;
    let (s, e) = (
        start / align * align,
        end.div_ceil(align).saturating_mul(align),
    );
    iomap::write_and_wait_range(m, &node.wb, s, e)?;
    let _inval = m.invalidate_lock().write();
    m.truncate_range(s, e);
    Ok(())
}

/// Updates a directory's times and link count (`dlink`: subdirectories added or removed).
fn touch_dir(t: &mut Txn<'_>, dir: Ino, now: Time, dlink: i32) -> Result<()> {
    let mut a = t.meta().inode(dir)?.attr;
    a.mtime = now;
    a.ctime = now;
    a.nlink = a.nlink.saturating_add_signed(dlink);
    if a.nlink > LINK_MAX {
        return Err(Error::TooManyLinks(LINK_MAX));
    }
    t.op(Op::SetAttr { ino: dir, attr: a })
}

/// Fails with EMLINK if directory `dir` cannot take `gain` more links: checked before a
/// transaction's first op, as [`touch_dir`] fails only after earlier ops have applied.
fn room_for_links(t: &Txn<'_>, dir: Ino, gain: i32) -> Result<()> {
    let nlink = t.meta().inode(dir)?.attr.nlink;
    if gain > 0 && nlink.saturating_add_signed(gain) > LINK_MAX {
        return Err(Error::TooManyLinks(LINK_MAX));
    }
    Ok(())
}

/// Whether `ancestor` is `ino` or one of its parents.
fn is_ancestor(t: &Txn<'_>, ancestor: Ino, mut ino: Ino) -> Result<bool> {
    for _ in 0..100_000 {
        if ino == ancestor {
            return Ok(true);
        }
        if ino == ROOT_INO {
            return Ok(false);
        }
        match &t.meta().inode(ino)?.body {
            Body::Dir { parent, .. } => ino = *parent,
            _ => return Ok(false),
        }
    }
    Err(Error::corrupt("directory tree", "a loop among parents"))
}

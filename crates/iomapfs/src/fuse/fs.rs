//! The FUSE filesystem: each kernel request becomes one extentfs call.
//!
//! Files are opened with `FOPEN_DIRECT_IO`, so every read and write reaches the engine and the
//! kernel keeps no second copy of file data; `FUSE_DIRECT_IO_ALLOW_MMAP` still lets programs
//! map files (the kernel caches mapped pages and writes them back through `write`). Requests
//! run on several threads at once; extentfs does its own locking.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use extentfs::{ExtentFs, SetAttr, Whence};
use fuser::{
    CopyFileRangeFlags, Errno, FileHandle, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::{debug, warn};

use super::attr::{file_attr, kind, kind_of_mode, time_or_now};
use super::handles::{Handles, OpenFile};
use crate::errno::fs_errno;
use crate::stats::{StatsSource, STATS_XATTR};

/// How long the kernel may trust names and attributes we return. Every change goes through
/// this daemon, and the kernel drops what it cached for the inodes each change touches.
const TTL: Duration = Duration::from_secs(1);

/// Entries asked of extentfs per readdir reply: more than a 4 KiB reply holds with short
/// names, so a page is filled in one call, without copying the rest of a large directory.
const READDIR_PAGE: usize = 256;

/// The largest read or write request the kernel sends (it also sizes readahead).
const MAX_REQUEST: u32 = 1 << 20;

/// extentfs served to the kernel.
pub struct FuseFs {
    fs: Arc<ExtentFs>,
    files: Handles,
    stats: Arc<StatsSource>,
}

thread_local! {
    /// Each request thread reads into its own buffer, kept between requests: fresh memory
    /// faults in far slower than a copy into a buffer already mapped.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn name_bytes(name: &OsStr) -> &[u8] {
    name.as_bytes()
}

impl FuseFs {
    /// Serves `fs`, whose cache keeps itself within its limits.
    pub fn new(fs: Arc<ExtentFs>, stats: Arc<StatsSource>) -> Self {
        Self {
            fs,
            files: Handles::default(),
            stats,
        }
    }

    /// Closes every handle the kernel did not release (the mount went away under them).
    pub fn release_all(&self) {
        for file in self.files.drain() {
            if let Err(e) = self.fs.release(file.fh) {
                debug!("closing a handle at unmount: {e}");
            }
        }
    }

    fn entry(&self, reply: ReplyEntry, st: extentfs::Result<extentfs::Stat>) {
        match st {
            Ok(st) => reply.entry(&TTL, &file_attr(&st), Generation(0)),
            Err(e) => reply.error(fs_errno(&e)),
        }
    }

    fn empty(reply: ReplyEmpty, res: extentfs::Result<()>) {
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fs_errno(&e)),
        }
    }

    fn open_file(&self, ino: u64, flags: OpenFlags) -> Result<u64, Errno> {
        let fh = self.fs.open(ino).map_err(|e| fs_errno(&e))?;
        let writable = flags.acc_mode() != OpenAccMode::O_RDONLY;
        Ok(self.files.insert(OpenFile { fh, writable }))
    }

    /// The owner, group and mode of a new inode in `parent` made by `req`: a directory with
    /// the setgid bit hands its group down, and to new directories the bit itself.
    fn new_owner(
        &self,
        req: &Request,
        parent: u64,
        mode: u32,
        dir: bool,
    ) -> Result<(u32, u32, u16), Errno> {
        let p = self.fs.getattr(parent).map_err(|e| fs_errno(&e))?;
        let mut perm = (mode & 0o7777) as u16;
        let gid = if p.perm & libc::S_ISGID as u16 != 0 {
            if dir {
                perm |= libc::S_ISGID as u16;
            }
            p.gid
        } else {
            req.gid()
        };
        Ok((req.uid(), gid, perm))
    }

    /// Drops the setuid and setgid bits and file capabilities a write by an unprivileged
    /// writer must take away: with direct I/O the kernel leaves this to the filesystem.
    fn kill_suid(&self, ino: u64) -> extentfs::Result<()> {
        let st = self.fs.getattr(ino)?;
        let mut perm = st.perm & !(libc::S_ISUID as u16);
        if st.perm & libc::S_IXGRP as u16 != 0 {
            perm &= !(libc::S_ISGID as u16);
        }
        if perm != st.perm {
            let set = SetAttr {
                perm: Some(perm),
                ..SetAttr::default()
            };
            self.fs.setattr(ino, set)?;
        }
        match self.fs.removexattr(ino, b"security.capability") {
            Ok(()) | Err(extentfs::Error::NoAttr) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// POSIX ACLs are not enforced (the mount does not ask the kernel for them), so storing them
/// would only pretend: they are refused.
fn is_acl(name: &OsStr) -> bool {
    name == "system.posix_acl_access" || name == "system.posix_acl_default"
}

/// What every regular file is opened with: no kernel data cache, parallel writers.
fn file_open_flags() -> FopenFlags {
    FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
}

impl fuser::Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_REQUEST) {
            warn!("the kernel takes writes of at most {max} bytes");
        }
        // Kernels usually offer 128 KiB of readahead at most; the engine serves what comes.
        let _ = config.set_max_readahead(MAX_REQUEST);
        let wanted = InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ASYNC_DIO;
        if let Err(missing) = config.add_capabilities(wanted) {
            if missing.contains(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP) {
                warn!("this kernel cannot map files opened for direct I/O: mmap will be refused");
            }
            debug!("the kernel lacks {missing:?}");
            let _ = config.add_capabilities(wanted & !missing);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.release_all();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(reply, self.fs.lookup(parent.0, name_bytes(name)));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(st) => reply.attr(&TTL, &file_attr(&st)),
            Err(e) => reply.error(fs_errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            perm: mode.map(|m| (m & 0o7777) as u16),
            uid,
            gid,
            size,
            atime: atime.map(time_or_now),
            mtime: mtime.map(time_or_now),
        };
        match self.fs.setattr(ino.0, set) {
            Ok(st) => reply.attr(&TTL, &file_attr(&st)),
            Err(e) => reply.error(fs_errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(fs_errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let Some(k) = kind_of_mode(mode) else {
            reply.error(Errno::EINVAL);
            return;
        };
        let (uid, gid, perm) = match self.new_owner(req, parent.0, mode, false) {
            Ok(o) => o,
            Err(e) => return reply.error(e),
        };
        let st = self
            .fs
            .mknod(parent.0, name_bytes(name), k, perm, uid, gid, rdev, &[]);
        self.entry(reply, st);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let (uid, gid, perm) = match self.new_owner(req, parent.0, mode, true) {
            Ok(o) => o,
            Err(e) => return reply.error(e),
        };
        self.entry(
            reply,
            self.fs.mkdir(parent.0, name_bytes(name), perm, uid, gid),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(reply, self.fs.unlink(parent.0, name_bytes(name)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(reply, self.fs.rmdir(parent.0, name_bytes(name)));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let st = self.fs.symlink(
            parent.0,
            name_bytes(link_name),
            target.as_os_str().as_bytes(),
            req.uid(),
            req.gid(),
        );
        self.entry(reply, st);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            reply.error(Errno::EINVAL);
            return;
        }
        let res = self.fs.rename(
            parent.0,
            name_bytes(name),
            newparent.0,
            name_bytes(newname),
            flags.contains(RenameFlags::RENAME_NOREPLACE),
            flags.contains(RenameFlags::RENAME_EXCHANGE),
        );
        Self::empty(reply, res);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.entry(reply, self.fs.link(ino.0, newparent.0, name_bytes(newname)));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.open_file(ino.0, flags) {
            Ok(fh) => reply.opened(FileHandle(fh), file_open_flags()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        READ_BUF.with(|b| {
            let mut buf = b.borrow_mut();
            let size = size as usize;
            if buf.len() < size {
                buf.resize(size, 0);
            }
            // Through the open file, so that its readahead follows its reads.
            let res = match self.files.get(fh.0) {
                Some(f) => self.fs.read_fh(&f.fh, offset, &mut buf[..size]),
                None => self.fs.read(ino.0, offset, &mut buf[..size]),
            };
            match res {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(fs_errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            if let Err(e) = self.kill_suid(ino.0) {
                return reply.error(fs_errno(&e));
            }
        }
        match self.fs.write(ino.0, offset, data) {
            // A writer over the dirty limits was paused inside the engine's write, as the
            // kernel's writers are in balance_dirty_pages.
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(fs_errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // The handle is dropped before the reply goes: once answered, the kernel may send the
        // release, which must find the table's reference the only one.
        let res = match self.files.get(fh.0) {
            Some(f) if f.writable => self.fs.flush(&f.fh),
            _ => Ok(()),
        };
        Self::empty(reply, res);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        match self.files.remove(fh.0) {
            Some(f) => Self::empty(reply, self.fs.release(f.fh)),
            None => {
                warn!(
                    fh = fh.0,
                    "a release for a handle that is unknown or still in use"
                );
                reply.ok();
            }
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let res = match self.files.get(fh.0) {
            Some(f) => self.fs.fsync(&f.fh, datasync),
            None => self.fs.commit(),
        };
        Self::empty(reply, res);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.getattr(ino.0) {
            Ok(st) if st.kind == extentfs::FileType::Dir => {
                reply.opened(FileHandle(0), FopenFlags::empty())
            }
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(fs_errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        // A reply holds a page of entries; ask for no more than fit.
        match self.fs.readdir_page(ino.0, offset, READDIR_PAGE) {
            Ok(entries) => {
                for e in entries {
                    if reply.add(
                        INodeNo(e.ino),
                        e.offset,
                        kind(e.kind),
                        OsStr::from_bytes(&e.name),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(fs_errno(&e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        Self::empty(reply, self.fs.commit());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        // statfs counts inodes as a total and the free ones; extentfs reports those in use.
        let files = s.files.saturating_add(s.ffree);
        reply.statfs(
            s.blocks, s.bfree, s.bavail, files, s.ffree, s.bsize, s.namelen, s.bsize,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if ino.0 == extentfs::ROOT_INO && name == STATS_XATTR {
            reply.error(Errno::EPERM);
            return;
        }
        if is_acl(name) {
            reply.error(Errno::EOPNOTSUPP);
            return;
        }
        let res = self.fs.setxattr(
            ino.0,
            name_bytes(name),
            value,
            flags & libc::XATTR_CREATE != 0,
            flags & libc::XATTR_REPLACE != 0,
        );
        Self::empty(reply, res);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let value = if ino.0 == extentfs::ROOT_INO && name == STATS_XATTR {
            Ok(self.stats.render(&self.fs).into_bytes())
        } else {
            self.fs.getxattr(ino.0, name_bytes(name))
        };
        match value {
            Ok(v) => reply_xattr(reply, size, &v),
            Err(e) => reply.error(fs_errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0) {
            Ok(names) => {
                let mut list = Vec::new();
                for n in names {
                    list.extend_from_slice(&n);
                    list.push(0);
                }
                reply_xattr(reply, size, &list);
            }
            Err(e) => reply.error(fs_errno(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(reply, self.fs.removexattr(ino.0, name_bytes(name)));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if kind_of_mode(mode) != Some(extentfs::FileType::File) {
            reply.error(Errno::EINVAL);
            return;
        }
        let (uid, gid, perm) = match self.new_owner(req, parent.0, mode, false) {
            Ok(o) => o,
            Err(e) => return reply.error(e),
        };
        let st = match self.fs.create(parent.0, name_bytes(name), perm, uid, gid) {
            Ok(st) => st,
            Err(e) => {
                reply.error(fs_errno(&e));
                return;
            }
        };
        match self.open_file(st.ino, OpenFlags(flags)) {
            Ok(fh) => reply.created(
                &TTL,
                &file_attr(&st),
                Generation(0),
                FileHandle(fh),
                file_open_flags(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        Self::empty(reply, self.fs.fallocate(ino.0, mode, offset, length));
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let whence = match whence {
            libc::SEEK_DATA => Whence::Data,
            libc::SEEK_HOLE => Whence::Hole,
            _ => {
                reply.error(Errno::EINVAL);
                return;
            }
        };
        let Ok(pos) = u64::try_from(offset) else {
            reply.error(Errno::ENXIO);
            return;
        };
        match self.fs.lseek(ino.0, pos, whence) {
            Ok(p) => reply.offset(p as i64),
            Err(e) => reply.error(fs_errno(&e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // The reply counts bytes in 32 bits: copy at most 1 GiB, a multiple of every block
        // size, so an aligned copy stays aligned and can still share blocks.
        let len = len.min(1 << 30);
        match self
            .fs
            .copy_file_range(ino_in.0, offset_in, ino_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(fs_errno(&e)),
        }
    }
}

/// Answers a `getxattr` or `listxattr`: the size alone when asked for it, ERANGE when the
/// caller's buffer is too small.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

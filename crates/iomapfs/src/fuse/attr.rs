//! extentfs's attributes in the kernel's terms, and back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use extentfs::{FileType, Stat, Time};
use fuser::{FileAttr, INodeNo, TimeOrNow};

/// The kernel's file type for an extentfs one.
pub fn kind(k: FileType) -> fuser::FileType {
    match k {
        FileType::File => fuser::FileType::RegularFile,
        FileType::Dir => fuser::FileType::Directory,
        FileType::Symlink => fuser::FileType::Symlink,
        FileType::Fifo => fuser::FileType::NamedPipe,
        FileType::Socket => fuser::FileType::Socket,
        FileType::CharDev => fuser::FileType::CharDevice,
        FileType::BlockDev => fuser::FileType::BlockDevice,
    }
}

/// The extentfs file type for the `S_IFMT` bits of a mode, if it is one `mknod` makes.
pub fn kind_of_mode(mode: u32) -> Option<FileType> {
    Some(match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => FileType::File,
        libc::S_IFIFO => FileType::Fifo,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDev,
        libc::S_IFBLK => FileType::BlockDev,
        _ => return None,
    })
}

/// A timestamp as the kernel takes it.
pub fn system_time(t: Time) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs())
            + Duration::from_nanos(u64::from(t.nsec))
    }
}

/// A timestamp as extentfs keeps it.
pub fn fs_time(t: SystemTime) -> Time {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Time {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Time { sec, nsec }
        }
    }
}

/// A `setattr` time: a given one, or now.
pub fn time_or_now(t: TimeOrNow) -> Time {
    match t {
        TimeOrNow::SpecificTime(t) => fs_time(t),
        TimeOrNow::Now => Time::now(),
    }
}

/// The kernel's attributes for `st`.
pub fn file_attr(st: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(st.ino),
        size: st.size,
        blocks: st.blocks,
        atime: system_time(st.atime),
        mtime: system_time(st.mtime),
        ctime: system_time(st.ctime),
        crtime: system_time(st.crtime),
        kind: kind(st.kind),
        perm: st.perm,
        nlink: st.nlink,
        uid: st.uid,
        gid: st.gid,
        rdev: st.rdev,
        blksize: st.blksize,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_on_both_sides_of_the_epoch() {
        for t in [
            Time { sec: 0, nsec: 0 },
            Time {
                sec: 1_700_000_000,
                nsec: 123_456_789,
            },
            Time {
                sec: -1,
                nsec: 500_000_000,
            },
            Time {
                sec: -86_400,
                nsec: 0,
            },
        ] {
            assert_eq!(fs_time(system_time(t)), t, "{t:?}");
        }
    }

    #[test]
    fn mknod_modes_map_to_kinds_and_directories_are_refused() {
        assert_eq!(kind_of_mode(libc::S_IFREG | 0o644), Some(FileType::File));
        assert_eq!(kind_of_mode(libc::S_IFIFO | 0o600), Some(FileType::Fifo));
        assert_eq!(kind_of_mode(libc::S_IFCHR), Some(FileType::CharDev));
        assert_eq!(kind_of_mode(libc::S_IFDIR | 0o755), None);
        assert_eq!(kind_of_mode(libc::S_IFLNK), None);
    }
}

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

/// A timestamp from a `setattr` request as extentfs keeps it. fuser 0.18 turns the kernel's
/// `(sec, nsec)` into `EPOCH + (sec, nsec)` for times from 1970 on but into
/// `EPOCH - (-sec, nsec)` for earlier ones; this undoes exactly that.
pub fn fs_time(t: SystemTime) -> Time {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Time {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            Time {
                sec: 0i64.saturating_sub_unsigned(d.as_secs()),
                nsec: d.subsec_nanos(),
            }
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

    /// What fuser 0.18 hands a filesystem for the kernel's `(sec, nsec)`.
    fn as_fuser_decodes(sec: i64, nsec: u32) -> SystemTime {
        if sec >= 0 {
            UNIX_EPOCH + Duration::new(sec as u64, nsec)
        } else {
            UNIX_EPOCH - Duration::new(sec.unsigned_abs(), nsec)
        }
    }

    #[test]
    fn setattr_times_keep_what_the_kernel_sent_on_both_sides_of_the_epoch() {
        // The last: 1969-12-31 23:59:58.5, two seconds back and half a second forward.
        for (sec, nsec) in [
            (0, 0),
            (1_700_000_000, 123_456_789),
            (-86_400, 0),
            (-2, 500_000_000),
        ] {
            let t = Time { sec, nsec };
            assert_eq!(fs_time(as_fuser_decodes(sec, nsec)), t, "{t:?}");
        }
    }

    #[test]
    fn times_reported_to_the_kernel_are_exact_before_the_epoch() {
        let t = system_time(Time {
            sec: -2,
            nsec: 500_000_000,
        });
        assert_eq!(
            UNIX_EPOCH.duration_since(t).ok(),
            Some(Duration::from_millis(1500))
        );
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

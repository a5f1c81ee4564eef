//! Mounting as an unprivileged user through the setuid `fusermount3` helper, libfuse's way:
//! the helper opens /dev/fuse, mounts, and hands the open device back over a socket. This also
//! works where /dev/fuse itself is closed to users.

use std::ffi::OsString;
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;

use rustix::io::{fcntl_setfd, FdFlags};
use rustix::net::{
    recvmsg, socketpair, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags,
    SocketFlags, SocketType,
};

/// The helper: `$FUSERMOUNT_PATH` if set (as fuser honours it), else `fusermount3`.
fn helper() -> OsString {
    std::env::var_os("FUSERMOUNT_PATH").unwrap_or_else(|| "fusermount3".into())
}

fn missing(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::NotFound {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} not found; mounting as a user needs fusermount3: install the fuse3 package \
                 (apt-get install fuse3), or run as root",
                helper().to_string_lossy()
            ),
        )
    } else {
        e
    }
}

/// Escapes a value for a comma-separated option list, as fusermount3 reads it.
pub fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace(',', "\\,")
}

/// Mounts a FUSE filesystem at `mountpoint` with the comma-separated `options`; returns the
/// connection to serve.
pub fn mount(mountpoint: &Path, options: &str) -> io::Result<OwnedFd> {
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::empty(),
        None,
    )?;
    // The helper inherits its end only.
    fcntl_setfd(&ours, FdFlags::CLOEXEC)?;
    let mut child = Command::new(helper())
        .arg("-o")
        .arg(options)
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .spawn()
        .map_err(missing)?;
    drop(theirs);

    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = recvmsg(
        &ours,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    );
    let mut fd = None;
    if received.is_ok() {
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(mut fds) = msg {
                fd = fds.next();
            }
        }
    }
    let status = child.wait()?;
    match fd {
        Some(fd) => Ok(fd),
        None => Err(io::Error::other(format!(
            "{} could not mount ({status}; it says why above)",
            helper().to_string_lossy()
        ))),
    }
}

/// Unmounts `mountpoint` through the helper, lazily: the kernel detaches it now and ends the
/// connection when the last open file closes.
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    let status = Command::new(helper())
        .args(["-u", "-z", "--"])
        .arg(mountpoint)
        .status()
        .map_err(missing)?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{} -u failed ({status})",
            helper().to_string_lossy()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_values_escape_commas_and_backslashes() {
        assert_eq!(escape("/img/a,b\\c"), "/img/a\\,b\\\\c");
        assert_eq!(escape("plain"), "plain");
    }
}

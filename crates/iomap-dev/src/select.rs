//! Choosing a device by name, as the command line does.

use std::fmt;
use std::io::{self, Read};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use crate::backing::{check_logical_block_size, DeviceOptions};
use crate::file::FileDevice;
use crate::mem::MemDevice;
use crate::request::DevAddr;
use crate::sync::BlockDeviceExt;
use crate::uring::UringDevice;
use crate::BlockDevice;

/// The devices that can back an image, by the names the command line accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// `mem`: the image is loaded into memory; changes are lost when the device is dropped.
    Mem,
    /// `file`: positional I/O on a thread pool ([`FileDevice`]).
    File,
    /// `uring`: io_uring ([`UringDevice`]).
    Uring,
}

impl DeviceKind {
    /// Every kind, in the order help text lists them.
    pub const ALL: [DeviceKind; 3] = [DeviceKind::Mem, DeviceKind::File, DeviceKind::Uring];

    /// The name the command line uses.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Mem => "mem",
            DeviceKind::File => "file",
            DeviceKind::Uring => "uring",
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error for a device name that is not one of [`DeviceKind::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown device {0:?}: expected mem, file or uring")]
pub struct UnknownDevice(String);

impl FromStr for DeviceKind {
    type Err = UnknownDevice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownDevice(s.to_owned()))
    }
}

/// Opens the image at `path` as a device of `kind`.
///
/// `mem` reads the whole image into a sparse memory device of the same size (blocks of zeros
/// cost nothing) and never writes back; `file` and `uring` use the image in place.
pub fn open_device(
    kind: DeviceKind,
    path: &Path,
    opts: &DeviceOptions,
) -> io::Result<Arc<dyn BlockDevice>> {
    Ok(match kind {
        DeviceKind::File => Arc::new(FileDevice::open(path, opts.clone())?),
        DeviceKind::Uring => Arc::new(UringDevice::open(path, opts.clone())?),
        DeviceKind::Mem => Arc::new(load_into_memory(path, opts)?),
    })
}

fn load_into_memory(path: &Path, opts: &DeviceOptions) -> io::Result<MemDevice> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
    let lbs = opts.logical_block_size.unwrap_or(512);
    check_logical_block_size(lbs)?;
    let len = file.metadata()?.len();
    let capacity = len - len % u64::from(lbs);
    let max = opts.max_request_bytes.max(u64::from(lbs)) / u64::from(lbs) * u64::from(lbs);
    let dev = MemDevice::with_geometry(capacity, lbs, max);
    let mut chunk = vec![0u8; 1 << 20];
    let mut addr = 0u64;
    while addr < capacity {
        let n = chunk.len().min((capacity - addr) as usize);
        file.read_exact(&mut chunk[..n])?;
        if chunk[..n].iter().any(|&b| b != 0) {
            dev.write_at(DevAddr(addr), &chunk[..n])?;
        }
        addr += n as u64;
    }
    Ok(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for kind in DeviceKind::ALL {
            assert_eq!(kind.name().parse::<DeviceKind>().unwrap(), kind);
            assert_eq!(kind.to_string(), kind.name());
        }
        assert_eq!("URING".parse::<DeviceKind>().unwrap(), DeviceKind::Uring);
        let err = "nvme".parse::<DeviceKind>().unwrap_err().to_string();
        assert!(
            err.contains("nvme") && err.contains("mem, file or uring"),
            "{err}"
        );
    }
}

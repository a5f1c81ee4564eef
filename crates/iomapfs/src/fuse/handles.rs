//! Open files by the handle numbers the kernel holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use extentfs::FileHandle;
use parking_lot::RwLock;

/// An open regular file.
pub struct OpenFile {
    /// extentfs's handle: what this open file has seen of writeback errors.
    pub fh: FileHandle,
    /// Opened for writing: only such files report writeback errors at close, as only the
    /// writers of a file on NFS do.
    pub writable: bool,
}

/// The table of open regular files. Handle 0 is never issued: directories and files opened
/// without a handle use it.
#[derive(Default)]
pub struct Handles {
    next: AtomicU64,
    open: RwLock<HashMap<u64, Arc<OpenFile>>>,
}

impl Handles {
    /// Stores an open file and returns its number.
    pub fn insert(&self, file: OpenFile) -> u64 {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.open.write().insert(n, Arc::new(file));
        n
    }

    /// The open file numbered `n`.
    pub fn get(&self, n: u64) -> Option<Arc<OpenFile>> {
        self.open.read().get(&n).cloned()
    }

    /// Takes the open file numbered `n` out of the table and returns it once no request
    /// holds it any more. Handlers drop their reference before replying, and the kernel sends
    /// the release only after every request on the file has been answered, so the wait is
    /// for a handler between its reply and its return; after a second the file is given up
    /// on (`None`), as it is for an unknown number.
    pub fn remove(&self, n: u64) -> Option<OpenFile> {
        let mut file = self.open.write().remove(&n)?;
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match Arc::try_unwrap(file) {
                Ok(f) => return Some(f),
                Err(shared) if Instant::now() < deadline => {
                    file = shared;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return None,
            }
        }
    }

    /// Every file still open (at unmount), once no request holds it.
    pub fn drain(&self) -> Vec<OpenFile> {
        let numbers: Vec<u64> = self.open.read().keys().copied().collect();
        numbers.into_iter().filter_map(|n| self.remove(n)).collect()
    }
}

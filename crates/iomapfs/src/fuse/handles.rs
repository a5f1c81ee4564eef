//! Open files by the handle numbers the kernel holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use extentfs::FileHandle;
use parking_lot::RwLock;

/// The table of open regular files. Handle 0 is never issued: directories and files opened
/// without a handle use it.
#[derive(Default)]
pub struct Handles {
    next: AtomicU64,
    open: RwLock<HashMap<u64, Arc<FileHandle>>>,
}

impl Handles {
    /// Stores `fh` and returns its number.
    pub fn insert(&self, fh: FileHandle) -> u64 {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.open.write().insert(n, Arc::new(fh));
        n
    }

    /// The open file numbered `n`.
    pub fn get(&self, n: u64) -> Option<Arc<FileHandle>> {
        self.open.read().get(&n).cloned()
    }

    /// Takes the open file numbered `n` out of the table. The kernel sends the release only
    /// after every request on the file has been answered, so the table's reference is the
    /// last; `None` if the number is unknown.
    pub fn remove(&self, n: u64) -> Option<Arc<FileHandle>> {
        self.open.write().remove(&n)
    }

    /// Every handle still open (at unmount).
    pub fn drain(&self) -> Vec<Arc<FileHandle>> {
        self.open.write().drain().map(|(_, fh)| fh).collect()
    }
}

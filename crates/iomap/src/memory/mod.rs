//! Memory management around the cache: reusing folio memory, choosing what to evict when it
//! must shrink, holding dirty data within limits, and the flusher that writes it back.

mod dirty;
mod flusher;
mod pool;
mod reclaim;

pub use dirty::MemoryLimits;
pub(crate) use dirty::{DirtyThrottle, Verdict};
pub(crate) use flusher::FlusherHandle;
pub use pool::{BufPool, PoolStats, DEFAULT_POOL_BYTES};
pub use reclaim::Reclaimer;

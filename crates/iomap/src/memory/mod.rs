//! Memory management around the cache: reusing folio buffers, and choosing what to evict
//! when it must shrink.

mod pool;
mod reclaim;

pub use pool::{BufPool, PoolStats, DEFAULT_POOL_BYTES};
pub use reclaim::Reclaimer;

//! Memory management around the cache: choosing what to evict when it must shrink.

mod reclaim;

pub use reclaim::Reclaimer;

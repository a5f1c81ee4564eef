//! Scan-resistant reclaim, after Linux's two lists (`mm/vmscan.c`, `mm/swap.c`).
//!
//! A folio's first access marks it referenced, a second makes it active
//! ([`crate::Folio::mark_accessed`]). Reclaim evicts inactive folios that have not been
//! referenced since it last looked, and gives referenced ones a second chance by clearing the
//! bit; active folios are kept while there are no more active bytes than inactive ones, and
//! only then deactivated (oldest offsets first within each file). So one large scan, whose
//! folios are each read once, passes through the inactive set while a working set read twice
//! stays. Only clean, unlocked folios not under writeback are evicted; dirty data has to be
//! written back first. Mappings register with the cache and are held weakly.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::mapping::Mapping;

/// The mappings of a cache that reclaim may take folios from.
#[derive(Default)]
pub struct Reclaimer {
    mappings: Mutex<Vec<Weak<Mapping>>>,
}

impl Reclaimer {
    /// Lets reclaim take folios from `mapping` (held weakly: a dropped mapping drops out).
    pub fn register(&self, mapping: &Arc<Mapping>) {
        let mut m = self.mappings.lock();
        m.retain(|w| w.strong_count() > 0);
        m.push(Arc::downgrade(mapping));
    }

    fn live(&self) -> Vec<Arc<Mapping>> {
        let mut m = self.mappings.lock();
        m.retain(|w| w.strong_count() > 0);
        m.iter().filter_map(Weak::upgrade).collect()
    }

    /// Evicts about `want_bytes` of clean folios, inactive and unreferenced first; returns
    /// the bytes evicted. Three rounds at most: one that evicts what was unreferenced and
    /// clears the referenced bits, one that evicts what was only referenced since, and after
    /// deactivating the surplus of active folios (all of them if still short) one more.
    pub fn reclaim(&self, want_bytes: u64) -> u64 {
        let mappings = self.live();
        let mut freed = 0;
        for round in 0..3 {
            for m in &mappings {
                for f in m.folios_in(0, u64::MAX) {
                    if freed >= want_bytes {
                        return freed;
                    }
                    if f.is_active() || f.test_clear_referenced() {
                        continue;
                    }
                    if m.evict(&f) {
                        freed += f.size() as u64;
                    }
                }
            }
            if round == 1 {
                deactivate(&mappings, freed < want_bytes);
            }
        }
        freed
    }
}

/// Deactivates active folios until active bytes are no more than inactive ones, or all of
/// them when `all`.
fn deactivate(mappings: &[Arc<Mapping>], all: bool) {
    let mut active = 0u64;
    let mut inactive = 0u64;
    for m in mappings {
        for f in m.folios_in(0, u64::MAX) {
            if f.is_active() {
                active += f.size() as u64;
            } else {
                inactive += f.size() as u64;
            }
        }
    }
    for m in mappings {
        for f in m.folios_in(0, u64::MAX) {
            if !all && active <= inactive {
                return;
            }
            if f.is_active() {
                f.deactivate();
                active -= f.size() as u64;
                inactive += f.size() as u64;
            }
        }
    }
}

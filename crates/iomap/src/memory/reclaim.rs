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
    /// the bytes evicted. Round one evicts what was unreferenced and clears the referenced
    /// bits; round two evicts what was only referenced before. If still short, the surplus of
    /// active folios over inactive ones is deactivated and a third round runs; if even that
    /// falls short (the cache is mostly a working set), as many active bytes as are still
    /// wanted are deactivated for a last round. Protection is taken only as needed.
    pub fn reclaim(&self, want_bytes: u64) -> u64 {
        let mappings = self.live();
        let mut freed = 0;
        for round in 0..4 {
            if freed >= want_bytes {
                break;
            }
            match round {
                2 => deactivate(&mappings, Demote::Surplus),
                3 => deactivate(&mappings, Demote::Bytes(want_bytes - freed)),
                _ => {}
            }
            freed += evict_inactive(&mappings, want_bytes - freed);
        }
        freed
    }
}

/// One pass over the inactive folios: unreferenced ones are evicted, referenced ones lose the
/// bit. Returns the bytes evicted, stopping at `want`.
fn evict_inactive(mappings: &[Arc<Mapping>], want: u64) -> u64 {
    let mut freed = 0;
    for m in mappings {
        for f in m.folios_in(0, u64::MAX) {
            if freed >= want {
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
    freed
}

/// How many active folios to deactivate.
#[derive(Clone, Copy, Debug)]
enum Demote {
    /// Until active bytes are no more than inactive ones.
    Surplus,
    /// About this many bytes.
    Bytes(u64),
}

fn deactivate(mappings: &[Arc<Mapping>], demote: Demote) {
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
    let mut budget = match demote {
        Demote::Surplus => active.saturating_sub(inactive) / 2,
        Demote::Bytes(b) => b,
    };
    for m in mappings {
        for f in m.folios_in(0, u64::MAX) {
            if budget == 0 {
                return;
            }
            if f.is_active() {
                f.deactivate();
                budget = budget.saturating_sub(f.size() as u64);
            }
        }
    }
}

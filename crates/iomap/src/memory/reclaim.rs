//! Scan-resistant reclaim, after Linux's two lists (`mm/vmscan.c`, `mm/swap.c`), swept by a
//! clock hand.
//!
//! A folio's first access marks it referenced, a second makes it active
//! ([`crate::Folio::mark_accessed`]). Reclaim evicts inactive folios that have not been
//! referenced since it last looked, and gives referenced ones a second chance by clearing the
//! bit; active folios are kept while there are no more active bytes than inactive ones, and
//! only then deactivated. So one large scan, whose folios are each read once, passes through
//! the inactive set while a working set read twice stays.
//!
//! The hand (a mapping, an index shard, an offset) is kept across calls, so each call goes on
//! where the last stopped: every folio gets a full turn of the clock to be referenced again
//! before it is looked at twice, and what is evicted is what has gone longest unused. Only
//! clean, unlocked folios not under writeback and held by nobody else are evicted; dirty
//! data has to be written back first. Mappings register with the cache and are held weakly.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::folio::Folio;
use crate::mapping::{Mapping, SHARDS};

/// Folios taken from a shard at a time.
const BATCH: usize = 32;

/// The mappings of a cache that reclaim may take folios from, and the clock hand.
#[derive(Default)]
pub struct Reclaimer {
    /// By registration number, the order the hand goes round in.
    mappings: Mutex<BTreeMap<u64, Weak<Mapping>>>,
    next_id: Mutex<u64>,
    /// Held for a whole call: one reclaimer sweeps at a time.
    hand: Mutex<Hand>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Hand {
    mapping: u64,
    shard: usize,
    pos: u64,
}

/// What one sweep found and did.
#[derive(Default)]
struct Sweep {
    freed: u64,
    visited: u64,
    active_bytes: u64,
    inactive_bytes: u64,
}

/// What a sweep does with an active folio.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Active {
    Keep,
    /// Deactivate up to this many bytes of them.
    Demote(u64),
}

impl Reclaimer {
    /// Lets reclaim take folios from `mapping` (held weakly: a dropped mapping drops out).
    pub fn register(&self, mapping: &Arc<Mapping>) {
        let id = {
            let mut n = self.next_id.lock();
            *n += 1;
            *n
        };
        let mut m = self.mappings.lock();
        m.retain(|_, w| w.strong_count() > 0);
        m.insert(id, Arc::downgrade(mapping));
    }

    /// The live registered mappings, in hand order.
    pub(crate) fn live(&self) -> Vec<(u64, Arc<Mapping>)> {
        let mut m = self.mappings.lock();
        m.retain(|_, w| w.strong_count() > 0);
        m.iter()
            .filter_map(|(&id, w)| w.upgrade().map(|m| (id, m)))
            .collect()
    }

    /// Evicts about `want_bytes` of clean folios from a cache of `folios` folios, looking at
    /// no more than about `max_scan` folios (or empty shards) per round; returns the bytes
    /// evicted. With `wait` false, returns 0 at once when another thread is reclaiming (it
    /// is freeing memory already).
    ///
    /// Rounds one and two each go once round the clock (or `max_scan` folios): unreferenced
    /// inactive folios are evicted and referenced ones lose the bit, so round two evicts what
    /// round one spared. If still short and the rounds saw more active bytes than inactive,
    /// half the surplus is deactivated in a third round, which evicts as it goes; if even that
    /// falls short (the cache is mostly a working set), as many active bytes as are still
    /// wanted are deactivated in a last round. Protection is taken only as needed.
    pub fn reclaim(&self, want_bytes: u64, folios: u64, max_scan: u64, wait: bool) -> u64 {
        if want_bytes == 0 {
            return 0;
        }
        let mut hand = if wait {
            self.hand.lock()
        } else {
            match self.hand.try_lock() {
                Some(h) => h,
                None => return 0,
            }
        };
        let mappings = self.live();
        if mappings.is_empty() {
            return 0;
        }
        let turn = folios.min(max_scan).max(1);
        let mut freed = 0;
        let (mut active, mut inactive, mut seen) = (0u64, 0u64, 0u64);
        for round in 0..4 {
            if freed >= want_bytes {
                break;
            }
            let demote = match round {
                0 | 1 => Active::Keep,
                2 => {
                    // Scale what the first rounds saw to the whole cache.
                    let surplus = active.saturating_sub(inactive) / 2;
                    let scaled = surplus.saturating_mul(folios.max(1)) / seen.max(1);
                    if scaled == 0 {
                        continue;
                    }
                    Active::Demote(scaled)
                }
                _ => Active::Demote(want_bytes - freed),
            };
            let s = sweep(&mut hand, &mappings, want_bytes - freed, turn, demote);
            freed += s.freed;
            if round < 2 {
                active += s.active_bytes;
                inactive += s.inactive_bytes;
                seen += s.visited;
            }
        }
        freed
    }
}

/// Moves the hand over up to `limit` folios, evicting unreferenced inactive ones until
/// `want` bytes are freed; referenced inactive folios lose the bit, and active ones are kept
/// or deactivated as `active` says.
fn sweep(
    hand: &mut Hand,
    mappings: &[(u64, Arc<Mapping>)],
    want: u64,
    limit: u64,
    mut active: Active,
) -> Sweep {
    let mut s = Sweep::default();
    // Empty or busy shards passed since the last folio: a whole turn of them means there is
    // nothing more to look at now. They are limited like folios (but a mapping's shards can
    // always be passed); mappings with nothing cached are passed over without a look.
    let mut empty = 0usize;
    let mut skipped = 0u64;
    let all_shards = mappings.len() * SHARDS;
    let mut i = mappings
        .iter()
        .position(|(id, _)| *id >= hand.mapping)
        .unwrap_or(0);
    if mappings[i].0 != hand.mapping {
        *hand = Hand {
            mapping: mappings[i].0,
            shard: 0,
            pos: 0,
        };
    }
    // A turn over a few folios still passes every shard of a mapping.
    let skip_limit = limit.max(SHARDS as u64);
    while s.freed < want && s.visited < limit && skipped <= skip_limit && empty <= all_shards {
        let mapping = &mappings[i].1;
        if mapping.nr_folios() == 0 {
            // Nothing cached: on to the next mapping at no cost.
            empty += SHARDS;
            i = (i + 1) % mappings.len();
            *hand = Hand {
                mapping: mappings[i].0,
                shard: 0,
                pos: 0,
            };
            continue;
        }
        let batch = mapping
            .shard_batch(hand.shard, hand.pos, BATCH)
            .unwrap_or_default();
        if batch.is_empty() {
            empty += 1;
            skipped += 1;
            hand.shard += 1;
            hand.pos = 0;
            if hand.shard == SHARDS {
                i = (i + 1) % mappings.len();
                *hand = Hand {
                    mapping: mappings[i].0,
                    shard: 0,
                    pos: 0,
                };
            }
            continue;
        }
        empty = 0;
        for f in &batch {
            if s.freed >= want || s.visited >= limit {
                break;
            }
            hand.pos = f.end();
            s.visited += 1;
            visit(mapping, f, &mut s, &mut active);
        }
    }
    s
}

fn visit(mapping: &Mapping, f: &Folio, s: &mut Sweep, active: &mut Active) {
    let size = f.size() as u64;
    if f.is_active() {
        s.active_bytes += size;
        match active {
            Active::Demote(left) if *left > 0 => {
                f.deactivate();
                *left = left.saturating_sub(size);
            }
            _ => return,
        }
    } else {
        s.inactive_bytes += size;
        if f.test_clear_referenced() {
            return;
        }
    }
    if mapping.evict(f) {
        s.freed += size;
    }
}

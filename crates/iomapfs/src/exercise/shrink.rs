//! Shrinking a failing operation list by re-running parts of it.

use std::time::{Duration, Instant};

use super::{run_ops, Config, Failure, Op, SHRINK_ATTEMPTS};

/// A shorter failing list, and how it fails.
pub struct Shrunk {
    /// The operations left.
    pub ops: Vec<Op>,
    /// How they fail.
    pub failure: Failure,
}

/// Removes chunks of the list (halves, quarters, ... single operations) while the run still
/// fails, each try on a fresh file system, within `SHRINK_ATTEMPTS` runs and no try started
/// after `budget` (a try of a long list can take minutes). Any failure counts: a shrink that
/// turns one mismatch into another is still a smaller failing list. `status` is told how far
/// the shrinking has got.
pub fn shrink(
    cfg: &Config,
    mut ops: Vec<Op>,
    first: &Failure,
    budget: Duration,
    status: &mut dyn FnMut(&str),
) -> Shrunk {
    let deadline = Instant::now() + budget;
    // Nothing after the failing operation can matter.
    if let Some(at) = first.at {
        ops.truncate(at + 1);
    }
    let mut failure = Failure {
        at: first.at,
        what: first.what.clone(),
    };
    let mut attempts = 0;
    let mut chunk = ops.len().div_ceil(2).max(1);
    'outer: loop {
        let mut i = 0;
        while i < ops.len() {
            if attempts == SHRINK_ATTEMPTS || Instant::now() >= deadline {
                break 'outer;
            }
            attempts += 1;
            status(&format!(
                "shrinking: {} operations left, try {attempts}/{SHRINK_ATTEMPTS}",
                ops.len()
            ));
            let mut candidate = ops.clone();
            candidate.drain(i..(i + chunk).min(ops.len()));
            match run_ops(cfg, &candidate, &mut || {}) {
                Err(f) => {
                    if let Some(at) = f.at {
                        candidate.truncate(at + 1);
                    }
                    ops = candidate;
                    failure = f;
                }
                Ok(_) => i += chunk,
            }
        }
        if chunk == 1 {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    Shrunk { ops, failure }
}

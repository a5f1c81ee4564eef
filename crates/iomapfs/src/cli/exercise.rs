//! `iomapfs exercise`: runs the checker with a progress bar, prints its totals, and on a
//! failure the seed and a shrunk operation list.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use iomapfs::exercise::{counts, generate, run_ops, shrink, Config, Failure, Op};

use super::{CliError, ExerciseArgs};
use crate::size::human;

pub fn run(a: ExerciseArgs) -> Result<ExitCode, CliError> {
    let cfg = Config {
        block_size: a.block_size,
        max_folio_bytes: a.max_folio,
        cache_bytes: a.cache_size,
        files: usize::from(a.files),
        crash: a.crash,
        faults: a.faults,
        threads: usize::from(a.threads),
    };
    cfg.validate().map_err(CliError::Usage)?;
    let seed = a.seed.unwrap_or_else(seed_from_time);
    let mut ops = generate(seed, a.ops, &cfg);
    if let Some(k) = a.inject_mismatch_at {
        let slot = ops.get_mut(k).ok_or_else(|| {
            CliError::Usage(format!(
                "--inject-mismatch-at {k} is past the {} operations",
                a.ops
            ))
        })?;
        *slot = Op::CorruptOracle { f: 0 };
    }
    println!(
        "exercise: seed {seed}, {} operations on {} files{}, {} blocks, folios up to {}, cache {}{}",
        ops.len(),
        cfg.files,
        match cfg.threads {
            1 => String::new(),
            t => format!(" by {t} threads"),
        },
        human(u64::from(cfg.block_size)),
        human(cfg.max_folio_bytes),
        human(cfg.cache_bytes),
        match (cfg.crash, cfg.faults) {
            (true, true) => ", with crashes and device faults",
            (true, false) => ", with crashes",
            (false, true) => ", with device faults",
            (false, false) => "",
        }
    );

    let bar = ProgressBar::new(ops.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} ops {per_sec} {msg}")
            .map_err(|e| std::io::Error::other(e.to_string()))?,
    );
    let result = run_ops(&cfg, &ops, &mut || bar.inc(1));
    bar.finish_and_clear();

    let failure = match result {
        Ok(t) => {
            let words: Vec<String> = counts(&ops)
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            println!("{}", words.join(", "));
            if cfg.faults {
                println!(
                    "device faults: {} writes or flushes failed, reported by {} fsyncs, {} \
                     shutdowns recovered; {} reads failed, {} returned EIO",
                    t.write_faults, t.reported, t.shutdowns, t.read_faults, t.read_errors
                );
            }
            if cfg.crash {
                println!("power cuts recovered: {}", t.crashes);
            }
            println!("{} operations passed, 0 failed (seed {seed})", ops.len());
            return Ok(ExitCode::SUCCESS);
        }
        Err(f) => f,
    };
    report_failure(seed, &ops, &failure);
    let spinner = ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(100));
    let budget = Duration::from_secs(a.shrink_secs);
    let shrunk = shrink(&cfg, ops.clone(), &failure, budget, &mut |s| {
        spinner.set_message(s.to_string())
    });
    spinner.finish_and_clear();
    println!(
        "shrunk to {} operations (from {}) that still fail:",
        shrunk.ops.len(),
        ops.len()
    );
    for (i, op) in shrunk.ops.iter().enumerate() {
        println!("  {i}: {op:?}");
    }
    println!(
        "the shrunk run fails at {}: {}",
        at_words(shrunk.failure.at),
        shrunk.failure.what
    );
    let passed = failure.at.unwrap_or(0);
    println!("{passed} operations passed, 1 failed (seed {seed})");
    Ok(ExitCode::FAILURE)
}

fn seed_from_time() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    t.as_secs() ^ u64::from(t.subsec_nanos()).rotate_left(32)
}

fn at_words(at: Option<usize>) -> String {
    at.map_or_else(|| "setup".to_string(), |i| format!("operation {i}"))
}

fn report_failure(seed: u64, ops: &[Op], f: &Failure) {
    let op = f.at.and_then(|i| ops.get(i));
    println!(
        "FAILED (seed {seed}) at {}{}: {}",
        at_words(f.at),
        op.map(|o| format!(" {o:?}")).unwrap_or_default(),
        f.what
    );
}

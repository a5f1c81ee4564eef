//! `iomapfs bench`: the side-by-side suite. Each case measures the engine and a baseline the
//! kernel offers for the same work (its page cache, O_DIRECT, its XFS through fio), in the same
//! run, in rounds that alternate which side goes first, and reports the medians, their ratio
//! and each round's ratio, in a table or JSON, with an SVG chart of the ratios.
//!
//! The cases that measure the process's resident memory (`dirty-memory`, `metadata`) run each
//! row of each round in a fresh process (this executable with `--child`), since heap that earlier cases
//! freed would be reused and hide what the engine costs. The FUSE case needs root, fio,
//! mkfs.xfs and a loop device, and is skipped with the reason when one is missing.
//!
//! Scratch files go to a directory made for the run inside `--dir` and removed after it,
//! also when a case fails or the run is interrupted (SIGINT, SIGTERM: checked between
//! measurements).

mod cached;
mod data;
mod fuse;
mod memory;
mod report;
mod row;
mod writeback;

use std::fmt::Display;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use self::data::{GIB, MIB};
use self::row::Row;
use super::{BenchArgs, CliError};

pub type Result<T> = std::result::Result<T, CliError>;

/// A failure in words.
pub fn fail(msg: impl Into<String>) -> CliError {
    CliError::Io(io::Error::other(msg.into()))
}

/// Says what was being done when an error came.
pub trait Context<T> {
    fn context<S: Display>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn context<S: Display>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| fail(format!("{}: {e}", what())))
    }
}

/// A case of the suite, as `--only` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Case {
    /// 1 MiB sequential reads of cached data, 1 and 2 threads, against the kernel's page cache.
    SeqRead,
    /// 4 KiB random reads of cached data, 1 and 2 threads, against the kernel's page cache.
    RandRead,
    /// 4 KiB random overwrites of cached data, 1 and 2 threads, against the kernel's page cache.
    Overwrite,
    /// Writeback of a whole dirty file, against O_DIRECT writes of the same size.
    Writeback,
    /// A cold sequential read through a cache with a budget, against O_DIRECT reads.
    ColdRead,
    /// Device requests for random dirty blocks, against the fewest that can carry them.
    Merge,
    /// Resident memory while writing 4x the cache's budget, against the budget.
    DirtyMemory,
    /// Memory per cached GiB besides the data, against the kernel's struct page.
    Metadata,
    /// fio through an iomapfs mount, against the kernel's XFS on a loop device (root).
    Fuse,
}

impl Case {
    const ALL: [Case; 9] = [
        Case::SeqRead,
        Case::RandRead,
        Case::Overwrite,
        Case::Writeback,
        Case::ColdRead,
        Case::Merge,
        Case::DirtyMemory,
        Case::Metadata,
        Case::Fuse,
    ];

    /// The name `--only` takes.
    pub fn name(self) -> &'static str {
        match self {
            Case::SeqRead => "seq-read",
            Case::RandRead => "rand-read",
            Case::Overwrite => "overwrite",
            Case::Writeback => "writeback",
            Case::ColdRead => "cold-read",
            Case::Merge => "merge",
            Case::DirtyMemory => "dirty-memory",
            Case::Metadata => "metadata",
            Case::Fuse => "fuse",
        }
    }

    /// Measurements (one side, one round) the case makes, for the progress bar.
    fn steps(self, rounds: u64) -> u64 {
        match self {
            Case::SeqRead | Case::RandRead | Case::Overwrite => 2 * 2 * rounds,
            Case::Writeback | Case::ColdRead | Case::Merge => 2 * rounds,
            Case::DirtyMemory | Case::Metadata => rounds,
            Case::Fuse => fuse::JOBS as u64 * 2 * rounds,
        }
    }
}

/// Sizes and times of the workloads.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// The file the cached cases read and overwrite.
    pub cached_file: u64,
    /// Each cached measurement's timed window, and its warm-up before it.
    pub window: Duration,
    pub warmup: Duration,
    /// The file written back.
    pub writeback_file: u64,
    /// The file random blocks are dirtied in, and how many.
    pub merge_file: u64,
    pub merge_blocks: u64,
    /// The file read cold, and the cache's budget meanwhile.
    pub cold_file: u64,
    pub cold_budget: u64,
    /// The budget written through 4x in `dirty-memory`.
    pub dirty_budget: u64,
    /// Data cached to measure metadata.
    pub metadata_cached: u64,
    /// The images of the FUSE case, the file fio works on, and each random job's seconds.
    pub fuse_image: u64,
    pub fuse_file: u64,
    pub fuse_secs: u32,
}

impl Sizes {
    const FULL: Sizes = Sizes {
        cached_file: 512 * MIB,
        window: Duration::from_secs(2),
        warmup: Duration::from_millis(300),
        writeback_file: GIB,
        merge_file: GIB,
        merge_blocks: 65_536,
        cold_file: 4 * GIB,
        cold_budget: 256 * MIB,
        dirty_budget: 256 * MIB,
        metadata_cached: GIB,
        fuse_image: 8 * GIB,
        fuse_file: GIB,
        fuse_secs: 8,
    };

    /// Small enough for a debug build to run every case in seconds; the figures mean little.
    const QUICK: Sizes = Sizes {
        cached_file: 8 * MIB,
        window: Duration::from_millis(50),
        warmup: Duration::from_millis(10),
        writeback_file: 8 * MIB,
        merge_file: 8 * MIB,
        merge_blocks: 256,
        cold_file: 32 * MIB,
        cold_budget: 8 * MIB,
        dirty_budget: 8 * MIB,
        metadata_cached: 8 * MIB,
        fuse_image: 512 * MIB,
        fuse_file: 32 * MIB,
        fuse_secs: 1,
    };
}

/// What every case is given.
pub struct Config {
    /// The run's scratch directory.
    pub dir: PathBuf,
    pub rounds: usize,
    pub quick: bool,
    pub sizes: Sizes,
}

/// Runs both sides of one round: the engine first in even rounds, the baseline first in odd
/// ones, so that a machine getting busier or quieter during the run weighs on both.
pub fn both<T>(
    round: usize,
    engine: impl FnOnce() -> Result<T>,
    base: impl FnOnce() -> Result<T>,
) -> Result<(T, T)> {
    if round % 2 == 0 {
        let e = engine()?;
        Ok((e, base()?))
    } else {
        let b = base()?;
        Ok((engine()?, b))
    }
}

/// The progress bar on stderr, the log lines above it, and the stop flag signals set.
pub struct Progress {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
}

impl Progress {
    fn new(steps: u64, stop: Arc<AtomicBool>) -> Result<Self> {
        let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed_precise} {msg}")
                .context(|| "progress bar template")?,
        );
        Ok(Self { bar, stop })
    }

    fn check(&self) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            Err(fail("interrupted"))
        } else {
            Ok(())
        }
    }

    /// Says what runs now; fails once a signal asked to stop.
    pub fn stage(&self, msg: impl Into<String>) -> Result<()> {
        self.check()?;
        self.bar.set_message(msg.into());
        Ok(())
    }

    /// Says which round of what runs now.
    pub fn stage_round(&self, what: &str, round: usize, rounds: usize) -> Result<()> {
        self.stage(format!("{what}: round {}/{rounds}", round + 1))
    }

    /// Counts `n` measurements done; fails once a signal asked to stop.
    pub fn done(&self, n: u64) -> Result<()> {
        self.bar.inc(n);
        self.check()
    }

    /// Logs the figures of the round `row` recorded last, each side under its name.
    pub fn round(&self, round: usize, rounds: usize, row: &Row, sides: [&str; 2]) {
        if let (Some(e), Some(b)) = (row.engine.last(), row.base.last()) {
            self.log(format_args!(
                "round {}/{rounds}: {}: {} {}, {} {}",
                round + 1,
                row.label(),
                sides[0],
                row.unit.show(*e),
                sides[1],
                row.unit.show(*b)
            ));
        }
    }

    /// A line on stderr above the bar.
    pub fn log(&self, line: impl Display) {
        self.bar.suspend(|| eprintln!("{line}"));
    }
}

impl Drop for Progress {
    /// A failed run's message is printed after this, on a clean line.
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// The run's scratch directory, removed with what is in it when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(parent: &Path) -> Result<Self> {
        let meta = fs::metadata(parent).context(|| format!("--dir {}", parent.display()))?;
        if !meta.is_dir() {
            return Err(CliError::Usage(format!(
                "--dir {} is not a directory",
                parent.display()
            )));
        }
        let parent = parent
            .canonicalize()
            .context(|| format!("--dir {}", parent.display()))?;
        let dir = parent.join(format!("iomapfs-bench.{}", std::process::id()));
        fs::create_dir(&dir).context(|| format!("create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("iomapfs: could not remove {}: {e}", self.0.display());
        }
    }
}

/// What was run, on what.
pub struct Run {
    pub command: String,
    pub rounds: usize,
    pub quick: bool,
    pub machine: Machine,
    pub rows: Vec<Row>,
    /// Cases not run, and why.
    pub skipped: Vec<(Case, String)>,
}

/// The machine, as far as a figure depends on it.
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub memory_bytes: u64,
    pub scratch_fs: String,
    /// The load averages (1, 5, 15 minutes) before and after the run.
    pub load_before: String,
    pub load_after: String,
}

impl Machine {
    fn now(scratch: &Path) -> Self {
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, m)| m.trim().to_string());
        let memory_bytes = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb << 10);
        Self {
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            cpu,
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            memory_bytes,
            scratch_fs: data::fs_type(scratch),
            load_before: load_average(),
            load_after: String::new(),
        }
    }
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run(a: BenchArgs) -> Result<ExitCode> {
    let mut cases = if a.only.is_empty() {
        Case::ALL.to_vec()
    } else {
        a.only.clone()
    };
    cases.sort_unstable();
    cases.dedup();
    let sizes = if a.quick { Sizes::QUICK } else { Sizes::FULL };
    if let Some(row) = a.child {
        return child(&a.dir, &cases, row, sizes);
    }
    let rounds = a.rounds.map_or(if a.quick { 2 } else { 5 }, |r| r as usize);
    let scratch = Scratch::new(&a.dir)?;
    let mut machine = Machine::now(&scratch.0);
    if matches!(machine.scratch_fs.as_str(), "tmpfs" | "ramfs" | "overlay") {
        eprintln!(
            "iomapfs: warning: {} is on {}: O_DIRECT there is a memory copy or refused; give \
             --dir a directory on a disk",
            scratch.0.display(),
            machine.scratch_fs
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal stops the run at the next measurement, so that it cleans up; a
        // second one ends the process at once.
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&stop))
            .context(|| "catch signals")?;
        signal_hook::flag::register(sig, Arc::clone(&stop)).context(|| "catch signals")?;
    }
    let steps = cases.iter().map(|c| c.steps(rounds as u64)).sum();
    let progress = Progress::new(steps, stop)?;
    let cfg = Config {
        dir: scratch.0.clone(),
        rounds,
        quick: a.quick,
        sizes,
    };

    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let cached: Vec<Case> = cases
        .iter()
        .copied()
        .filter(|c| matches!(c, Case::SeqRead | Case::RandRead | Case::Overwrite))
        .collect();
    if !cached.is_empty() {
        rows.extend(cached::run(&cfg, &cached, &progress)?);
    }
    for &case in &cases {
        match case {
            Case::SeqRead | Case::RandRead | Case::Overwrite => {}
            Case::Writeback => rows.extend(writeback::sequential(&cfg, &progress)?),
            Case::ColdRead => rows.extend(memory::cold_read(&cfg, &progress)?),
            Case::Merge => rows.extend(writeback::merge(&cfg, &progress)?),
            Case::DirtyMemory | Case::Metadata => {
                rows.extend(isolated(case, &cfg, &progress)?);
            }
            Case::Fuse => match fuse::missing() {
                Some(reason) => {
                    progress.log(format!("fuse: skipped: {reason}"));
                    progress.done(case.steps(rounds as u64))?;
                    skipped.push((case, reason));
                }
                None => rows.extend(fuse::run(&cfg, &progress)?),
            },
        }
    }
    drop(progress);
    machine.load_after = load_average();
    let run = Run {
        command: std::iter::once("iomapfs".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        rounds,
        quick: a.quick,
        machine,
        rows,
        skipped,
    };
    drop(scratch);

    let out = if a.json {
        let mut s = serde_json::to_string_pretty(&report::json(&run)).context(|| "JSON")?;
        s.push('\n');
        s
    } else {
        report::table(&run)
    };
    io::stdout()
        .write_all(out.as_bytes())
        .context(|| "write the results")?;
    report::svg(&a.svg, &run.rows)?;
    if !a.json {
        println!("Chart: {}", a.svg.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the rounds of a case that measures this process's memory, each in a fresh process.
fn isolated(case: Case, cfg: &Config, p: &Progress) -> Result<Vec<Row>> {
    let mut rows = memory::isolated_rows(case, &cfg.sizes);
    let prepared = memory::prepare(case, cfg, p)?;
    let exe = std::env::current_exe().context(|| "find this executable")?;
    for round in 0..cfg.rounds {
        p.stage_round(case.name(), round, cfg.rounds)?;
        for (k, row) in rows.iter_mut().enumerate() {
            let mut cmd = Command::new(&exe);
            cmd.args(["bench", "--only", case.name(), "--child"])
                .arg(k.to_string())
                .arg("--dir")
                .arg(&cfg.dir);
            if cfg.quick {
                cmd.arg("--quick");
            }
            let out = cmd
                .output()
                .context(|| format!("run {} {}", exe.display(), case.name()))?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                return Err(fail(format!(
                    "{} in a child process failed ({}): {}",
                    case.name(),
                    out.status,
                    stderr.trim()
                )));
            }
            for line in stderr.lines() {
                p.log(line);
            }
            let (e, b): (f64, f64) = serde_json::from_slice(&out.stdout)
                .context(|| format!("the figures of {} in a child process", case.name()))?;
            row.push(e, b);
            p.round(round, cfg.rounds, row, ["engine", "baseline"]);
        }
        p.done(1)?;
    }
    drop(prepared);
    Ok(rows)
}

/// `--child ROW`: one row of one memory case measured once in this process, its figures as
/// JSON on stdout.
fn child(dir: &Path, cases: &[Case], row: usize, sizes: Sizes) -> Result<ExitCode> {
    let &[case] = cases else {
        return Err(CliError::Usage("--child runs exactly one case".into()));
    };
    let figures = memory::measure_isolated(case, row, dir, &sizes)?;
    let json = serde_json::to_string(&figures).context(|| "JSON")?;
    println!("{json}");
    Ok(ExitCode::SUCCESS)
}

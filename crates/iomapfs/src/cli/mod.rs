//! The command line: what each subcommand takes, and running it.

mod bench;
mod exercise;
mod fsck;
mod mkfs;
mod mount;
mod stats;

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::image::DeviceChoice;
use crate::size::parse_size;

/// Mount extentfs images through FUSE, with every byte going through a userspace rebuild of
/// Linux's iomap buffered-I/O engine.
#[derive(Debug, Parser)]
#[command(name = "iomapfs", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount an image (created and formatted if missing) and serve it until unmounted.
    Mount(MountArgs),
    /// Format an image (created sparse if missing).
    Mkfs(MkfsArgs),
    /// Check an image; exits as e2fsck does (0 clean, 1 repaired, 4 errors left, 8 could not
    /// check).
    Fsck(FsckArgs),
    /// Show a running mount's cache, request and error statistics.
    Stats(StatsArgs),
    /// Run seeded random file operations on an in-memory filesystem and check every result
    /// against a model (as fsx does); a failure is shrunk to a short operation list.
    Exercise(ExerciseArgs),
    /// Run the engine beside what the kernel offers for the same work (its page cache,
    /// O_DIRECT, XFS through fio as root), and print the ratios in a table with an SVG chart.
    Bench(BenchArgs),
}

/// `iomapfs mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// The image file or block device.
    #[arg(default_value = "iomapfs.img")]
    pub image: PathBuf,
    /// Where to mount it (created if missing).
    #[arg(default_value = "mnt")]
    pub mountpoint: PathBuf,
    /// The device that serves the image.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Size of a new image (K, M, G, T suffixes).
    #[arg(long, value_parser = parse_size, default_value = "8G")]
    pub size: u64,
    /// Block size of a new image: a power of two from 512 to 65536.
    #[arg(long, default_value_t = 4096)]
    pub block_size: u32,
    /// Most file data to keep cached [default: a quarter of RAM].
    #[arg(long, value_parser = parse_size)]
    pub cache_size: Option<u64>,
    /// Most dirty data before writers wait for writeback; background writeback starts at
    /// half of it [default: a fifth of the cache size].
    #[arg(long, value_parser = parse_size)]
    pub dirty_limit: Option<u64>,
    /// Seconds after which dirty data is written back.
    #[arg(long, default_value_t = 30)]
    pub dirty_expire: u64,
    /// Open the image with O_DIRECT, so that the host's page cache keeps no second copy of
    /// what the engine caches (the image's file system must support it).
    #[arg(long)]
    pub direct: bool,
    /// Mount read-only: nothing is written to the image, not even log recovery.
    #[arg(long)]
    pub read_only: bool,
    /// Threads serving kernel requests.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// Let other users than the one mounting use the mount (as root, or with
    /// `user_allow_other` in /etc/fuse.conf).
    #[arg(long)]
    pub allow_other: bool,
    /// For tests of error reporting: every device write to the data area fails with EIO.
    #[arg(long, hide = true)]
    pub fail_data_writes: bool,
}

/// `iomapfs mkfs`.
#[derive(Debug, Args)]
pub struct MkfsArgs {
    /// The image file (created if missing) or block device.
    pub image: PathBuf,
    /// Size of a new image [default: 8G]; an existing file is resized to it.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Block size: a power of two from 512 to 65536.
    #[arg(long, default_value_t = 4096)]
    pub block_size: u32,
    /// Format over an existing extentfs.
    #[arg(long)]
    pub force: bool,
}

/// `iomapfs fsck`.
#[derive(Debug, Args)]
pub struct FsckArgs {
    /// The image file or block device (not while it is mounted).
    pub image: PathBuf,
    /// Fix what is safe to fix.
    #[arg(long)]
    pub repair: bool,
}

/// `iomapfs stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// A mount served by `iomapfs mount`.
    #[arg(default_value = "mnt")]
    pub mountpoint: PathBuf,
    /// Print the daemon's JSON document as it is.
    #[arg(long)]
    pub json: bool,
}

/// `iomapfs exercise`.
#[derive(Debug, Args)]
pub struct ExerciseArgs {
    /// Operations to run.
    #[arg(long, default_value_t = 10_000)]
    pub ops: usize,
    /// Seed of the operation list [default: from the time, printed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Block size: a power of two from 512 to 65536.
    #[arg(long, default_value_t = 4096, value_parser = parse_block_size)]
    pub block_size: u32,
    /// Largest folio of the cache: a power of two (K, M suffixes).
    #[arg(long, value_parser = parse_size, default_value = "2M")]
    pub max_folio: u64,
    /// The cache's memory budget (K, M, G suffixes).
    #[arg(long, value_parser = parse_size, default_value = "64M")]
    pub cache_size: u64,
    /// Files the operations work on.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub files: u16,
    /// Also cut the power, after a sync and without one, and check what recovery keeps.
    #[arg(long)]
    pub crash: bool,
    /// Also make device writes, flushes and reads fail, and check that every failure is
    /// reported to fsync and that nothing unreported is lost.
    #[arg(long)]
    pub faults: bool,
    /// Threads running the operations on files at once, each on the files it owns (no more
    /// than --files); operations on the whole file system run alone between.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub threads: u16,
    /// Seconds to spend shrinking a failing run (each try re-runs up to the failure).
    #[arg(long, default_value_t = 300)]
    pub shrink_secs: u64,
    /// For tests of failure reporting: corrupt the model at this operation.
    #[arg(long, hide = true)]
    pub inject_mismatch_at: Option<usize>,
}

/// `iomapfs bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Where to write the chart of the ratios.
    #[arg(long, default_value = "bench.svg")]
    pub svg: PathBuf,
    /// Where to make the run's scratch directory (removed after it): on a disk file system
    /// that supports O_DIRECT, not tmpfs.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Run only these cases (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<bench::Case>,
    /// Tiny sizes and two rounds, for smoke tests: the figures mean little.
    #[arg(long)]
    pub quick: bool,
    /// Rounds of each case, the sides alternating which goes first [default: 5, 2 with
    /// --quick].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: Option<u32>,
    /// Measure one row of one memory case once in this process and print its figures as JSON
    /// (how the suite runs those cases, each row of each round in a fresh process).
    #[arg(long, hide = true, value_name = "ROW")]
    pub child: Option<usize>,
}

fn parse_block_size(s: &str) -> Result<u32, String> {
    let bs: u32 = s
        .parse()
        .map_err(|_| format!("block size {s:?} is not a number"))?;
    if bs.is_power_of_two() && (512..=65536).contains(&bs) {
        Ok(bs)
    } else {
        Err(format!(
            "block size {bs} is not a power of two from 512 to 65536"
        ))
    }
}

/// What went wrong, in words.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A system call or file failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The filesystem refused.
    #[error("{context}: {source}")]
    Fs {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: extentfs::Error,
    },
    /// The arguments cannot work.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    fn fs(context: impl Into<String>) -> impl FnOnce(extentfs::Error) -> CliError {
        let context = context.into();
        move |source| CliError::Fs { context, source }
    }
}

impl Cli {
    /// Whether the subcommand's own output says everything: the exercise injects the errors
    /// the file system would log, so by default it logs nothing.
    pub fn quiet(&self) -> bool {
        matches!(self.command, Command::Exercise(_))
    }
}

/// Runs the subcommand; its exit status.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Mount(a) => mount::run(a).map(|()| ExitCode::SUCCESS),
        Command::Mkfs(a) => mkfs::run(a).map(|()| ExitCode::SUCCESS),
        Command::Fsck(a) => fsck::run(a),
        Command::Stats(a) => stats::run(a).map(|()| ExitCode::SUCCESS),
        Command::Exercise(a) => exercise::run(a),
        Command::Bench(a) => bench::run(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn mount_defaults_to_the_image_and_mountpoint_in_this_directory() {
        let cli = Cli::try_parse_from(["iomapfs", "mount"]).expect("parses");
        let Command::Mount(a) = cli.command else {
            panic!("not mount");
        };
        assert_eq!(a.image, PathBuf::from("iomapfs.img"));
        assert_eq!(a.mountpoint, PathBuf::from("mnt"));
        assert_eq!(a.size, 8 << 30);
        assert_eq!(a.device, DeviceChoice::Auto);
    }

    #[test]
    fn bad_arguments_are_refused_with_a_reason() {
        let err = Cli::try_parse_from(["iomapfs", "mount", "--cache-size", "12Q"]).unwrap_err();
        assert!(err.to_string().contains("unknown unit"), "{err}");
        let err = Cli::try_parse_from(["iomapfs", "mount", "--device", "nvme"]).unwrap_err();
        assert!(err.to_string().contains("nvme"), "{err}");
        let err = Cli::try_parse_from(["iomapfs", "mount", "--threads", "0"]).unwrap_err();
        assert!(err.to_string().contains("1..=256"), "{err}");
    }
}

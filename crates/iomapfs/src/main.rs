//! `iomapfs`: mounts extentfs images through FUSE, every byte going through the userspace iomap
//! engine, and the tools around it (`mkfs`, `fsck`, `stats`).

#![forbid(unsafe_code)]

mod cli;
mod errno;
mod fuse;
mod image;
mod size;
mod stats;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    init_logging(args.quiet());
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("iomapfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr through `tracing`; `RUST_LOG` chooses what (default: info for our crates,
/// nothing when `quiet`).
fn init_logging(quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet {
        "off"
    } else {
        "iomapfs=info,extentfs=info,iomap=warn,fuser=error"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

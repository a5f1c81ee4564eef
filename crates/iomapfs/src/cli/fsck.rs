//! `iomapfs fsck`: checks an image and prints what it found, exiting as e2fsck does.

use std::process::ExitCode;
use std::time::Duration;

use indicatif::ProgressBar;

use super::{CliError, FsckArgs};
use crate::image::{DeviceChoice, LockedImage};

/// e2fsck's status for a check that could not be done at all.
const OPERATIONAL_ERROR: u8 = 8;

pub fn run(a: FsckArgs) -> Result<ExitCode, CliError> {
    let opened = LockedImage::lock(&a.image).and_then(|image| {
        Ok((
            image.open_device(DeviceChoice::File, !a.repair, false)?,
            image,
        ))
    });
    let ((dev, _), _image) = match opened {
        Ok(v) => v,
        Err(e) => {
            eprintln!("iomapfs: {e}");
            return Ok(ExitCode::from(OPERATIONAL_ERROR));
        }
    };
    let spinner = ProgressBar::new_spinner().with_message(format!(
        "checking {}{}",
        a.image.display(),
        if a.repair { " and repairing" } else { "" }
    ));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let report = extentfs::fsck::fsck(dev, a.repair);
    spinner.finish_and_clear();

    for n in &report.notes {
        println!("note: {n}");
    }
    for p in &report.fixed {
        println!("repaired: {p}");
    }
    for p in &report.problems {
        println!("problem: {p}");
    }
    let verdict = match report.exit_code() {
        0 => "clean",
        1 => "repaired",
        4 => "errors left uncorrected",
        _ => "could not be checked",
    };
    println!(
        "{}: {verdict}; {} inodes, {} blocks in use, {} free",
        a.image.display(),
        report.inodes,
        report.used_blocks,
        report.free_blocks
    );
    if !report.problems.is_empty() && !a.repair {
        println!(
            "run `iomapfs fsck --repair {}` to fix what is safe to fix",
            a.image.display()
        );
    }
    Ok(ExitCode::from(report.exit_code() as u8))
}

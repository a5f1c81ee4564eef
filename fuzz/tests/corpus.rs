//! The committed corpus, run through every target's body without libFuzzer: the seeds are
//! what the generator makes, the base image is one fsck finds clean, and no input in the
//! corpus (seeds and the regression inputs beside them) crashes its target.

use std::path::Path;

use iomapfs_fuzz::{base, checkpoint, decode, image, ops, replay, seeds};

#[test]
fn seeds_are_committed_as_generated() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for s in seeds::all() {
        let path = root.join(s.target).join(&s.name);
        let on_disk = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (cargo run --example seeds)", path.display()));
        assert!(
            on_disk == s.bytes,
            "{} differs from what the generator makes (cargo run --example seeds)",
            path.display()
        );
    }
}

#[test]
fn base_image_is_clean_for_every_block_size() {
    for i in 0..base::BLOCK_SIZES.len() as u8 {
        let img = image::Image::parse(&image::undamaged(i)).expect("a description");
        let report = extentfs::fsck::fsck(img.device(), false);
        assert!(
            report.problems.is_empty(),
            "block size {}: {:?}",
            base::BLOCK_SIZES[usize::from(i)],
            report.problems
        );
        assert_eq!(report.replay.records, 3, "every log record replays");
        let fs = extentfs::ExtentFs::mount(img.device(), extentfs::MountOptions::default())
            .expect("the base image mounts");
        assert!(fs.lookup(extentfs::ROOT_INO, b"new").is_ok());
        fs.unmount().expect("unmount");
    }
}

#[test]
fn corpus_inputs_do_not_crash() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    type Target = (&'static str, fn(&[u8]));
    let targets: [Target; 5] = [
        ("decode", decode::run),
        ("checkpoint", checkpoint::run),
        ("replay", replay::run),
        ("image", image::run),
        ("ops", ops::run),
    ];
    for (target, run) in targets {
        let mut n = 0;
        for entry in std::fs::read_dir(root.join(target)).expect("a corpus directory") {
            let path = entry.expect("an entry").path();
            run(&std::fs::read(&path).expect("a corpus file"));
            n += 1;
        }
        assert!(n > 0, "no corpus for {target}");
    }
}

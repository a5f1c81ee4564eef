//! Writes the corpus seeds (`src/seeds.rs`) under `corpus/<target>/`:
//! `cargo run --example seeds` from `fuzz/`. Other files there (regression inputs) are left
//! alone.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for s in iomapfs_fuzz::seeds::all() {
        let dir = root.join(s.target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&s.name), &s.bytes)?;
        println!("{}/{} ({} bytes)", s.target, s.name, s.bytes.len());
    }
    Ok(())
}

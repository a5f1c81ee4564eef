//! Rough throughput of extentfs on a file device: sequential 1 MiB writes and fsync, cold and
//! cached sequential reads, 4 KiB random overwrites and fsync, 4 KiB random cached reads.
//! Usage: `cargo run --release -p extentfs --example throughput [IMAGE] [MiB]`.

use std::sync::Arc;
use std::time::Instant;

use extentfs::{mkfs, ExtentFs, MkfsOptions, MountOptions, ROOT_INO};
use iomap_dev::{open_device, DeviceKind, DeviceOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "throughput.img".into());
    let mib: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let bytes = mib << 20;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    f.set_len(bytes * 2 + (256 << 20))?;
    drop(f);
    let dev = open_device(
        DeviceKind::File,
        std::path::Path::new(&path),
        &DeviceOptions::default(),
    )?;
    mkfs(Arc::clone(&dev), &MkfsOptions::default())?;
    let fs = ExtentFs::mount(Arc::clone(&dev), MountOptions::default())?;
    let ino = fs.create(ROOT_INO, b"f", 0o644, 0, 0)?.ino;
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    for i in 0..mib {
        fs.write(ino, i << 20, &chunk)?;
    }
    report("  of which the writes", bytes, t);
    let fh = fs.open(ino)?;
    fs.fsync(&fh, false)?;
    report("sequential write + fsync", bytes, t);
    // The kernel doing the same on the same file system: pwrite and fdatasync.
    {
        use std::os::unix::fs::FileExt;
        let raw = format!("{path}.raw");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&raw)?;
        let t = Instant::now();
        for i in 0..mib {
            f.write_all_at(&chunk, i << 20)?;
        }
        f.sync_data()?;
        report("kernel: pwrite + fdatasync", bytes, t);
        std::fs::remove_file(&raw)?;
    }
    fs.drop_caches()?;
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    for i in 0..mib {
        fs.read(ino, i << 20, &mut buf)?;
    }
    report("cold sequential read", bytes, t);
    let t = Instant::now();
    for i in 0..mib {
        fs.read(ino, i << 20, &mut buf)?;
    }
    report("cached sequential read", bytes, t);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let blocks = bytes / 4096;
    let n = 100_000u64;
    let small = vec![0xa5u8; 4096];
    let t = Instant::now();
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        fs.write(ino, (x % blocks) * 4096, &small)?;
    }
    fs.fsync(&fh, false)?;
    report("4 KiB random overwrite + fsync", n * 4096, t);
    let mut b4 = vec![0u8; 4096];
    let t = Instant::now();
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        fs.read(ino, (x % blocks) * 4096, &mut b4)?;
    }
    report("4 KiB random cached read", n * 4096, t);
    fs.release(fh)?;
    let t = Instant::now();
    fs.unmount()?;
    println!("unmount: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    std::fs::remove_file(&path)?;
    Ok(())
}

fn report(what: &str, bytes: u64, t: Instant) {
    let s = t.elapsed().as_secs_f64();
    println!(
        "{what:32} {:8.1} MiB/s  {:8.0} ops/s(4K)",
        bytes as f64 / s / 1048576.0,
        bytes as f64 / 4096.0 / s
    );
}

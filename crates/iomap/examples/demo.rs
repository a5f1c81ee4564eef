//! Writes a file through the engine onto a file-backed device, reads it back, fsyncs it, and
//! prints what the cache did: hits, misses, device requests, how many blocks merged into them,
//! and the ioends writeback built.
//!
//! `cargo run --release -p iomap --example demo [IMAGE]` (default `./demo.img`, 256 MiB).

use std::error::Error;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iomap::iomap_dev::{BlockDeviceExt, DevAddr, DeviceOptions, FileDevice};
use iomap::{
    buffered_read, buffered_write, CacheConfig, IomapOps, LinearMap, Mapping, OpenFile, PageCache,
    SliceSource, WritebackOps,
};

const MIB: u64 = 1 << 20;

fn rate(bytes: u64, took: Duration) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    format!(
        "{} MiB in {:.1} ms ({:.2} GiB/s)",
        bytes / MIB,
        took.as_secs_f64() * 1e3,
        gib / took.as_secs_f64()
    )
}

fn main() -> Result<(), Box<dyn Error>> {
    let image = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("demo.img"), PathBuf::from);
    let capacity = 256 * MIB;
    let half = capacity / 2;
    let dev = Arc::new(FileDevice::create(
        &image,
        capacity,
        DeviceOptions::default(),
    )?);
    let cache = PageCache::new(CacheConfig::default())?;
    let mapping = Arc::new(Mapping::new(Arc::clone(&cache), dev.clone(), 4096)?);
    // The simplest filesystem: file offset N lives at device offset N.
    let linear = Arc::new(LinearMap::new(DevAddr(0), capacity));
    let wb: Arc<dyn WritebackOps> = linear.clone();
    let fs: &dyn IomapOps = &*linear;
    let file = OpenFile::open(&mapping);

    // Lay down a first half directly on the device, as an existing file would be.
    let pattern: Vec<u8> = (0..capacity).map(|i| (i % 251) as u8).collect();
    dev.write_at(DevAddr(0), &pattern[..half as usize])?;
    mapping.set_size(half);

    // Touched now, so the timings below are not page faults of the destination.
    let mut buf = vec![1u8; half as usize];
    let t = Instant::now();
    assert_eq!(buffered_read(&mapping, fs, 0, &mut buf)?, half as usize);
    let cold = t.elapsed();
    assert!(
        buf == pattern[..half as usize],
        "read back what the device holds"
    );
    let t = Instant::now();
    assert_eq!(buffered_read(&mapping, fs, 0, &mut buf)?, half as usize);
    let warm = t.elapsed();

    // Extend the file through the cache, then overwrite single bytes here and there.
    let mut src = SliceSource::new(&pattern[half as usize..]);
    assert_eq!(buffered_write(&mapping, fs, half, half, &mut src)?, half);
    for i in 0..1000u64 {
        let pos = i * 65537 % capacity;
        let byte = &pattern[pos as usize..][..1];
        buffered_write(&mapping, fs, pos, 1, &mut SliceSource::new(byte))?;
    }
    let mut all = vec![0u8; capacity as usize];
    buffered_read(&mapping, fs, 0, &mut all)?;
    assert!(all == pattern, "the whole file reads back");
    let dirty = mapping.dirty_folios(0, u64::MAX).len();

    let t = Instant::now();
    file.fsync(&wb, 0, u64::MAX, false)?;
    let synced = t.elapsed();
    dev.read_at(DevAddr(0), &mut all)?;
    assert!(all == pattern, "the device holds the file after fsync");

    let s = cache.stats().snapshot();
    let mib = |b: u64| b as f64 / MIB as f64;
    println!("image          {}", image.display());
    println!("file size      {} MiB", capacity / MIB);
    println!("cold read      {}", rate(half, cold));
    println!("cached read    {}", rate(half, warm));
    println!("folios cached  {}", mapping.nr_folios());
    println!("read hits      {}, misses {}", s.read_hits, s.read_misses);
    println!(
        "device reads   {} requests, {:.1} MiB, {:.1} blocks per request",
        s.dev_read_requests,
        mib(s.dev_read_bytes),
        s.dev_read_bytes as f64 / 4096.0 / s.dev_read_requests.max(1) as f64
    );
    println!("bytes written  {:.1} MiB", mib(s.bytes_written));
    println!(
        "fsync          {} dirty folios written back in {:.1} ms",
        dirty,
        synced.as_secs_f64() * 1e3
    );
    println!(
        "device writes  {} ioends, {:.1} MiB, {:.1} blocks per request",
        s.ioends,
        mib(s.dev_write_bytes),
        s.dev_write_bytes as f64 / 4096.0 / s.dev_write_requests.max(1) as f64
    );
    Ok(())
}

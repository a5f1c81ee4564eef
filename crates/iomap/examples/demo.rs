//! Writes a file through the engine onto a file-backed device, reads it back, and prints what
//! the cache did: hits, misses, device requests and how many blocks merged into them.
//!
//! `cargo run --release -p iomap --example demo [IMAGE]` (default `./demo.img`, 256 MiB).

use std::error::Error;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use iomap::iomap_dev::{BlockDeviceExt, DevAddr, FileDevice, FileDeviceOptions};
use iomap::{
    buffered_read, buffered_write, CacheConfig, Iomap, IomapOps, IomapPair, IterFlags, Mapping,
    PageCache, SliceSource,
};

/// The simplest filesystem: file offset N lives at device offset N.
struct Linear {
    capacity: u64,
}

impl IomapOps for Linear {
    fn begin(&self, _pos: u64, _len: u64, _flags: IterFlags) -> iomap::Result<IomapPair> {
        Ok(Iomap::mapped(0, self.capacity, DevAddr(0)).into())
    }
}

const MIB: u64 = 1 << 20;

fn main() -> Result<(), Box<dyn Error>> {
    let image = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("demo.img"), PathBuf::from);
    let capacity = 256 * MIB;
    let dev = Arc::new(FileDevice::create(
        &image,
        capacity,
        FileDeviceOptions::default(),
    )?);
    let cache = PageCache::new(CacheConfig::default())?;
    let mapping = Mapping::new(Arc::clone(&cache), dev.clone(), 4096)?;
    let fs = Linear { capacity };

    // Lay down a first half directly on the device, as an existing file would be.
    let pattern: Vec<u8> = (0..capacity).map(|i| (i % 251) as u8).collect();
    let half = (capacity / 2) as usize;
    dev.write_at(DevAddr(0), &pattern[..half])?;
    mapping.set_size(capacity / 2);

    let t = Instant::now();
    let mut buf = vec![1u8; half]; // touched now, so the timing below is not page faults
    let n = buffered_read(&mapping, &fs, 0, &mut buf)?;
    assert_eq!(n, half);
    assert!(buf == pattern[..half], "read back what the device holds");
    let cold = t.elapsed();

    let t = Instant::now();
    let n = buffered_read(&mapping, &fs, 0, &mut buf)?;
    assert_eq!(n, half);
    let warm = t.elapsed();

    // Extend the file through the cache, then overwrite single bytes here and there.
    let n = buffered_write(
        &mapping,
        &fs,
        half as u64,
        half as u64,
        &mut SliceSource::new(&pattern[half..]),
    )?;
    assert_eq!(n, half as u64);
    for i in 0..1000u64 {
        let pos = i * 65537 % capacity;
        buffered_write(
            &mapping,
            &fs,
            pos,
            1,
            &mut SliceSource::new(&pattern[pos as usize..][..1]),
        )?;
    }
    let mut all = vec![0u8; capacity as usize];
    buffered_read(&mapping, &fs, 0, &mut all)?;
    assert!(all == pattern, "the whole file reads back");

    let s = cache.stats().snapshot();
    let mib = |b: u64| b as f64 / MIB as f64;
    println!("image            {}", image.display());
    println!("file size        {} MiB", capacity / MIB);
    println!(
        "cold read        {} MiB in {:.1} ms ({:.2} GiB/s)",
        half as u64 / MIB,
        cold.as_secs_f64() * 1e3,
        mib(half as u64) / 1024.0 / cold.as_secs_f64()
    );
    println!(
        "cached read      {} MiB in {:.1} ms ({:.2} GiB/s)",
        half as u64 / MIB,
        warm.as_secs_f64() * 1e3,
        mib(half as u64) / 1024.0 / warm.as_secs_f64()
    );
    println!("folios cached    {}", mapping.nr_folios());
    println!(
        "dirty folios     {}",
        mapping.dirty_folios(0, u64::MAX).len()
    );
    println!("read hits        {}", s.read_hits);
    println!("read misses      {}", s.read_misses);
    println!(
        "device reads     {} requests, {:.1} MiB",
        s.dev_read_requests,
        mib(s.dev_read_bytes)
    );
    println!(
        "merge ratio      {:.1} blocks per request",
        s.dev_read_bytes as f64 / 4096.0 / s.dev_read_requests.max(1) as f64
    );
    println!("bytes written    {:.1} MiB", mib(s.bytes_written));
    Ok(())
}

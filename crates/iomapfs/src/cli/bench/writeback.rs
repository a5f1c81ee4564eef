//! Writeback: a whole dirty file against O_DIRECT writes of the same size, and the device
//! requests that random dirty blocks go out in against the fewest that can carry them.
//!
//! The engine writes back to a `FileDevice` opened O_DIRECT (4 KiB logical blocks, 1 MiB
//! requests) on a file written in full beforehand, so that every write is an overwrite; the
//! filesystem is one extent over the whole file. The baseline writes a second such file in the
//! same directory. Each side's time includes its flush (`fdatasync`). The engine's cache is
//! dirtied again, untimed and with new contents, before each of its rounds, and sampled blocks
//! of both files are read back after each round.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iomap::iomap_dev::{
    BlockDevice, BlockDeviceExt, DevAddr, FileDevice, IoBuf, LogDevice, LoggedRequest, Op,
};
use iomap::{
    buffered_read, buffered_write, write_and_wait_range, CacheConfig, LinearMap, Mapping,
    PageCache, SliceSource, StatsSnapshot, WritebackOps,
};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::data::{
    check_samples, create_direct, direct_device, open_direct, pattern_into, size_words, thousands,
    BLOCK, CHUNK, MIB,
};
use super::row::{Row, Target, Unit};
use super::{both, fail, Case, Config, Context, Progress, Result};

/// Blocks of each file read back after a round.
const SAMPLES: usize = 256;

/// A cache over one device file, a filesystem of one extent, and its writeback.
struct Engine {
    mapping: Arc<Mapping>,
    fs: Arc<LinearMap>,
    wb: Arc<dyn WritebackOps>,
}

impl Engine {
    fn new(dev: Arc<dyn BlockDevice>, size: u64) -> Result<Self> {
        let cache = PageCache::new(CacheConfig::default()).context(|| "a cache")?;
        let mapping = Mapping::new(cache, dev, BLOCK as u32).context(|| "a mapping")?;
        mapping.set_size(size);
        let fs = Arc::new(LinearMap::new(DevAddr(0), size));
        let wb: Arc<dyn WritebackOps> = Arc::clone(&fs) as Arc<dyn WritebackOps>;
        Ok(Self {
            mapping: Arc::new(mapping),
            fs,
            wb,
        })
    }

    fn stats(&self) -> StatsSnapshot {
        self.mapping.cache().stats().snapshot()
    }

    fn write(&self, pos: u64, data: &[u8]) -> Result<()> {
        let n = buffered_write(
            &self.mapping,
            &*self.fs,
            pos,
            data.len() as u64,
            &mut SliceSource::new(data),
        )
        .context(|| format!("engine write at {pos}"))?;
        if n != data.len() as u64 {
            return Err(fail(format!("short engine write at {pos}")));
        }
        Ok(())
    }

    /// Writes generation `gen` over the whole file (untimed).
    fn write_all(&self, gen: u64) -> Result<()> {
        let size = self.mapping.size();
        let mut chunk = vec![0u8; 8 * CHUNK as usize];
        let mut pos = 0;
        while pos < size {
            let n = (size - pos).min(chunk.len() as u64) as usize;
            pattern_into(&mut chunk[..n], pos, gen);
            self.write(pos, &chunk[..n])?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Writes back everything and flushes the device: the timed work.
    fn writeback_and_flush(&self) -> Result<Duration> {
        let t = Instant::now();
        write_and_wait_range(&self.mapping, &self.wb, 0, u64::MAX)
            .context(|| "engine writeback")?;
        self.mapping
            .dev()
            .flush()
            .context(|| "engine device flush")?;
        let took = t.elapsed();
        if !self.mapping.dirty_folios(0, u64::MAX).is_empty()
            || !self.mapping.writeback_folios(0, u64::MAX).is_empty()
        {
            return Err(fail("folios left dirty or under writeback after writeback"));
        }
        Ok(took)
    }
}

/// The two data files of a case, removed when dropped.
struct Files {
    engine: PathBuf,
    direct: PathBuf,
}

impl Files {
    fn create(dir: &Path, name: &str, size: u64, p: &Progress) -> Result<Self> {
        let files = Self {
            engine: dir.join(format!("{name}-engine.img")),
            direct: dir.join(format!("{name}-direct.img")),
        };
        p.stage(format!("{name}: writing 2 x {} MiB", size / MIB))?;
        create_direct(&files.engine, size)?;
        create_direct(&files.direct, size)?;
        Ok(files)
    }

    fn engine_device(&self) -> Result<FileDevice> {
        FileDevice::open(&self.engine, direct_device())
            .context(|| format!("open {} with O_DIRECT", self.engine.display()))
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.engine);
        let _ = fs::remove_file(&self.direct);
    }
}

/// 1 MiB O_DIRECT writes over the whole file from one reused buffer, then `fdatasync`.
fn direct_pass(file: &File, size: u64, buf: &[u8]) -> Result<Duration> {
    let t = Instant::now();
    let mut pos = 0;
    while pos < size {
        file.write_all_at(buf, pos)
            .context(|| format!("O_DIRECT write at {pos}"))?;
        pos += buf.len() as u64;
    }
    file.sync_data().context(|| "fdatasync")?;
    Ok(t.elapsed())
}

/// `writeback`: the whole file written back, against O_DIRECT writes of it.
pub fn sequential(cfg: &Config, p: &Progress) -> Result<Vec<Row>> {
    let size = cfg.sizes.writeback_file;
    let files = Files::create(&cfg.dir, "writeback", size, p)?;
    let engine = Engine::new(Arc::new(files.engine_device()?), size)?;
    let direct = open_direct(&files.direct, false)?;
    let verify = open_direct(&files.engine, false)?;
    // A 1 MiB buffer on 4 KiB pages, as an aligned allocation of that size gets.
    let mut buf = IoBuf::zeroed(CHUNK as usize);
    let mut row = Row::new(
        Case::Writeback,
        format!("writeback of {} dirty, + flush", size_words(size)),
        Unit::BytesPerSec,
        "O_DIRECT 1 MiB writes, + fdatasync",
    )
    .target(Target::at_least(0.9));
    for round in 0..cfg.rounds {
        let gen = 1 + round as u64;
        p.stage_round("writeback", round, cfg.rounds)?;
        engine.write_all(gen)?;
        pattern_into(&mut buf, 0, 0x100 + gen);
        let before = engine.stats();
        let (e, d) = both(
            round,
            || engine.writeback_and_flush(),
            || direct_pass(&direct, size, &buf),
        )?;
        let written = engine.stats().dev_write_bytes - before.dev_write_bytes;
        if written != size {
            return Err(fail(format!(
                "the engine wrote back {written} bytes of {size}"
            )));
        }
        check_samples(
            &verify,
            "the engine's file",
            size,
            SAMPLES,
            gen,
            |pos, want| pattern_into(want, pos, gen),
        )?;
        check_samples(
            &direct,
            "the O_DIRECT file",
            size,
            SAMPLES,
            gen,
            |pos, want| {
                let at = (pos % CHUNK) as usize;
                want.copy_from_slice(&buf[at..at + BLOCK as usize]);
            },
        )?;
        let rate = |t: Duration| size as f64 / t.as_secs_f64();
        row.push(rate(e), rate(d));
        p.round(round, cfg.rounds, &row, ["engine", "O_DIRECT"]);
        p.done(2)?;
    }
    Ok(vec![row])
}

/// The fewest write requests that carry the dirty `blocks` (sorted): one per run of adjacent
/// blocks, each run cut at the device's largest request. Also the number of runs.
fn minimal_requests(blocks: &[u64], max_request: u64) -> (Vec<(u64, u64)>, u64) {
    let mut pieces = Vec::new();
    let mut runs = 0;
    let mut i = 0;
    while i < blocks.len() {
        let mut j = i + 1;
        while j < blocks.len() && blocks[j] == blocks[j - 1] + 1 {
            j += 1;
        }
        runs += 1;
        let (mut at, end) = (blocks[i] * BLOCK, (blocks[j - 1] + 1) * BLOCK);
        while at < end {
            let len = (end - at).min(max_request);
            pieces.push((at, len));
            at += len;
        }
        i = j;
    }
    (pieces, runs)
}

/// Whether the logged writes are exactly `pieces`, in order.
fn same_requests(writes: &[&LoggedRequest], pieces: &[(u64, u64)]) -> bool {
    writes.len() == pieces.len()
        && writes
            .iter()
            .zip(pieces)
            .all(|(r, &(at, len))| r.addr == DevAddr(at) && r.len == len)
}

/// `merge`: each round dirties distinct random blocks of a clean, uptodate cache in random
/// order; writeback must send the fewest requests that carry them, in ascending order. Its
/// time is set beside an O_DIRECT replay of those fewest requests.
pub fn merge(cfg: &Config, p: &Progress) -> Result<Vec<Row>> {
    let size = cfg.sizes.merge_file;
    let nblocks = size / BLOCK;
    let count = cfg.sizes.merge_blocks.min(nblocks);
    let files = Files::create(&cfg.dir, "merge", size, p)?;
    let log = Arc::new(LogDevice::new(files.engine_device()?));
    let engine = Engine::new(Arc::clone(&log) as Arc<dyn BlockDevice>, size)?;
    let direct = open_direct(&files.direct, false)?;
    let verify = open_direct(&files.engine, false)?;

    // Read the whole file in: every folio clean and uptodate.
    p.stage("merge: reading the file into the cache")?;
    let mut chunk = vec![0u8; 8 * CHUNK as usize];
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(chunk.len() as u64) as usize;
        let got = buffered_read(&engine.mapping, &*engine.fs, pos, &mut chunk[..n])
            .context(|| format!("engine read at {pos}"))?;
        if got != n {
            return Err(fail(format!("short engine read at {pos}")));
        }
        pos += n as u64;
    }
    log.take();

    let mut requests = Row::new(
        Case::Merge,
        format!(
            "write requests for {} random dirty 4 KiB blocks in {}",
            thousands(count as f64),
            size_words(size)
        ),
        Unit::Requests,
        "the fewest that carry them",
    )
    .target(Target::at_most(1.0));
    let mut speed = Row::new(
        Case::Merge,
        format!(
            "writeback of those {} blocks, + flush",
            thousands(count as f64)
        ),
        Unit::BytesPerSec,
        "O_DIRECT replay of the fewest requests, + fdatasync",
    );
    let mut gens = vec![0u64; nblocks as usize];
    let mut all: Vec<u64> = (0..nblocks).collect();
    let mut replay_buf = IoBuf::zeroed(2 * CHUNK as usize);
    let mut data = vec![0u8; BLOCK as usize];
    for round in 0..cfg.rounds {
        p.stage_round("merge", round, cfg.rounds)?;
        let gen = 0x200 + round as u64;
        let mut rng = SmallRng::seed_from_u64(0x3b5 + round as u64);
        let (chosen, _) = all.partial_shuffle(&mut rng, count as usize);
        let mut blocks = chosen.to_vec();
        for &b in &blocks {
            pattern_into(&mut data, b * BLOCK, gen);
            engine.write(b * BLOCK, &data)?;
            gens[b as usize] = gen;
        }
        if !log.take().is_empty() {
            return Err(fail("dirtying an uptodate cache touched the device"));
        }
        blocks.sort_unstable();
        let (pieces, runs) = minimal_requests(&blocks, engine.mapping.dev().max_request_bytes());
        pattern_into(&mut replay_buf, 0, gen);
        let (e, d) = both(
            round,
            || engine.writeback_and_flush(),
            || {
                let t = Instant::now();
                for &(at, len) in &pieces {
                    direct
                        .write_all_at(&replay_buf[..len as usize], at)
                        .context(|| format!("O_DIRECT write at {at}"))?;
                }
                direct.sync_data().context(|| "fdatasync")?;
                Ok(t.elapsed())
            },
        )?;
        let logged = log.take();
        let writes: Vec<&LoggedRequest> = logged.iter().filter(|r| r.op == Op::Write).collect();
        let ascending = writes
            .windows(2)
            .all(|w| w[1].addr.0 >= w[0].addr.0 + w[0].len);
        if !ascending {
            requests.notes.push(format!(
                "round {}: requests not in ascending order",
                round + 1
            ));
        } else if writes.len() == pieces.len() && !same_requests(&writes, &pieces) {
            requests.notes.push(format!(
                "round {}: as many requests as the fewest, but not the same ones",
                round + 1
            ));
        }
        // Every dirtied block, and a sample of the others.
        let mut got = IoBuf::zeroed(BLOCK as usize);
        for &b in &blocks {
            verify
                .read_exact_at(&mut got, b * BLOCK)
                .context(|| "read back the engine's file")?;
            pattern_into(&mut data, b * BLOCK, gen);
            if *got != *data {
                return Err(fail(format!(
                    "merge: the block at {} was not written back",
                    b * BLOCK
                )));
            }
        }
        check_samples(
            &verify,
            "the engine's file",
            size,
            SAMPLES,
            gen,
            |pos, want| pattern_into(want, pos, gens[(pos / BLOCK) as usize]),
        )?;
        requests.push(writes.len() as f64, pieces.len() as f64);
        let dirty = (blocks.len() as u64 * BLOCK) as f64;
        speed.push(dirty / e.as_secs_f64(), dirty / d.as_secs_f64());
        p.log(format!(
            "round {}/{}: merge: {} blocks in {runs} runs: {} write requests for {} at the \
             fewest; writeback {:.1?}, O_DIRECT replay {:.1?}",
            round + 1,
            cfg.rounds,
            blocks.len(),
            writes.len(),
            pieces.len(),
            e,
            d
        ));
        p.done(2)?;
    }
    Ok(vec![requests, speed])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fewest_requests_are_one_a_run_cut_at_the_largest_request() {
        let blocks = [0, 1, 2, 5, 7, 8];
        let (pieces, runs) = minimal_requests(&blocks, 2 * BLOCK);
        assert_eq!(runs, 3);
        assert_eq!(
            pieces,
            vec![
                (0, 2 * BLOCK),
                (2 * BLOCK, BLOCK),
                (5 * BLOCK, BLOCK),
                (7 * BLOCK, 2 * BLOCK)
            ]
        );
    }
}

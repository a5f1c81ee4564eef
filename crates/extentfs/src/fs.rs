//! Making, mounting and unmounting an extentfs, and the per-file state the engine works on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use iomap::{CacheConfig, ErrSeq, Mapping, PageCache, WritebackOps};
use iomap_dev::{BlockDevice, BlockDeviceExt, DevAddr};
use parking_lot::{Condvar, Mutex, RwLock};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::file::{FileMap, FileWb};
use crate::format::{self, Superblock, MAX_BLOCK, MIN_BLOCK, VERSION};
use crate::journal::{self, LogState, ReplayStats, Shared, State};
use crate::meta::{Attr, FileType, Ino, Meta, Op, ROOT_INO};

/// How to format.
#[derive(Clone, Debug)]
pub struct MkfsOptions {
    /// Block size: a power of two from 512 B to 64 KiB, at least the device's sector.
    pub block_size: u32,
    /// Log size in blocks (default: 1/128 of the device, between 256 KiB and 64 MiB).
    pub log_blocks: Option<u64>,
}

impl Default for MkfsOptions {
    fn default() -> Self {
        Self {
            block_size: 4096,
            log_blocks: None,
        }
    }
}

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// The page cache's geometry (its page size is raised to the block size if smaller).
    pub cache: CacheConfig,
    /// Refuse every change and write nothing, not even log recovery.
    pub read_only: bool,
    /// Commit the log this often; `None`: only on fsync, sync and when the log fills.
    pub commit_interval: Option<Duration>,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            cache: CacheConfig::default(),
            read_only: false,
            commit_interval: Some(Duration::from_secs(5)),
        }
    }
}

/// A regular file's engine state while the filesystem has it in memory.
pub(crate) struct Node {
    pub mapping: Arc<Mapping>,
    pub map: Arc<FileMap>,
    pub wb: Arc<dyn WritebackOps>,
    /// Serializes writes, truncates and fallocate against each other (the kernel's i_rwsem).
    pub io: RwLock<()>,
    /// Open handles; an unlinked file is freed when the last closes.
    pub opens: AtomicU32,
}

struct Committer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

/// A mounted extentfs.
pub struct ExtentFs {
    pub(crate) shared: Arc<Shared>,
    pub(crate) nodes: Mutex<HashMap<Ino, Arc<Node>>>,
    committer: Mutex<Option<Committer>>,
    replayed: ReplayStats,
    was_clean: bool,
    unmounted: AtomicBool,
}

fn make_uuid() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        h.write_u32(std::process::id());
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

fn shared_for(
    dev: Arc<dyn BlockDevice>,
    sb: Superblock,
    meta: Meta,
    cache: Arc<PageCache>,
    read_only: bool,
) -> Arc<Shared> {
    Arc::new(Shared {
        dev,
        bs: u64::from(sb.block_size),
        cache,
        sb_errseq: Arc::new(ErrSeq::new()),
        state: Mutex::new(State {
            meta,
            reserved: 0,
            busy: Vec::new(),
            pending: Vec::new(),
            pending_ops: 0,
            txn: 0,
            ckpt_blocks: Vec::new(),
            dirty_attrs: Default::default(),
        }),
        log: Mutex::new(LogState {
            sb,
            head: 0,
            seq: 0,
        }),
        read_only,
        shutdown: AtomicBool::new(false),
    })
}

/// Formats `dev` as an empty extentfs.
pub fn mkfs(dev: Arc<dyn BlockDevice>, opts: &MkfsOptions) -> Result<()> {
    let bs = opts.block_size;
    if !(MIN_BLOCK..=MAX_BLOCK).contains(&bs) || !bs.is_power_of_two() {
        return Err(Error::Invalid(format!(
            "block size {bs} is not a power of two from 512 to 65536"
        )));
    }
    if bs < dev.logical_block_size() {
        return Err(Error::Invalid(format!(
            "block size {bs} is smaller than the device's sector of {} bytes",
            dev.logical_block_size()
        )));
    }
    let bs64 = u64::from(bs);
    let total_blocks = dev.capacity_bytes() / bs64;
    let log_start = format::log_start(bs);
    let log_blocks = opts.log_blocks.unwrap_or_else(|| {
        (total_blocks / 128)
            .clamp((256 << 10) / bs64, (64 << 20) / bs64)
            .max(4)
    });
    let data_start = log_start + log_blocks;
    let min_data = 64;
    if log_blocks < 4 || total_blocks < data_start + min_data {
        return Err(Error::Invalid(format!(
            "the device holds {} bytes; with a log of {log_blocks} blocks of {bs} bytes it needs at least {}",
            dev.capacity_bytes(),
            (data_start + min_data) * bs64
        )));
    }
    let mut meta = Meta::new(bs, data_start, total_blocks);
    meta.free
        .free(data_start, total_blocks - data_start)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let mut root = Attr::new(FileType::Dir, 0o755, 0, 0);
    root.nlink = 2;
    let (mut freed, mut unres) = (Vec::new(), 0);
    meta.apply(
        &Op::Create {
            ino: ROOT_INO,
            attr: root,
            target: Vec::new(),
        },
        &mut freed,
        &mut unres,
    )?;
    // Erase both superblock slots and the start of the log so nothing older is found.
    let lbs = dev.logical_block_size() as usize;
    let zero = vec![0u8; format::SB_LEN.div_ceil(lbs) * lbs];
    for off in format::SB_OFFSETS {
        dev.write_at(DevAddr(off), &zero)?;
    }
    dev.write_at(DevAddr(log_start * bs64), &vec![0u8; bs as usize])?;
    let sb = Superblock {
        version: VERSION,
        uuid: make_uuid(),
        generation: 0,
        block_size: bs,
        flags: 0,
        total_blocks,
        log_start,
        log_blocks,
        data_start,
        ckpt_block: 0,
        ckpt_nblocks: 0,
        ckpt_bytes: 0,
        ckpt_crc: 0,
    };
    let cache = PageCache::new(CacheConfig::default())?;
    let shared = shared_for(dev, sb, meta, cache, false);
    // Two checkpoints so that both superblock copies are valid from the start.
    shared.checkpoint(true)?;
    shared.checkpoint(true)?;
    Ok(())
}

impl ExtentFs {
    /// Mounts the extentfs on `dev`: reads the newer valid superblock and its checkpoint,
    /// replays the log, frees files left open-but-unlinked, and (unless read-only) writes a
    /// fresh checkpoint.
    pub fn mount(dev: Arc<dyn BlockDevice>, opts: MountOptions) -> Result<Arc<ExtentFs>> {
        let sb = journal::read_superblock(&*dev)?;
        if sb.block_size < dev.logical_block_size() {
            return Err(Error::corrupt(
                "superblock",
                format!("block size {} is below the device's sector", sb.block_size),
            ));
        }
        let (body, ckpt_blocks) = journal::read_checkpoint(&*dev, &sb)?;
        let (mut meta, _stored) = format::decode_checkpoint(&body, &sb, &ckpt_blocks)?;
        let replayed = journal::replay(&*dev, &sb, &mut meta)?;
        let was_clean = sb.flags & format::SB_CLEAN != 0;
        if replayed.records > 0 {
            info!(
                records = replayed.records,
                ops = replayed.ops,
                "replayed the log"
            );
        }
        let mut cache_cfg = opts.cache;
        cache_cfg.page_size = cache_cfg.page_size.max(sb.block_size as usize);
        cache_cfg.max_folio_size = cache_cfg.max_folio_size.max(cache_cfg.page_size);
        let cache = PageCache::new(cache_cfg)?;
        let shared = shared_for(dev, sb, meta, cache, opts.read_only);
        shared.state.lock().ckpt_blocks = ckpt_blocks;
        let fs = Arc::new(ExtentFs {
            shared,
            nodes: Mutex::new(HashMap::new()),
            committer: Mutex::new(None),
            replayed,
            was_clean,
            unmounted: AtomicBool::new(false),
        });
        if !opts.read_only {
            let orphans: Vec<Ino> = {
                let st = fs.shared.state.lock();
                st.meta
                    .inodes
                    .iter()
                    .filter(|(_, i)| i.attr.nlink == 0)
                    .map(|(&n, _)| n)
                    .collect()
            };
            let freed_orphans = !orphans.is_empty();
            if freed_orphans {
                info!(count = orphans.len(), "freeing files unlinked while open");
                fs.shared.txn(|t| {
                    for ino in orphans {
                        t.op(Op::Free { ino })?;
                    }
                    Ok(())
                })?;
            }
            if replayed.records > 0 || freed_orphans {
                // A checkpoint this mount decoded and left alone round-trips by itself; a
                // replayed log or freed orphans need checking before they are written.
                let checked = {
                    let log = fs.shared.log.lock();
                    let st = fs.shared.state.lock();
                    journal::check_checkpointable(&st.meta, &log.sb, &st.ckpt_blocks)
                };
                if let Err(e) = checked {
                    // Dropping a mounted filesystem unmounts it, which would write the state.
                    fs.abandon();
                    return Err(e);
                }
            }
            fs.shared.checkpoint(false)?;
            if let Some(every) = opts.commit_interval {
                *fs.committer.lock() = Some(spawn_committer(Arc::downgrade(&fs.shared), every));
            }
        }
        Ok(fs)
    }

    /// Whether the filesystem has stopped taking changes: shut down after an error, unmounted
    /// or abandoned.
    pub fn is_shut_down(&self) -> bool {
        self.shared.shutdown.load(Ordering::Acquire)
    }

    /// Whether the image was unmounted cleanly before this mount.
    pub fn was_clean(&self) -> bool {
        self.was_clean
    }

    /// What log replay did at mount.
    pub fn replayed(&self) -> ReplayStats {
        self.replayed
    }

    /// Block size.
    pub fn block_size(&self) -> u32 {
        self.shared.bs as u32
    }

    /// The page cache.
    pub fn cache(&self) -> &Arc<PageCache> {
        &self.shared.cache
    }

    /// The device.
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.shared.dev
    }

    /// Writes everything back, checkpoints, and marks the image clean. The filesystem refuses
    /// further changes afterwards.
    pub fn unmount(&self) -> Result<()> {
        if self.unmounted.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stop_committer();
        if self.shared.read_only {
            return Ok(());
        }
        let synced = self.syncfs();
        let res = synced.and_then(|()| self.shared.checkpoint(true));
        self.shared.shutdown.store(true, Ordering::Release);
        res
    }

    /// Stops without writing anything more, as if the power went: for crash tests.
    pub fn abandon(&self) {
        self.unmounted.store(true, Ordering::Release);
        self.shared.shutdown.store(true, Ordering::Release);
        self.stop_committer();
    }

    fn stop_committer(&self) {
        if let Some(c) = self.committer.lock().take() {
            *c.stop.0.lock() = true;
            c.stop.1.notify_all();
            if c.thread.join().is_err() {
                warn!("the commit thread panicked");
            }
        }
    }

    /// The engine state of regular file `ino`, created on first use.
    pub(crate) fn node(&self, ino: Ino) -> Result<Arc<Node>> {
        if let Some(n) = self.nodes.lock().get(&ino) {
            return Ok(Arc::clone(n));
        }
        // The state lock is never taken inside the nodes lock: transactions look nodes up.
        let size = {
            let st = self.shared.state.lock();
            let inode = st.meta.inode(ino)?;
            match inode.attr.kind {
                FileType::File => inode.attr.size,
                FileType::Dir => return Err(Error::IsDir),
                _ => return Err(Error::Invalid(format!("inode {ino} is not a regular file"))),
            }
        };
        let mut mapping = Mapping::new(
            Arc::clone(&self.shared.cache),
            Arc::clone(&self.shared.dev),
            self.shared.bs as u32,
        )?;
        mapping.set_sb_errseq(Arc::clone(&self.shared.sb_errseq));
        mapping.set_max_file_size(max_file_size(self.shared.bs));
        mapping.set_size(size);
        let mapping = Arc::new(mapping);
        let wb: Arc<dyn WritebackOps> = Arc::new(FileWb {
            shared: Arc::clone(&self.shared),
            ino,
        });
        // The cache's flusher (when the mount runs one) writes the file back with its ops.
        mapping.set_writeback_ops(Arc::clone(&wb));
        self.shared.cache.register(&mapping);
        let node = Arc::new(Node {
            map: Arc::new(FileMap {
                shared: Arc::clone(&self.shared),
                ino,
                mapping: Arc::clone(&mapping),
            }),
            wb,
            mapping,
            io: RwLock::new(()),
            opens: AtomicU32::new(0),
        });
        let mut nodes = self.nodes.lock();
        Ok(Arc::clone(nodes.entry(ino).or_insert(node)))
    }
}

/// The largest file: 2^40 blocks, within what a signed offset can express.
pub fn max_file_size(bs: u64) -> u64 {
    (bs << 40).min(i64::MAX as u64)
}

impl Drop for ExtentFs {
    fn drop(&mut self) {
        if !self.unmounted.load(Ordering::Acquire) {
            if let Err(e) = self.unmount() {
                warn!("unmounting on drop: {e}");
            }
        }
        self.stop_committer();
    }
}

fn spawn_committer(shared: Weak<Shared>, every: Duration) -> Committer {
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let s2 = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("extentfs-commit".into())
        .spawn(move || loop {
            {
                let mut stopped = s2.0.lock();
                if !*stopped {
                    s2.1.wait_for(&mut stopped, every);
                }
                if *stopped {
                    return;
                }
            }
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if let Err(e) = shared.commit() {
                warn!("periodic commit: {e}");
            }
        })
        .unwrap_or_else(|e| panic!("spawning the commit thread: {e}"));
    Committer { stop, thread }
}

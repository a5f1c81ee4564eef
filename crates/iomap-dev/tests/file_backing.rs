//! What the file and io_uring devices find out about what backs them, and how they report what
//! they cannot do: block devices and their sector size, read-only opens, a backing file that
//! shrank underneath, objects that are not devices, and alignment that O_DIRECT cannot meet.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use iomap_dev::{
    open_device, BlockDevice, BlockDeviceExt, DevAddr, DeviceKind, DeviceOptions, FileDevice,
    UringDevice,
};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iomap-dev-backing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

type Opener = fn(&Path, DeviceOptions) -> io::Result<Box<dyn BlockDevice>>;

fn openers() -> [(&'static str, Opener); 2] {
    [
        ("file", |p, o| Ok(Box::new(FileDevice::open(p, o)?))),
        ("uring", |p, o| Ok(Box::new(UringDevice::open(p, o)?))),
    ]
}

/// A loop device over a fresh file, detached on drop.
struct Loop {
    dev: PathBuf,
    file: PathBuf,
}

impl Loop {
    fn new(name: &str, bytes: u64, sector: u32) -> Option<Self> {
        if !is_root() {
            eprintln!("skipping: attaching a loop device needs root");
            return None;
        }
        let file = tmp(name);
        std::fs::File::create(&file)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show", "--sector-size", &sector.to_string()])
            .arg(&file)
            .output()
            .expect("losetup runs");
        assert!(
            out.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        Some(Self { dev, file })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        Command::new("losetup")
            .arg("-d")
            .arg(&self.dev)
            .status()
            .ok();
        std::fs::remove_file(&self.file).ok();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

#[test]
fn a_block_device_reports_its_size_and_sector_size() {
    let Some(lo) = Loop::new("loop-4k", 8 << 20, 4096) else {
        return;
    };
    for (name, open) in openers() {
        for direct in [false, true] {
            let opts = DeviceOptions {
                direct,
                ..DeviceOptions::default()
            };
            let dev = open(&lo.dev, opts).unwrap();
            assert_eq!(dev.capacity_bytes(), 8 << 20, "{name} direct={direct}");
            assert_eq!(dev.logical_block_size(), 4096, "{name} direct={direct}");
            let data: Vec<u8> = (0..16384u32).map(|i| (i % 251) as u8).collect();
            dev.write_at(DevAddr(4096), &data).unwrap();
            dev.flush().unwrap();
            let mut back = vec![0u8; 16384];
            dev.read_at(DevAddr(4096), &mut back).unwrap();
            assert_eq!(back, data, "{name} direct={direct}");
            // Requests smaller than a sector are refused before the kernel sees them.
            let err = dev.read_at(DevAddr(0), &mut [0u8; 512]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        // A logical block smaller than the sector cannot be met with O_DIRECT.
        let opts = DeviceOptions {
            direct: true,
            logical_block_size: Some(512),
            ..DeviceOptions::default()
        };
        let err = open(&lo.dev, opts).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("4096-byte alignment"), "{err}");
    }
}

#[test]
fn a_regular_file_reports_its_length_rounded_to_the_block_size() {
    let path = tmp("odd-length");
    std::fs::File::create(&path)
        .unwrap()
        .set_len((1 << 20) + 700)
        .unwrap();
    for (name, open) in openers() {
        let dev = open(&path, DeviceOptions::default()).unwrap();
        assert_eq!(dev.logical_block_size(), 512, "{name}");
        assert_eq!(dev.capacity_bytes(), (1 << 20) + 512, "{name}");
        let opts = DeviceOptions {
            logical_block_size: Some(4096),
            ..DeviceOptions::default()
        };
        assert_eq!(open(&path, opts).unwrap().capacity_bytes(), 1 << 20);
    }
    std::fs::remove_file(path).ok();
}

#[test]
fn read_only_devices_refuse_writes_and_serve_reads() {
    let path = tmp("read-only");
    std::fs::write(&path, vec![9u8; 65536]).unwrap();
    let opts = DeviceOptions {
        read_only: true,
        ..DeviceOptions::default()
    };
    for (name, open) in openers() {
        let dev = open(&path, opts.clone()).unwrap();
        let mut back = vec![0u8; 4096];
        dev.read_at(DevAddr(4096), &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 9), "{name}");
        let err = dev.write_at(DevAddr(0), &[1u8; 4096]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{name}");
    }
    assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 9));
    let err = FileDevice::create(&path, 4096, opts).err().unwrap();
    assert!(err.to_string().contains("read-only"), "{err}");
    std::fs::remove_file(path).ok();
}

#[test]
fn a_backing_file_that_shrank_reports_end_of_file() {
    let path = tmp("shrunk");
    for (name, open) in openers() {
        std::fs::write(&path, vec![4u8; 1 << 20]).unwrap();
        let dev = open(&path, DeviceOptions::default()).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(6144)
            .unwrap();
        // The first 6 KiB come back short, then nothing: an error that says so.
        let err = dev.read_at(DevAddr(4096), &mut [0u8; 8192]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{name}: {err}");
        assert!(err.to_string().contains("end of the backing file"), "{err}");
        let mut ok = vec![0u8; 4096];
        dev.read_at(DevAddr(0), &mut ok).unwrap();
        assert!(ok.iter().all(|&b| b == 4));
    }
    std::fs::remove_file(path).ok();
}

#[test]
fn objects_that_are_not_devices_are_refused_by_name() {
    let dir = tmp("a-directory");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, open) in openers() {
        let err = open(&dir, DeviceOptions::default()).err().unwrap();
        assert!(
            err.to_string().contains(&*dir.to_string_lossy()),
            "{name}: {err}"
        );
        let missing = tmp("missing");
        let err = open(&missing, DeviceOptions::default()).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("missing"), "{name}: {err}");
    }
    let err = FileDevice::create(Path::new("/dev/null"), 4096, DeviceOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

#[test]
fn devices_open_by_name() {
    let path = tmp("by-name");
    let mut image = vec![0u8; 4 << 20];
    image[(3 << 20) + 5] = 0x5a;
    std::fs::write(&path, &image).unwrap();
    for kind in DeviceKind::ALL {
        let dev = open_device(kind, &path, &DeviceOptions::default()).unwrap();
        assert_eq!(dev.capacity_bytes(), 4 << 20, "{kind}");
        let mut back = vec![0u8; 512];
        dev.read_at(DevAddr(3 << 20), &mut back).unwrap();
        assert_eq!(back[5], 0x5a, "{kind}");
        // Each kind writes its own sector.
        let (at, byte) = match kind {
            DeviceKind::File => (0, 1u8),
            DeviceKind::Uring => (512, 2),
            DeviceKind::Mem => (1024, 3),
        };
        dev.write_at(DevAddr(at), &[byte; 512]).unwrap();
        dev.flush().unwrap();
        let mut again = vec![0u8; 512];
        dev.read_at(DevAddr(at), &mut again).unwrap();
        assert!(again.iter().all(|&b| b == byte), "{kind}");
    }
    // The file and io_uring devices wrote to the image; the memory device never writes back.
    let on_disk = std::fs::read(&path).unwrap();
    assert!(on_disk[..512].iter().all(|&b| b == 1));
    assert!(on_disk[512..1024].iter().all(|&b| b == 2));
    assert!(on_disk[1024..1536].iter().all(|&b| b == 0));
    std::fs::remove_file(path).ok();
}

/// Regression: the io_uring ring thread locked a request's buffers itself, blocking, so a
/// request submitted from a completion into a buffer held by a thread that was waiting for a
/// later request stalled the ring for good. (The engine hit it reading part of a folio while
/// another part was written back.) Blocked requests now wait aside while others go on.
#[test]
fn a_request_on_a_held_buffer_does_not_stall_the_others() {
    use iomap_dev::{BufRange, DeviceRequest, IoBuf};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    let path = tmp("held-buffer");
    std::fs::write(&path, vec![6u8; 1 << 20]).unwrap();
    let pool = DeviceOptions::default();
    let devices: [(&str, Arc<dyn BlockDevice>); 2] = [
        (
            "uring",
            Arc::new(UringDevice::open(&path, pool.clone()).unwrap()),
        ),
        (
            "file pool",
            Arc::new(FileDevice::open(&path, pool).unwrap()),
        ),
    ];
    for (name, dev) in devices {
        let held = IoBuf::zeroed(8192).shared();
        let guard = held.read_owned();
        let (d_tx, d_rx) = mpsc::channel();
        let (x_tx, x_rx) = mpsc::channel();
        let chained = Arc::clone(&dev);
        let held_in_cb = held.clone();
        let first = DeviceRequest::read(
            DevAddr(0),
            vec![BufRange::new(IoBuf::zeroed(4096).shared(), 0, 4096)],
        );
        dev.submit(
            first,
            Box::new(move |res| {
                res.unwrap();
                // D needs the held buffer; X, submitted after it, does not.
                let d =
                    DeviceRequest::read(DevAddr(4096), vec![BufRange::new(held_in_cb, 0, 4096)]);
                chained.submit(d, Box::new(move |res| d_tx.send(res).unwrap()));
                let x = DeviceRequest::read(
                    DevAddr(8192),
                    vec![BufRange::new(IoBuf::zeroed(4096).shared(), 0, 4096)],
                );
                chained.submit(x, Box::new(move |res| x_tx.send(res).unwrap()));
            }),
        );
        x_rx.recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{name}: a request stalled behind one on a held buffer"))
            .unwrap();
        drop(guard);
        d_rx.recv_timeout(Duration::from_secs(20)).unwrap().unwrap();
        assert!(held.read()[..4096].iter().all(|&b| b == 6), "{name}");
    }
    std::fs::remove_file(path).ok();
}

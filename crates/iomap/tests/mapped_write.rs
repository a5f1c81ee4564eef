//! `page_mkwrite`: space is reserved before a folio becomes writable through a mapping.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

mod common;

use common::{Ext, TestFs};
use iomap::iomap_dev::Op;
use iomap::page_mkwrite;

#[test]
fn mkwrite_reserves_space_first_so_enospc_is_reported_at_fault_time() {
    let fs = TestFs::new(1024, 4096);
    fs.mapping.set_size(4096); // a sparse file: all holes
    fs.state.lock().free_blocks = 0;
    let err = page_mkwrite(&fs.mapping, &fs, 100).map(|_| ()).unwrap_err();
    assert_eq!(err.errno(), 28, "ENOSPC at mkwrite, not lost at writeback");
    let folio = fs.mapping.find_folio(0).unwrap();
    assert!(!folio.is_dirty(), "nothing became writable");
    assert!(!folio.is_locked());

    fs.state.lock().free_blocks = 4;
    let mk = page_mkwrite(&fs.mapping, &fs, 100).unwrap();
    assert_eq!((mk.pos(), mk.len()), (0, 4096));
    mk.write(100, b"mapped store").unwrap();
    assert!(mk.folio().is_dirty());
    drop(mk);
    assert_eq!(
        fs.state.lock().free_blocks,
        0,
        "all four blocks were reserved"
    );
    assert_eq!(fs.ext(3), Some(Ext::Delalloc));
    assert_eq!(&fs.read(100, 12).unwrap(), b"mapped store");
    fs.log();
    fs.flush_all();
    // Four delalloc blocks, allocated together: one merged write.
    assert_eq!(TestFs::requests(&fs.log(), Op::Write).len(), 1);
}

#[test]
fn mkwrite_reads_the_folio_in_and_limits_stores_to_the_file() {
    let fs = TestFs::new(1024, 4096);
    let d = fs.map_blocks(0, 4, |_| 8);
    fs.mapping.set_size(2500);
    fs.log();
    let mk = page_mkwrite(&fs.mapping, &fs, 2000).unwrap();
    assert_eq!(
        TestFs::requests(&fs.log(), Op::Read),
        [(d * 1024, 3072)],
        "faulted in up to the EOF block"
    );
    assert_eq!(mk.len(), 2500);
    assert_eq!(
        mk.write(2490, &[1; 11]).unwrap_err().errno(),
        14,
        "a store past EOF faults"
    );
    mk.write(2490, &[1; 10]).unwrap();
    let snap = mk.folio().snapshot();
    assert_eq!(
        snap.dirty_blocks,
        [true, true, true, false],
        "the blocks inside the file are dirty"
    );
    drop(mk);
    assert_eq!(
        page_mkwrite(&fs.mapping, &fs, 2500)
            .map(|_| ())
            .unwrap_err()
            .errno(),
        14
    );
}

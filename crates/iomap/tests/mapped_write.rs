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
fn mkwrite_reads_the_folio_in_and_limits_stores_to_the_page_holding_eof() {
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
    assert_eq!(mk.len(), 4096, "a mapping maps the whole page holding EOF");
    assert_eq!(
        mk.write(4090, &[1; 11]).unwrap_err().errno(),
        14,
        "a store past the page faults"
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

#[test]
fn r13_a_mapped_store_past_eof_is_never_read_and_is_zeroed_when_the_file_grows() {
    // Each way of growing the file over the old EOF page: a write past EOF, a truncate up,
    // and a bare size change as a filesystem's fallocate makes.
    type Grow = fn(&TestFs);
    let grows: [(&str, Grow); 3] = [
        ("write", |fs| {
            fs.write(3500, b"x").unwrap();
        }),
        ("truncate", |fs| fs.truncate(3600).unwrap()),
        ("set_size", |fs| fs.mapping.set_size(3600)),
    ];
    for (how, grow) in grows {
        let fs = TestFs::new(1024, 4096);
        fs.write(0, &[7u8; 2500]).unwrap();
        let mk = page_mkwrite(&fs.mapping, &fs, 2000).unwrap();
        mk.write(2500, &[0xEE; 1596]).unwrap();
        drop(mk);
        assert_eq!(
            fs.read(0, 4096).unwrap(),
            [7u8; 2500],
            "{how}: read stops at EOF"
        );
        grow(&fs);
        let got = fs.read(2500, 1000).unwrap();
        assert_eq!(
            got.iter().position(|&b| b != 0),
            None,
            "{how}: the store past the old EOF shows after growing"
        );
    }
}

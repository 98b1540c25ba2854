//! Opening a log whose segment files hold arbitrary bytes.
//!
//! The input is one or two segment files (the first byte says where to split it). Checks
//! that nothing panics; that the store opens exactly when `check` finds no damage (a torn
//! last frame is not damage: it is cut off); that what it opens holds what `check`
//! counted; that an opened log takes a commit and opens again with it; and that it opens
//! from the index files of its sealed segments to the same contents.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use trunkline_store::fs::Vfs;
use trunkline_store::log_store::{check, LogOptions};
use trunkline_store::simfs::SimFs;
use trunkline_store::{Contents, LogStore, Op, QueueStore, RecordTable};

fn options() -> LogOptions {
    LogOptions {
        segment_bytes: 4096,
        background_compaction: false,
        ..LogOptions::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let split = (split as usize * rest.len() / 255).min(rest.len());
    let files: Vec<&[u8]> = if split == 0 {
        vec![rest]
    } else {
        vec![&rest[..split], &rest[split..]]
    };
    let root = Path::new("/f");
    let dir = root.join("log");
    let fs = SimFs::new(root);
    fs.create_dir(&dir).expect("mkdir");
    for (i, bytes) in files.iter().enumerate() {
        let f = fs
            .create_new(&dir.join(format!("{:020}.seg", i + 1)))
            .expect("create");
        f.write_all_at(bytes, 0).expect("write");
    }
    let report = check(&fs, &dir).expect("check reads any bytes");
    let opened = LogStore::open_on(Arc::new(fs.clone()), &dir, options());
    let store = match (report.damage(), opened) {
        (Some(_), Err(_)) => return,
        (Some(d), Ok(_)) => panic!("opened over damage: {d:?}"),
        (None, Err(e)) => panic!("refused a log check found whole: {e}"),
        (None, Ok(store)) => store,
    };
    let snap = store.load().expect("load");
    assert_eq!(snap.messages.len(), report.messages);
    assert_eq!(snap.entries.len(), report.entries);
    let records: usize = snap.records.values().map(Vec::len).sum();
    assert_eq!(records, report.records);
    let mark = Op::PutRecord {
        table: RecordTable::Meta,
        key: "fuzz-mark".into(),
        value: vec![1],
    };
    store.commit(&[mark]).expect("a commit after opening");
    drop(store);
    let again = LogStore::open_on(Arc::new(fs.clone()), &dir, options()).expect("reopen");
    let meta = again.load().expect("load");
    assert!(meta
        .records(RecordTable::Meta)
        .iter()
        .any(|(k, _)| k == "fuzz-mark"));
    // Index files of the sealed segments: the log opens from them to the same contents
    // (a message whose frame does not check out reads back as an error either way).
    let before = Contents::of(&again).ok();
    again.write_indexes().expect("index the sealed segments");
    drop(again);
    let indexed = LogStore::open_on(Arc::new(fs), &dir, options()).expect("reopen indexed");
    assert_eq!(Contents::of(&indexed).ok(), before);
});

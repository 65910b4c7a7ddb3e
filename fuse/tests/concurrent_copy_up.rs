//! Copy-ups that race. A file's data is copied up without the mount's change lock (one copy-up
//! per node at a time), so other calls run while it is copied: writers of the same file, a
//! rename or an unlink of its name, a reader opening it. Whichever order a race takes, the
//! tests check the outcome is one that order allows: one upper copy with every write in it, no
//! staged copy left in the work dir, the lower layer unchanged.

// The shared harness calls libc directly.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

#[allow(dead_code)]
mod common;

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use common::layers::{Format, Layer};
use common::mounts::{Impl, Mounted, NestfsOverlay, Side};

/// Big enough that a copy-up takes a while (tens of milliseconds from the page cache).
const BIG: usize = 128 << 20;

fn pattern(n: usize) -> Vec<u8> {
    let cycle: Vec<u8> = (0..251).map(|i| (i * 7 % 251) as u8).collect();
    let mut v = cycle.repeat(n / cycle.len() + 1);
    v.truncate(n);
    v
}

/// A side whose only layer holds `big` and `small`.
fn side(scratch: &common::Scratch) -> Side {
    let layers = [Layer::new().file("small", "small\n")];
    let s = Side::build(&scratch.sub("side"), Impl::Nestfs, &layers, Format::Overlay);
    fs::write(s.lowers[0].join("big"), pattern(BIG)).unwrap();
    s
}

fn mount(s: &Side, extra: &str) -> NestfsOverlay {
    NestfsOverlay::mount(
        &s.lowers,
        Some((s.upper.as_path(), s.work.as_path())),
        &s.mnt,
        extra,
    )
}

/// Names of the regular files in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// What every race must leave: no staged copy in the work dir (only the record of the upper
/// filesystem's probe), the lower file as it was.
fn assert_clean(s: &Side) {
    assert_eq!(files(&s.work), ["nestfs-probe"], "copies left in work");
    assert!(
        fs::read(s.lowers[0].join("big")).unwrap() == pattern(BIG),
        "the lower file changed"
    );
}

/// Opens `p` for writing and writes `data` at `off`: a copy-up, on another thread.
fn write_at(p: &Path, off: u64, data: &'static [u8]) -> JoinHandle<io::Result<()>> {
    let p = p.to_path_buf();
    thread::spawn(move || {
        OpenOptions::new()
            .write(true)
            .open(p)?
            .write_all_at(data, off)
    })
}

/// Waits until a staged copy in the work dir holds data (a copy-up is under way); false if
/// `writer` finished first.
fn copy_under_way(s: &Side, writer: &JoinHandle<io::Result<()>>) -> bool {
    while !writer.is_finished() {
        let staged = fs::read_dir(&s.work)
            .unwrap()
            .flatten()
            .any(|e| e.metadata().is_ok_and(|m| m.is_file() && m.len() > 0));
        if staged {
            return true;
        }
        thread::sleep(Duration::from_millis(1));
    }
    false
}

#[test]
fn writers_of_one_lower_file_copy_it_up_once() {
    require_env!();
    let scratch = common::Scratch::new();
    let s = side(&scratch);
    let m = mount(&s, "");
    let big = m.root().join("big");
    let ino = fs::metadata(&big).unwrap().ino();
    let start = Arc::new(Barrier::new(4));
    let writers: Vec<_> = (0..4u8)
        .map(|i| {
            let (big, start) = (big.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                let f = OpenOptions::new().write(true).open(&big).unwrap();
                f.write_all_at(&[b'A' + i; 4096], i as u64 * (BIG as u64 / 4))
                    .unwrap();
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let mut want = pattern(BIG);
    for i in 0..4u8 {
        let at = i as usize * BIG / 4;
        want[at..at + 4096].fill(b'A' + i);
    }
    assert!(fs::read(&big).unwrap() == want, "a write is missing");
    assert_eq!(files(&s.upper), ["big"]);
    assert!(fs::read(s.upper.join("big")).unwrap() == want);
    assert_eq!(
        fs::metadata(&big).unwrap().ino(),
        ino,
        "the copy changed the inode"
    );
    assert_clean(&s);
}

#[test]
fn an_unlink_while_the_file_is_copied_up_wins_or_waits() {
    require_env!();
    let scratch = common::Scratch::new();
    let s = side(&scratch);
    let m = mount(&s, "");
    let big = m.root().join("big");
    let writer = write_at(&big, 0, b"W");
    if !copy_under_way(&s, &writer) {
        eprintln!("the copy-up ended before the unlink");
    }
    fs::remove_file(&big).unwrap();
    // Placed before the unlink, the write went to the file the unlink then removed; otherwise
    // the name was gone when the copy was ready, and the open found it gone.
    match writer.join().unwrap() {
        Ok(()) => eprintln!("the copy-up came first"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}"),
    }
    let gone = fs::metadata(&big).unwrap_err();
    assert_eq!(gone.kind(), io::ErrorKind::NotFound);
    assert_eq!(files(&s.upper), Vec::<String>::new(), "a copy came back");
    let whiteout = fs::symlink_metadata(s.upper.join("big")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    assert_eq!(fs::read(m.root().join("small")).unwrap(), b"small\n");
    assert_clean(&s);
}

#[test]
fn a_rename_while_the_file_is_copied_up_moves_the_copy() {
    require_env!();
    let scratch = common::Scratch::new();
    let s = side(&scratch);
    let m = mount(&s, "");
    let (big, moved) = (m.root().join("big"), m.root().join("moved"));
    let ino = fs::metadata(&big).unwrap().ino();
    let writer = write_at(&big, 0, b"W");
    if !copy_under_way(&s, &writer) {
        eprintln!("the copy-up ended before the rename");
    }
    fs::rename(&big, &moved).unwrap();
    // Either order, the writer's file is the one renamed.
    writer.join().unwrap().unwrap();
    let mut want = pattern(BIG);
    want[0] = b'W';
    assert_eq!(
        fs::metadata(&big).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert!(fs::read(&moved).unwrap() == want, "the write is missing");
    assert_eq!(fs::metadata(&moved).unwrap().ino(), ino);
    assert_eq!(files(&s.upper), ["moved"]);
    assert_clean(&s);
}

/// A file opened for reading while it is copied up is tracked before the copy is placed, so it
/// reads the copy afterwards, as overlayfs's files do (without passthrough, which keeps the
/// lower file for them: tests/passthrough.rs).
#[test]
fn a_file_opened_for_reading_during_its_copy_up_reads_the_copy() {
    require_env!();
    let scratch = common::Scratch::new();
    let s = side(&scratch);
    let m = mount(&s, "nopassthrough");
    let big = m.root().join("big");
    let writer = write_at(&big, 0, b"W");
    if !copy_under_way(&s, &writer) {
        eprintln!("the copy-up ended before the read-only open");
    }
    let reader = fs::File::open(&big).unwrap();
    writer.join().unwrap().unwrap();
    let mut first = [0u8; 2];
    reader.read_exact_at(&mut first, 0).unwrap();
    assert_eq!(&first, b"W\x07");
    assert_clean(&s);
}

//! FUSE passthrough: the kernel reads layer files itself (the daemon reads nothing), a file
//! open for reading can still be written and truncated (its name moves to a node of its own),
//! and the choice of stacking depth keeps both "layers on overlayfs" and "nestfs under kernel
//! overlayfs" working.

// Tests call libc directly, for setup and for the raw results they check.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

#[allow(dead_code)]
mod common;

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::layers::{Format, Layer};
use common::mounts::{Impl, Mounted, NestfsOverlay, Side, is_mounted};

const BIG: usize = 8 << 20;

/// A counter of /proc/PID/io: `rchar` (bytes read with read(2) and friends) or `wchar`.
fn io_counter(pid: u32, key: &str) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("read /proc/PID/io");
    io.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/PID/io"))
}

fn rchar(pid: u32) -> u64 {
    io_counter(pid, "rchar")
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

/// A side whose only layer holds `big` (8 MiB) and `small`.
fn side(scratch: &common::Scratch) -> Side {
    let layers = [Layer::new().file("small", "lower\n")];
    let s = Side::build(&scratch.sub("side"), Impl::Nestfs, &layers, Format::Oci);
    std::fs::write(s.lowers[0].join("big"), pattern(BIG)).unwrap();
    s
}

fn mount(s: &Side, lowers: &[std::path::PathBuf], extra: &str) -> NestfsOverlay {
    NestfsOverlay::mount(
        lowers,
        Some((s.upper.as_path(), s.work.as_path())),
        &s.mnt,
        extra,
    )
}

/// How many bytes the daemon read while `big` was read whole through the mount.
fn daemon_reads_for_big(m: &NestfsOverlay) -> u64 {
    let before = rchar(m.pid());
    let data = std::fs::read(m.root().join("big")).unwrap();
    assert!(data == pattern(BIG), "big read through the mount differs");
    rchar(m.pid()) - before
}

#[test]
fn reads_bypass_the_daemon() {
    require_env!();
    let scratch = common::Scratch::new();
    let s = side(&scratch);
    let m = mount(&s, &s.lowers, "");
    let through = daemon_reads_for_big(&m);
    assert!(
        through < (BIG / 8) as u64,
        "the daemon read {through} bytes for an 8 MiB file: no passthrough"
    );
    drop(m);
    // The measure itself: without passthrough every byte goes through the daemon.
    let m = mount(&s, &s.lowers, "nopassthrough");
    let copied = daemon_reads_for_big(&m);
    assert!(
        copied >= BIG as u64,
        "without passthrough the daemon read only {copied} bytes"
    );
}

#[test]
fn writes_bypass_the_daemon_when_nothing_is_counted() {
    require_env!();
    let scratch = common::Scratch::new();
    let s = side(&scratch);
    let m = mount(&s, &s.lowers, "");
    let root = m.root();
    let before = io_counter(m.pid(), "wchar");
    std::fs::write(root.join("new"), pattern(BIG)).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("new"))
        .unwrap();
    std::io::Write::write_all(&mut f, &pattern(BIG)).unwrap();
    drop(f);
    let written = io_counter(m.pid(), "wchar") - before;
    assert!(
        written < (BIG / 8) as u64,
        "the daemon wrote {written} bytes for 16 MiB of writes: no passthrough"
    );
    let mut want = pattern(BIG);
    want.extend(pattern(BIG));
    assert!(std::fs::read(s.upper.join("new")).unwrap() == want);
    assert_eq!(
        std::fs::metadata(root.join("new")).unwrap().len(),
        2 * BIG as u64
    );
}

#[test]
fn a_file_open_for_reading_can_be_written_and_truncated() {
    require_env!();
    let scratch = common::Scratch::new();
    let s = side(&scratch);
    let m = mount(&s, &s.lowers, "");
    let root = m.root();
    let ino_before = std::fs::metadata(root.join("small")).unwrap().ino();
    let mut old = std::fs::File::open(root.join("small")).unwrap();
    std::fs::write(root.join("small"), "upper\n").expect("write a file open for reading");
    assert_eq!(
        std::fs::read_to_string(root.join("small")).unwrap(),
        "upper\n"
    );
    assert_eq!(
        std::fs::read_to_string(s.upper.join("small")).unwrap(),
        "upper\n"
    );
    let ino_after = std::fs::metadata(root.join("small")).unwrap().ino();
    assert_ne!(
        ino_before, ino_after,
        "the written name has a node of its own"
    );
    // The fd opened before keeps reading the lower copy (overlayfs before 4.19 did the same;
    // `-o nopassthrough` gives today's overlayfs behaviour, see the differential suite).
    let mut seen = String::new();
    old.read_to_string(&mut seen).unwrap();
    assert_eq!(seen, "lower\n");

    let mut big = std::fs::File::open(root.join("big")).unwrap();
    let st = Command::new("truncate")
        .args(["-s", "4096"])
        .arg(root.join("big"))
        .status()
        .unwrap();
    assert!(st.success(), "truncate of a file open for reading failed");
    assert_eq!(std::fs::metadata(root.join("big")).unwrap().len(), 4096);
    assert_eq!(std::fs::metadata(s.upper.join("big")).unwrap().len(), 4096);
    big.seek(SeekFrom::Start(BIG as u64 - 4)).unwrap();
    let mut tail = Vec::new();
    big.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, pattern(BIG)[BIG - 4..], "old fd reads the lower copy");

    // Both names keep working once the old fds are closed, and the lower layer is untouched.
    drop((old, big));
    std::fs::write(root.join("small"), "again\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("small")).unwrap(),
        "again\n"
    );
    assert_eq!(
        std::fs::read_to_string(s.lowers[0].join("small")).unwrap(),
        "lower\n"
    );
    assert_eq!(
        std::fs::metadata(s.lowers[0].join("big")).unwrap().len(),
        BIG as u64
    );
}

/// Mounts kernel overlayfs (read-only, two lowers) at `mnt`; detached on drop.
struct KernelMount(std::path::PathBuf);

impl KernelMount {
    fn new(lowers: &[&Path], mnt: &Path) -> KernelMount {
        let l: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("lowerdir={}", l.join(":")))
            .arg(mnt)
            .status()
            .unwrap();
        assert!(st.success(), "kernel overlayfs mount at {}", mnt.display());
        KernelMount(mnt.to_path_buf())
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        let c = common::layers::cpath(&self.0);
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn layers_on_a_stacked_filesystem_still_pass_through() {
    require_env!();
    let scratch = common::Scratch::new();
    let s = side(&scratch);
    // The layer as a nested container sees it: through kernel overlayfs.
    let empty = scratch.sub("empty");
    let stacked = scratch.sub("stacked");
    let k = KernelMount::new(&[&s.lowers[0], &empty], &stacked);
    let m = mount(&s, std::slice::from_ref(&stacked), "");
    let through = daemon_reads_for_big(&m);
    assert!(
        through < (BIG / 8) as u64,
        "layer on overlayfs: the daemon read {through} bytes"
    );
    drop(m);
    drop(k);
    assert!(!is_mounted(&stacked));
}

#[test]
fn the_mount_can_be_a_kernel_lower_layer() {
    require_env!();
    let scratch = common::Scratch::new();
    let s = side(&scratch);
    let m = mount(&s, &s.lowers, "");
    let empty = scratch.sub("empty");
    let top = scratch.sub("top");
    let k = KernelMount::new(&[m.root(), &empty], &top);
    assert_eq!(
        std::fs::read_to_string(top.join("small")).unwrap(),
        "lower\n"
    );
    assert!(std::fs::read(top.join("big")).unwrap() == pattern(BIG));
    drop(k);
}

//! Disk limits counted by the image daemon, through the real binary and a real mount: EDQUOT
//! at the right byte count for writes, fallocate, small files and copy-up; freed space can be
//! used again; hardlinks and sparse files count their blocks once; `stats` equals `du` of the
//! upper dir, live and after a daemon restart; concurrent writers cannot overshoot.

#[allow(dead_code)]
mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use common::{TestStore, du, tarball};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;

fn stats(s: &TestStore, id: &str) -> (u64, u64, u64) {
    let v = s.run(&["stats", id]).ok().json();
    let d = &v["disk_usage"];
    (
        d["exclusive_bytes_used"].as_u64().unwrap(),
        d["total_bytes_used"].as_u64().unwrap(),
        d["quota_size_bytes"].as_u64().unwrap(),
    )
}

fn committed(s: &TestStore, id: &str) -> u64 {
    s.run(&["stats", id]).ok().json()["disk_usage"]["committed_space_bytes"]
        .as_u64()
        .unwrap()
}

fn upper(s: &TestStore, id: &str) -> PathBuf {
    s.root().join("images").join(id).join("upper")
}

/// Appends `chunk`-sized writes to `path` until one fails; returns the bytes written and the
/// error. Short writes are counted, as a filesystem at its quota makes them.
fn fill(path: &Path, chunk: usize) -> (u64, std::io::Error) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let buf = vec![0xa5u8; chunk];
    let mut total = 0u64;
    loop {
        match f.write(&buf) {
            Ok(0) => panic!("write returned 0"),
            Ok(n) => total += n as u64,
            Err(e) => return (total, e),
        }
    }
}

fn assert_edquot(e: &std::io::Error) {
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
}

/// Creates `id` from `image` with `args` (limit flags) and returns its rootfs.
fn create(s: &TestStore, image: &str, id: &str, args: &[&str]) -> PathBuf {
    let mut all = vec!["create"];
    all.extend_from_slice(args);
    all.extend([image, id]);
    let r = s.run(&all).ok();
    PathBuf::from(r.json()["root"]["path"].as_str().unwrap())
}

/// Creates `id` with an exclusive limit of `limit` bytes (the image's layers do not count).
fn create_excl(s: &TestStore, image: &Path, id: &str, limit: u64) -> PathBuf {
    let limit = limit.to_string();
    let args = [
        "--disk-limit-size-bytes",
        &limit,
        "--exclude-image-from-quota",
    ];
    create(s, image.to_str().unwrap(), id, &args)
}

#[test]
fn inclusive_limit_counts_the_layers_and_stops_writes_with_edquot() {
    require_root_fuse!();
    let s = TestStore::new();
    let image = tarball(s.dir.path(), &[("one-mib", MIB as usize)]);
    let image = image.to_str().unwrap();
    // The layers' size, from an image without a limit.
    create(&s, image, "probe", &[]);
    let (excl, total, quota) = stats(&s, "probe");
    let layers = total - excl;
    assert!(layers >= MIB, "{layers}");
    assert_eq!(quota, 0, "no limit, no quota");
    assert_eq!(committed(&s, "probe"), layers, "committed: the image alone");
    let limit = layers + 4 * MIB;
    let rootfs = create(
        &s,
        image,
        "lim",
        &["--disk-limit-size-bytes", &limit.to_string()],
    );
    let (used0, _, quota) = stats(&s, "lim");
    assert_eq!(
        quota,
        4 * MIB,
        "the quota is the limit less the image, as GrootFS reports it"
    );
    assert_eq!(committed(&s, "lim"), limit, "committed: image plus quota");
    let (written, e) = fill(&rootfs.join("fill"), MIB as usize);
    assert_edquot(&e);
    let room = 4 * MIB - used0;
    assert!(
        written <= room && written + 2 * BLOCK >= room,
        "EDQUOT after {written} bytes; room was {room}"
    );
    let (excl, total, _) = stats(&s, "lim");
    assert!(total <= limit, "{total} > {limit}");
    assert_eq!(excl, du(&upper(&s, "lim")));
    // Nothing written was lost or corrupted.
    let data = std::fs::read(rootfs.join("fill")).unwrap();
    assert_eq!(data.len() as u64, written);
    assert!(data.iter().all(|b| *b == 0xa5));
    // Small writes fail too, and freeing space lets the container write again.
    let e = std::fs::write(rootfs.join("more"), vec![1u8; 2 * BLOCK as usize]).unwrap_err();
    assert_edquot(&e);
    std::fs::remove_file(rootfs.join("fill")).unwrap();
    // At the limit the new name itself may be refused (its directory could grow).
    let _ = std::fs::remove_file(rootfs.join("more"));
    std::fs::write(rootfs.join("again"), vec![2u8; 2 * MIB as usize]).unwrap();
    assert_eq!(stats(&s, "lim").0, du(&upper(&s, "lim")));
    let list = s.run(&["list", "--json"]).ok().json();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "lim")
        .unwrap()
        .clone();
    assert_eq!(row["quota_size_bytes"], limit);
    assert_eq!(row["exclusive_bytes_used"], stats(&s, "lim").0);
}

#[test]
fn exclusive_limit_counts_only_the_container_writes() {
    require_root_fuse!();
    let s = TestStore::new();
    let image = tarball(s.dir.path(), &[("three-mib", 3 * MIB as usize)]);
    // Smaller than the image: fine when the image is excluded.
    let rootfs = create_excl(&s, &image, "ex", 2 * MIB);
    let (used0, total, quota) = stats(&s, "ex");
    assert_eq!(quota, 2 * MIB, "an exclusive limit is the quota itself");
    assert_eq!(committed(&s, "ex"), total - used0 + 2 * MIB);
    let (written, e) = fill(&rootfs.join("fill"), 300_000);
    assert_edquot(&e);
    assert!(
        written <= 2 * MIB - used0 && written + 2 * BLOCK >= 2 * MIB - used0,
        "{written}"
    );
    assert!(stats(&s, "ex").0 <= 2 * MIB);
}

#[test]
fn fallocate_truncate_and_sparse_files() {
    require_root_fuse!();
    let s = TestStore::new();
    let image = tarball(s.dir.path(), &[]);
    let limit = 2 * MIB;
    let rootfs = create_excl(&s, &image, "fa", limit);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(rootfs.join("f"))
        .unwrap();
    let fallocate = |off: u64, len: u64| {
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), off, len)
            .map_err(std::io::Error::from)
    };
    assert_edquot(&fallocate(0, 4 * MIB).unwrap_err());
    assert!(
        stats(&s, "fa").0 < 64 * 1024,
        "a refused fallocate takes nothing"
    );
    fallocate(0, MIB).unwrap();
    assert_eq!(f.metadata().unwrap().len(), MIB);
    assert_edquot(&fallocate(MIB, 2 * MIB).unwrap_err());
    // Growing by truncate makes a hole: allowed far past the limit, costs nothing.
    let before = stats(&s, "fa").0;
    f.set_len(1 << 30).unwrap();
    assert_eq!(stats(&s, "fa").0, before);
    // A block written in the middle of the hole costs a block.
    let n = std::os::unix::fs::FileExt::write_at(&f, &[7u8; 4096], 1 << 29).unwrap();
    assert_eq!(n, 4096);
    let after = stats(&s, "fa").0;
    assert!(
        after > before && after <= before + 2 * BLOCK,
        "{before} -> {after}"
    );
    // Truncating down frees.
    f.set_len(0).unwrap();
    assert!(stats(&s, "fa").0 < before);
    drop(f);
    assert_eq!(stats(&s, "fa").0, du(&upper(&s, "fa")));
}

#[test]
fn many_small_files_hit_the_limit() {
    require_root_fuse!();
    let s = TestStore::new();
    let image = tarball(s.dir.path(), &[]);
    let limit = MIB;
    let rootfs = create_excl(&s, &image, "small", limit);
    std::fs::create_dir(rootfs.join("d")).unwrap();
    let mut made = 0;
    let err = loop {
        match std::fs::write(rootfs.join(format!("d/{made}")), [b'x'; 100]) {
            Ok(()) => made += 1,
            Err(e) => break e,
        }
        assert!(made < 1000, "the limit never applied");
    };
    assert_edquot(&err);
    // Each file takes a block, the directory some more.
    assert!((200..=256).contains(&made), "{made} files fit in 1 MiB");
    let (excl, _, _) = stats(&s, "small");
    assert!(excl <= limit + BLOCK, "{excl}");
    assert_eq!(excl, du(&upper(&s, "small")));
    // Deleting some makes room for as many again.
    for i in 0..10 {
        std::fs::remove_file(rootfs.join(format!("d/{i}"))).unwrap();
    }
    for i in 0..10 {
        std::fs::write(rootfs.join(format!("d/new{i}")), [b'y'; 100]).unwrap();
    }
}

/// At the limit, new entries are refused before they can grow their directory past it (an
/// empty file costs no block, but its directory may need one): usage never ends over the limit.
#[test]
fn entries_at_the_limit_do_not_grow_their_directory_past_it() {
    require_root_fuse!();
    let s = TestStore::new();
    let image = tarball(s.dir.path(), &[]);
    let limit = MIB;
    let rootfs = create_excl(&s, &image, "full", limit);
    std::fs::create_dir(rootfs.join("d")).unwrap();
    let (_, e) = fill(&rootfs.join("fill"), 4096);
    assert_edquot(&e);
    let mut made = 0;
    let err = loop {
        match std::fs::File::create(rootfs.join(format!("d/empty-file-with-a-long-name-{made}"))) {
            Ok(_) => made += 1,
            Err(e) => break e,
        }
        assert!(made < 10_000, "the limit never applied to new entries");
    };
    assert_edquot(&err);
    let e = std::fs::create_dir(rootfs.join("d/sub")).unwrap_err();
    assert_edquot(&e);
    let (excl, _, _) = stats(&s, "full");
    assert_eq!(excl, du(&upper(&s, "full")));
    assert!(
        excl <= limit,
        "{made} entries took usage to {excl} > {limit}"
    );
}

/// A store with image `id` (limit 100 MiB) whose rootfs holds `scatter`: 3,000 writes of 100
/// bytes 192 KiB apart, which leave the filesystem extent-tree blocks to allocate at writeback.
/// Returns the store, the rootfs and the still open file.
fn scattered(id: &str) -> (TestStore, PathBuf, std::fs::File) {
    let s = TestStore::new();
    let image = tarball(s.dir.path(), &[]);
    let rootfs = create_excl(&s, &image, id, 100 * MIB);
    let f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(rootfs.join("scatter"))
        .unwrap();
    for i in 0..3000u64 {
        std::os::unix::fs::FileExt::write_at(&f, &[b'x'; 100], i * 3 * 65536).unwrap();
    }
    (s, rootfs, f)
}

/// Once fsync has written scattered writes back, `stats` counts the blocks writeback took too
/// (it was 40 KiB below `du` here).
#[test]
fn scattered_writes_are_counted_exactly_once_fsynced() {
    require_root_fuse!();
    let (s, _rootfs, f) = scattered("sc");
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(stats(&s, "sc").0, du(&upper(&s, "sc")));
}

/// Without any fsync, the blocks ext4 allocates for itself at writeback reach `stats` by
/// reconciling with the upper dir, so after sync(2) `stats` equals `du`; and once the file is
/// gone, so is exactly what it took (the counter once stayed 12 KiB below).
#[test]
fn scattered_writes_are_counted_exactly_without_fsync_and_freed_exactly() {
    require_root_fuse!();
    let (s, rootfs, f) = scattered("nf");
    drop(f);
    rustix::fs::sync();
    assert_eq!(stats(&s, "nf").0, du(&upper(&s, "nf")), "after sync");
    std::fs::remove_file(rootfs.join("scatter")).unwrap();
    rustix::fs::sync();
    assert_eq!(stats(&s, "nf").0, du(&upper(&s, "nf")), "after rm");
}

/// What writeback allocates after a `stats` already reconciled reaches the counter through the
/// daemon's background pass (every 5 s while the upper dir settles), with no change to trigger
/// it.
#[test]
fn writeback_after_a_stats_is_reconciled_in_the_background() {
    require_root_fuse!();
    let (s, _rootfs, f) = scattered("bg");
    drop(f);
    let _ = stats(&s, "bg");
    rustix::fs::sync();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (mut counted, mut real) = (0, 1);
    while std::time::Instant::now() < deadline {
        (counted, real) = (stats(&s, "bg").0, du(&upper(&s, "bg")));
        if counted == real {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        counted, real,
        "the background pass never caught up with writeback"
    );
}

#[test]
fn copy_up_of_a_large_lower_file_costs_the_whole_file() {
    require_root_fuse!();
    let s = TestStore::new();
    let image = tarball(s.dir.path(), &[("big", 8 * MIB as usize)]);
    let small = create_excl(&s, &image, "small", 4 * MIB);
    let original = std::fs::read(small.join("big")).unwrap();
    // A 1-byte write needs the whole file copied up: refused, and the file is untouched.
    let e = OpenOptions::new()
        .append(true)
        .open(small.join("big"))
        .unwrap_err();
    assert_edquot(&e);
    assert_eq!(std::fs::read(small.join("big")).unwrap(), original);
    assert!(!upper(&s, "small").join("big").exists());
    assert!(stats(&s, "small").0 < 64 * 1024);

    let roomy = create_excl(&s, &image, "roomy", 16 * MIB);
    let mut f = OpenOptions::new()
        .append(true)
        .open(roomy.join("big"))
        .unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    let (excl, _, _) = stats(&s, "roomy");
    assert!(excl >= 8 * MIB, "{excl}");
    assert_eq!(excl, du(&upper(&s, "roomy")));
}

/// Writers racing to copy up one lower file reserve its size once (one copy-up of a node at a
/// time, the others wait for it), and the count ends equal to `du`.
#[test]
fn writers_racing_to_copy_up_one_file_reserve_it_once() {
    require_root_fuse!();
    let s = TestStore::new();
    let image = tarball(s.dir.path(), &[("big", 8 * MIB as usize)]);
    // Room for one copy, not two.
    let rootfs = create_excl(&s, &image, "once", 12 * MIB);
    let start = std::sync::Arc::new(std::sync::Barrier::new(4));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (big, start) = (rootfs.join("big"), start.clone());
            std::thread::spawn(move || {
                start.wait();
                OpenOptions::new().append(true).open(big)?.write_all(b"!")
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap().unwrap();
    }
    let len = std::fs::metadata(rootfs.join("big")).unwrap().len();
    assert_eq!(len, 8 * MIB + 4);
    let (excl, _, _) = stats(&s, "once");
    assert!(excl >= 8 * MIB, "{excl}");
    assert_eq!(excl, du(&upper(&s, "once")));
}

#[test]
fn hardlinks_count_once_and_stats_match_du_across_a_daemon_restart() {
    require_root_fuse!();
    let s = TestStore::new();
    let image = tarball(s.dir.path(), &[("lower", 100_000)]);
    let limit = 8 * MIB;
    let rootfs = create_excl(&s, &image, "hl", limit);
    std::fs::write(rootfs.join("a"), vec![1u8; MIB as usize]).unwrap();
    let one = stats(&s, "hl").0;
    for n in ["b", "c", "d"] {
        std::fs::hard_link(rootfs.join("a"), rootfs.join(n)).unwrap();
    }
    assert!(stats(&s, "hl").0 < one + BLOCK, "links are nearly free");
    std::fs::remove_file(rootfs.join("a")).unwrap();
    std::fs::remove_file(rootfs.join("b")).unwrap();
    assert!(stats(&s, "hl").0 >= one - BLOCK, "still linked twice");
    // A mix of everything else that takes space.
    std::fs::create_dir_all(rootfs.join("x/y/z")).unwrap();
    std::os::unix::fs::symlink("a".repeat(200), rootfs.join("x/long-link")).unwrap();
    std::fs::rename(rootfs.join("c"), rootfs.join("x/y/c")).unwrap();
    std::fs::write(rootfs.join("lower"), "replaced").unwrap();
    xattr_set(&rootfs.join("x/y/c"), "user.big", &[9u8; 3000]);
    assert_eq!(stats(&s, "hl").0, du(&upper(&s, "hl")));
    let live = stats(&s, "hl").0;

    // The daemon dies; stats scans; remount counts on from the same figure.
    common::kill_image_daemons(s.dir.path());
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(stats(&s, "hl").0, live);
    s.run(&["remount", "hl"]).ok();
    assert_eq!(stats(&s, "hl").0, live);
    let (written, e) = fill(&rootfs.join("fill"), MIB as usize);
    assert_edquot(&e);
    assert!(live + written <= limit && live + written + 2 * BLOCK >= limit);
}

fn xattr_set(p: &Path, key: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, key, value, rustix::fs::XattrFlags::empty()).unwrap();
}

#[test]
fn concurrent_writers_cannot_overshoot_the_limit() {
    require_root_fuse!();
    let s = TestStore::new();
    let image = tarball(s.dir.path(), &[]);
    let limit = 16 * MIB;
    let rootfs = create_excl(&s, &image, "race", limit);
    let chunk = 256 * 1024;
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let p = rootfs.join(format!("w{i}"));
            std::thread::spawn(move || fill(&p, chunk))
        })
        .collect();
    let mut written = 0;
    for w in writers {
        let (n, e) = w.join().unwrap();
        assert_edquot(&e);
        written += n;
    }
    let (excl, _, _) = stats(&s, "race");
    assert_eq!(excl, du(&upper(&s, "race")));
    assert!(excl <= limit + 4 * BLOCK, "overshoot: {excl} > {limit}");
    assert!(written + 4 * chunk as u64 >= limit - 64 * 1024, "{written}");
}

#[test]
fn an_unlinked_open_file_stays_charged_until_its_last_close() {
    require_root_fuse!();
    let s = TestStore::new();
    let image = tarball(s.dir.path(), &[]);
    let limit = 4 * MIB;
    let rootfs = create_excl(&s, &image, "open", limit);
    let base = stats(&s, "open").0;
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(rootfs.join("tmpfile"))
        .unwrap();
    f.write_all(&vec![3u8; 2 * MIB as usize]).unwrap();
    std::fs::remove_file(rootfs.join("tmpfile")).unwrap();
    // Its blocks are still in use: a second file cannot take them.
    assert!(stats(&s, "open").0 >= base + 2 * MIB);
    let (written, e) = fill(&rootfs.join("other"), MIB as usize);
    assert_edquot(&e);
    assert!(written <= 2 * MIB, "{written}");
    f.write_all(&vec![4u8; 4096]).unwrap_err();
    drop(f);
    std::fs::remove_file(rootfs.join("other")).unwrap();
    // The kernel sends the release after close(2) returns: give it a moment.
    let start = std::time::Instant::now();
    while stats(&s, "open").0 != du(&upper(&s, "open"))
        && start.elapsed() < std::time::Duration::from_secs(2)
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(stats(&s, "open").0, du(&upper(&s, "open")));
    std::fs::write(rootfs.join("after"), vec![5u8; 3 * MIB as usize]).unwrap();
}

/// Bytes the store's one image daemon wrote with write(2) and friends (`wchar` of
/// /proc/PID/io).
fn daemon_wrote(s: &TestStore) -> u64 {
    let [pid] = common::daemons_for(s.dir.path())[..] else {
        panic!("not one daemon for the store");
    };
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .unwrap()
        .parse()
        .unwrap()
}

/// Without a limit nothing must refuse a write, so the kernel writes upper files itself
/// (passthrough) and the daemon never sees the data; `stats` still equals `du`, also while a
/// file is open and growing and after the image is changed in every other way. With a limit
/// the daemon sees every write (the EDQUOT tests above).
#[test]
fn without_a_limit_the_kernel_writes_and_stats_still_match_du() {
    require_root_fuse!();
    let s = TestStore::new();
    let image = tarball(s.dir.path(), &[("lower", 300_000)]);
    let rootfs = create(&s, image.to_str().unwrap(), "free", &[]);
    let before = daemon_wrote(&s);
    let mut open = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(rootfs.join("growing"))
        .unwrap();
    let chunk = vec![7u8; 4096];
    for _ in 0..2048 {
        open.write_all(&chunk).unwrap();
    }
    let by_daemon = daemon_wrote(&s) - before;
    assert!(
        by_daemon < MIB,
        "the daemon wrote {by_daemon} bytes of 8 MiB written through the mount"
    );
    // Open and unseen: stats walks the upper dir.
    let (excl, _, quota) = stats(&s, "free");
    assert_eq!(quota, 0);
    assert!(excl >= 8 * MIB, "{excl}");
    assert_eq!(excl, du(&upper(&s, "free")));
    open.write_all(&chunk).unwrap();
    drop(open);
    assert_eq!(stats(&s, "free").0, du(&upper(&s, "free")));
    // A copy-up, a lower file appended to, one removed, a truncate: counted as before.
    let mut lower = OpenOptions::new()
        .append(true)
        .open(rootfs.join("lower"))
        .unwrap();
    lower.write_all(&chunk).unwrap();
    drop(lower);
    std::fs::remove_file(rootfs.join("growing")).unwrap();
    let small = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(rootfs.join("small"))
        .unwrap();
    small.set_len(3 * MIB).unwrap();
    small.sync_all().unwrap();
    drop(small);
    let (excl, _, _) = stats(&s, "free");
    assert_eq!(excl, du(&upper(&s, "free")));
    assert!((300_000..2 * MIB).contains(&excl), "{excl}");
    let data = std::fs::read(rootfs.join("lower")).unwrap();
    assert_eq!(data.len(), 300_000 + 4096);
}

//! criterion micro-benchmarks of the hot paths nestfs owns:
//! - `lookup_1000_cold`: 1000 lookups answered by the daemon (a fresh mount per sample, so the
//!   kernel has nothing cached), each walking three layers and their whiteouts;
//! - `readdir_merge_10k`: listing a 10k-entry directory merged from three layers, with OCI
//!   whiteouts and an opaque marker to honour (fresh mount per sample);
//! - `unpack_2000_files`: unpacking a 2000-file layer tarball into a tmpfs (bytes/s).
//!
//! `cargo bench --bench hot_paths` (as root, with /dev/fuse; without them the FUSE benches say
//! why they skip and only the unpack bench runs).

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use nestfs_fuse::OverlayConfig;

/// base: big/0..10000; mid: whiteouts for every 10th name plus 1000 new ones; top: an opaque
/// `hidden/` and 500 more names.
fn layers(root: &Path) -> Vec<PathBuf> {
    let (base, mid, top) = (root.join("base"), root.join("mid"), root.join("top"));
    for l in [&base, &mid, &top] {
        std::fs::create_dir_all(l.join("big")).unwrap();
        std::fs::create_dir_all(l.join("hidden")).unwrap();
    }
    for i in 0..10_000 {
        std::fs::write(base.join(format!("big/f{i}")), b"x").unwrap();
    }
    for i in (0..10_000).step_by(10) {
        std::fs::write(mid.join(format!("big/.wh.f{i}")), b"").unwrap();
    }
    for i in 10_000..11_000 {
        std::fs::write(mid.join(format!("big/f{i}")), b"y").unwrap();
    }
    std::fs::write(base.join("hidden/gone"), b"").unwrap();
    std::fs::write(top.join("hidden/.wh..wh..opq"), b"").unwrap();
    for i in 11_000..11_500 {
        std::fs::write(top.join(format!("big/f{i}")), b"z").unwrap();
    }
    vec![top, mid, base]
}

fn fuse_usable() -> Result<(), &'static str> {
    if !rustix::process::geteuid().is_root() {
        return Err("not root");
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("no /dev/fuse");
    }
    Ok(())
}

fn mounted_benches(c: &mut Criterion) {
    if let Err(why) = fuse_usable() {
        eprintln!("SKIP lookup/readdir benches: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = OverlayConfig {
        lowerdirs: layers(dir.path()),
        ..OverlayConfig::default()
    };
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = || nestfs_fuse::mount(&cfg, &mnt).expect("mount");
    let names: Vec<PathBuf> = (0..1000)
        .map(|i| mnt.join(format!("big/f{}", i * 11)))
        .collect();

    let mut g = c.benchmark_group("fuse");
    g.sample_size(20);
    g.bench_function("lookup_1000_cold", |b| {
        b.iter_batched(
            mount,
            |m| {
                for n in &names {
                    let _ = black_box(std::fs::symlink_metadata(n));
                }
                m
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("readdir_merge_10k", |b| {
        b.iter_batched(
            mount,
            |m| {
                let n = std::fs::read_dir(mnt.join("big")).unwrap().count();
                assert_eq!(n, 10_500);
                m
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn unpack_bench(c: &mut Criterion) {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..2000 {
        let data = vec![(i % 251) as u8; 2048];
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        b.append_data(&mut h, format!("d{}/f{i}", i % 50), &data[..])
            .unwrap();
    }
    let tar = b.into_inner().unwrap();
    let opts = nestfs::unpack::UnpackOptions {
        max_bytes: 1 << 30,
        max_entries: 1 << 20,
        privileged: rustix::process::geteuid().is_root(),
        skip_estargz_entries: false,
    };
    let mut g = c.benchmark_group("unpack");
    g.throughput(Throughput::Bytes(tar.len() as u64));
    g.sample_size(20);
    // Into a tmpfs when there is one: on a disk, creating and deleting 2000 files per sample
    // measures the disk's journal and discards more than the unpacker.
    let scratch = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    g.bench_function("unpack_2000_files", |bch| {
        bch.iter_batched(
            || tempfile::tempdir_in(&scratch).unwrap(),
            |d| {
                nestfs::unpack::unpack(&tar[..], d.path(), &opts).unwrap();
                d
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, mounted_benches, unpack_bench);
criterion_main!(benches);

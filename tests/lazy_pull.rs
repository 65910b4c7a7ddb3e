//! Lazy pulling of eStargz images from a real registry (Debian's docker-registry on
//! loopback): `create` fetches footers and TOCs only, reads fetch the files they touch, the
//! daemon completes the layer in the background to what a full pull makes, and a registry
//! that goes away fails reads in bounded time, then serves them again.

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
#[path = "support/registry.rs"]
mod registry;
#[path = "support/runc.rs"]
mod runc;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{TestStore, bin, daemons_for, du, mounts_under};
use nestfs_testimages::{Image, Layer, busybox_layer, noise, write_layout};
use registry::Registry;
use serde_json::Value;

/// Bytes of each big file: 3 chunks.
const BIG: usize = 3 << 19;

/// The image's lower layer: busybox and a few files.
fn lower() -> Layer {
    busybox_layer()
        .dir("etc", 0o755)
        .file("etc/os-release", 0o644, "ID=lazy\n")
        .file("etc/gone", 0o644, "old")
}

/// Big files (of 3 chunks of 512 KiB) and small ones over a lower layer they white out.
fn image(dir: &Path) -> PathBuf {
    let lower = lower();
    let mut upper = Layer::gzip()
        .dir("bin", 0o755)
        .file("bin/hello", 0o755, "#!/bin/sh\necho hello\n")
        .hardlink("bin/hello-again", "bin/hello")
        .symlink("bin/link", "hello")
        .whiteout("etc/gone")
        .dir("data", 0o755);
    for i in 0..4 {
        upper = upper.file(&format!("data/big{i}"), 0o644, noise(i, BIG));
    }

    let src = dir.join("src");
    write_layout(
        &src,
        &Image {
            layers: vec![lower, upper],
            env: Some(vec!["PATH=/bin".into()]),
            tag: Some("v1".into()),
        },
    )
    .unwrap();
    src
}

/// A registry holding the image converted to eStargz as `esgz:v1`, and a store.
struct Lazy {
    reg: Registry,
    image: String,
    /// The big layer's digest and size.
    digest: String,
    size: u64,
    s: TestStore,
}

/// [`Lazy`], the image converted with the prefetch list `prefetch` if any.
fn setup(prefetch: &[&str]) -> Lazy {
    setup_on(Registry::start(false), prefetch)
}

/// [`setup`] on the registry `reg`.
fn setup_on(reg: Registry, prefetch: &[&str]) -> Lazy {
    let dir = tempfile::tempdir().unwrap();
    let src = image(dir.path());
    let dest = dir.path().join("esgz");
    let list = dir.path().join("prefetch");
    std::fs::write(&list, prefetch.join("\n")).unwrap();
    convert(&src, &dest, Some(&list).filter(|_| !prefetch.is_empty()));
    let read =
        |p: PathBuf| -> Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let blob = |d: &Value| {
        dest.join("blobs/sha256")
            .join(d.as_str().unwrap().trim_start_matches("sha256:"))
    };
    let index = read(dest.join("index.json"));
    let m = read(blob(&index["manifests"][0]["digest"]));
    let big = &m["layers"][1];
    assert!(m["layers"][0]["size"].as_u64().unwrap() < big["size"].as_u64().unwrap());
    Lazy {
        image: reg.push(&dest, "esgz", "v1"),
        digest: big["digest"].as_str().unwrap().to_string(),
        size: big["size"].as_u64().unwrap(),
        reg,
        s: TestStore::new(),
    }
}

/// Converts the layout `src` (tag v1) to eStargz at `dest`, in chunks of 512 KiB.
fn convert(src: &Path, dest: &Path, prefetch_list: Option<&PathBuf>) {
    let mut convert = Command::new(bin());
    convert.args(["convert", "--chunk-size", "524288"]);
    if let Some(list) = prefetch_list {
        convert.arg("--prefetch-list").arg(list);
    }
    let out = convert
        .arg(format!("oci://{}:v1", src.display()))
        .arg(dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// `create` with environment `env` (the daemon inherits it).
fn create(
    s: &TestStore,
    reg: &Registry,
    image: &str,
    id: &str,
    env: &[(&str, &str)],
    extra: &[&str],
) -> PathBuf {
    let mut c = s.cmd();
    c.envs(env.iter().copied());
    c.args(["create", "--insecure-registry", &reg.addr])
        .args(extra)
        .args([image, id]);
    let r: common::Run = c.output().unwrap().into();
    let r = r.ok();
    PathBuf::from(r.json()["root"]["path"].as_str().unwrap())
}

fn tree(root: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "cd \"$1\" && { find . -mindepth 1 ! -type d -printf '%p %y %m %U:%G %s %T@ %l %n\\n'; \
             find . -mindepth 1 -type d -printf '%p %y %m %U:%G\\n'; \
             find . -type f -exec sha256sum {} +; } | sort",
        )
        .arg("sh")
        .arg(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Panics with the lines that differ, if the trees do.
fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (tree(a), tree(b));
    let (la, lb): (Vec<&str>, Vec<&str>) = (ta.lines().collect(), tb.lines().collect());
    let only_a: Vec<_> = la.iter().filter(|l| !lb.contains(l)).collect();
    let only_b: Vec<_> = lb.iter().filter(|l| !la.contains(l)).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "{} vs {}:\n{only_a:#?}\nvs\n{only_b:#?}",
        a.display(),
        b.display()
    );
}

/// Once no image uses them, `clean` removes every volume and what it recorded (TOCs
/// included), and nothing stays mounted.
fn assert_cleaned(s: &TestStore) {
    s.run(&["clean"]).ok();
    let left: Vec<_> = std::fs::read_dir(s.root().join("volumes"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(mounts_under(s.dir.path()).is_empty());
}

const NO_COMPLETION: (&str, &str) = ("NESTFS_LAZY_COMPLETE_DELAY_MS", "600000");

#[test]
fn reads_fetch_only_the_files_they_open_and_see_what_a_full_pull_sees() {
    require_root_fuse!();
    let Lazy {
        reg,
        image,
        digest,
        size,
        s,
    } = setup(&[]);
    let rootfs = create(&s, &reg, &image, "lazy", &[NO_COMPLETION], &[]);
    let after_create = reg.bytes_served(&digest);
    assert!(
        after_create < size / 20,
        "create fetched {after_create} of {size} bytes"
    );
    // Metadata is all there without fetching.
    let big = std::fs::metadata(rootfs.join("data/big3")).unwrap();
    assert_eq!(big.len(), BIG as u64);
    assert_eq!(
        std::fs::read_to_string(rootfs.join("bin/hello-again")).unwrap(),
        "#!/bin/sh\necho hello\n"
    );
    assert!(!rootfs.join("etc/gone").exists());
    assert_eq!(
        std::fs::read(rootfs.join("data/big3")).unwrap(),
        noise(3, BIG)
    );
    let after_reads = reg.bytes_served(&digest);
    assert!(
        after_reads - after_create < size / 3,
        "two reads fetched {} of {size} bytes",
        after_reads - after_create
    );

    // Everything read through the mount equals a full pull of the same image.
    let s2 = TestStore::new();
    let full = create(&s2, &reg, &image, "full", &[], &["--without-lazy-pull"]);
    assert_same_tree(&rootfs, &full);
    s.run(&["delete", "lazy"]).ok();
    s2.run(&["delete", "full"]).ok();
    assert!(mounts_under(s.dir.path()).is_empty());
}

#[test]
fn a_mark_a_fully_pulled_layer_carries_never_gets_its_file_filled() {
    require_root_fuse!();
    let Lazy {
        reg,
        image,
        digest,
        s,
        ..
    } = setup(&[]);
    // The lower layer alone, converted the same way, pulled in full first: the lazy image
    // then shares that volume and only its upper layer is lazy.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let one_layer = Image {
        layers: vec![lower()],
        env: None,
        tag: Some("v1".into()),
    };
    write_layout(&src, &one_layer).unwrap();
    let esgz = dir.path().join("esgz");
    convert(&src, &esgz, None);
    let base = reg.push(&esgz, "base", "v1");
    create(&s, &reg, &base, "base", &[], &["--without-lazy-pull"]);
    let rootfs = create(&s, &reg, &image, "lazy", &[NO_COMPLETION], &[]);
    let layers = volumes(&s, "lazy");
    assert_eq!(
        layers[0],
        volumes(&s, "base")[0],
        "the lower volume is shared"
    );
    assert!(!is_lazy(&layers[0]) && is_lazy(&layers[1]));

    // The shared full volume's file claims to be the lazy layer's big0, with that layer's
    // very tag and entry (as a layer's own xattrs would set it).
    let toc: Value =
        serde_json::from_slice(&std::fs::read(layers[1].with_extension("toc.json")).unwrap())
            .unwrap();
    let entry = toc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .position(|e| e["name"].as_str().unwrap().trim_start_matches("./") == "data/big0")
        .unwrap();
    let key = layers[1].file_name().unwrap().to_str().unwrap();
    let forged = format!("{}:{entry}", &key[..16]);
    let victim = layers[0].join("etc/os-release");
    rustix::fs::setxattr(
        &victim,
        "user.nestfs.lazy",
        forged.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let served = reg.bytes_served(&digest);

    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/os-release")).unwrap(),
        "ID=lazy\n"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "ID=lazy\n");
    assert_eq!(reg.bytes_served(&digest), served, "nothing fetched for it");
    // The real big0 is still filled from its own layer.
    assert_eq!(
        std::fs::read(rootfs.join("data/big0")).unwrap(),
        noise(0, BIG)
    );
    s.run(&["delete", "lazy"]).ok();
    s.run(&["delete", "base"]).ok();
    assert!(mounts_under(s.dir.path()).is_empty());
}

/// A tarball of raw entries `(kind, name, link, data)`: names a well-behaved tool refuses.
fn raw_tarball(path: &Path, entries: &[(tar::EntryType, &str, &str, &[u8])]) {
    let mut b = tar::Builder::new(Vec::new());
    for (kind, name, link, data) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}

/// A TOC naming paths through `..` and a symlink out of the layer: the skeleton makes what a
/// full pull of the same image makes (parallel runs or not), and nothing outside.
#[test]
fn a_hostile_toc_makes_nothing_outside_and_what_a_full_pull_makes() {
    use tar::EntryType as T;
    require_root_fuse!();
    let reg = Registry::start(false);
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let out = outside.to_str().unwrap();
    // Every parent a directory entry, every name once: unpacked in parallel runs.
    let dotdot: &[(T, &str, &str, &[u8])] = &[
        (T::Directory, "a", "", b""),
        (T::Directory, "a/..", "", b""),
        (T::Regular, "a/../../escape", "", b"out"),
        (T::Regular, "a/ok", "", b"fine"),
        (T::Regular, "../escape", "", b"out"),
    ];
    // Through a symlink that points outside: in the TOC's order.
    let symlink: &[(T, &str, &str, &[u8])] = &[
        (T::Directory, "d", "", b""),
        (T::Symlink, "d/l", out, b""),
        (T::Regular, "d/l/pwned", "", b"pwned"),
    ];
    for (name, entries) in [("dotdot", dotdot), ("symlink", symlink)] {
        let tarball = dir.path().join(format!("{name}.tar"));
        raw_tarball(&tarball, entries);
        let esgz = dir.path().join(name);
        let out = Command::new(bin())
            .arg("convert")
            .arg(&tarball)
            .arg(&esgz)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let image = reg.push(&esgz, name, "v1");
        let (lazy, full) = (TestStore::new(), TestStore::new());
        let create = |s: &TestStore, extra: &[&str]| -> common::Run {
            let mut c = s.cmd();
            c.env(NO_COMPLETION.0, NO_COMPLETION.1);
            c.args(["create", "--insecure-registry", &reg.addr])
                .args(extra)
                .args([&image, "img"]);
            c.output().unwrap().into()
        };
        let (l, f) = (create(&lazy, &[]), create(&full, &["--without-lazy-pull"]));
        assert_eq!(l.code, f.code, "{name}: lazy {l:#?}\nfull {f:#?}");
        if f.code == 0 {
            let root = |s: &TestStore| s.root().join("images/img/rootfs");
            assert_same_tree(&root(&lazy), &root(&full));
            assert_eq!(std::fs::read(root(&lazy).join("a/ok")).unwrap(), b"fine");
            lazy.run(&["delete", "img"]).ok();
            full.run(&["delete", "img"]).ok();
        } else {
            assert!(l.stdout.contains("unpack"), "{name}: {l:#?}");
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "{name}");
        for s in [&lazy, &full] {
            let found = Command::new("find")
                .arg(s.dir.path())
                .args(["-name", "escape", "-o", "-name", "pwned"])
                .output()
                .unwrap();
            assert!(found.stdout.is_empty(), "{name}: {found:?}");
            assert!(mounts_under(s.dir.path()).is_empty());
            assert!(daemons_for(s.dir.path()).is_empty());
        }
    }
}

/// The volumes of `store`'s image `id`, bottom first.
fn volumes(s: &TestStore, id: &str) -> Vec<PathBuf> {
    let meta: Value = serde_json::from_slice(
        &std::fs::read(s.root().join("images").join(id).join("image.json")).unwrap(),
    )
    .unwrap();
    meta["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| s.root().join("volumes").join(k.as_str().unwrap()))
        .collect()
}

/// Whether a volume is still lazy: its metadata says so.
fn is_lazy(volume: &Path) -> bool {
    let meta: Value =
        serde_json::from_slice(&std::fs::read(volume.with_extension("json")).unwrap()).unwrap();
    !meta["lazy"].is_null()
}

/// Files under `root` that still carry the lazy mark.
fn marked(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                todo.push(e.path());
            } else if ft.is_file() {
                let mut buf = [0u8; 256];
                if rustix::fs::getxattr(e.path(), "user.nestfs.lazy", &mut buf).is_ok() {
                    out.push(e.path());
                }
            }
        }
    }
    out
}

#[test]
fn the_daemon_completes_a_lazy_layer_into_what_a_full_pull_unpacks() {
    require_root_fuse!();
    let Lazy {
        reg,
        image,
        digest,
        size,
        s,
    } = setup(&[]);
    let rootfs = create(
        &s,
        &reg,
        &image,
        "lazy",
        &[("NESTFS_LAZY_COMPLETE_DELAY_MS", "0")],
        &[],
    );
    // Read one file first: completion fills only what is still missing.
    assert_eq!(
        std::fs::read(rootfs.join("data/big1")).unwrap(),
        noise(1, BIG)
    );
    let vols = volumes(&s, "lazy");
    let start = Instant::now();
    while vols.iter().any(|v| is_lazy(v)) {
        assert!(start.elapsed() < Duration::from_secs(60), "not completed");
        std::thread::sleep(Duration::from_millis(100));
    }
    for v in &vols {
        assert!(marked(v).is_empty(), "{:?}", marked(v));
        assert!(!v.with_extension("toc.json").exists());
    }
    // The whole blob once, plus the file read before and the footer and TOC.
    let served = reg.bytes_served(&digest);
    assert!(served < size + size / 3, "{served} of {size}");
    let s2 = TestStore::new();
    create(&s2, &reg, &image, "full", &[], &["--without-lazy-pull"]);
    for (lazy, full) in vols.iter().zip(volumes(&s2, "full")) {
        assert_same_tree(lazy, &full);
    }
    // Once complete, later images of it do not fetch at all.
    let before = reg.bytes_served(&digest);
    let again = create(&s, &reg, &image, "again", &[], &[]);
    assert_eq!(
        std::fs::read(again.join("data/big2")).unwrap(),
        noise(2, BIG)
    );
    assert_eq!(reg.bytes_served(&digest), before);
    for id in ["lazy", "again"] {
        s.run(&["delete", id]).ok();
    }
    s2.run(&["delete", "full"]).ok();
    assert!(mounts_under(s.dir.path()).is_empty());
}

#[test]
fn reads_fail_in_bounded_time_while_the_registry_is_gone_and_work_when_it_returns() {
    require_root_fuse!();
    let Lazy {
        mut reg, image, s, ..
    } = setup(&[]);
    let rootfs = create(
        &s,
        &reg,
        &image,
        "lazy",
        &[NO_COMPLETION, ("NESTFS_LAZY_TIMEOUT_MS", "2000")],
        &[],
    );
    reg.stop();
    let start = Instant::now();
    let err = std::fs::read(rootfs.join("data/big0")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let log = std::fs::read_to_string(s.root().join("images/lazy/daemon.log")).unwrap();
    assert!(log.contains("lazy fetch failed"), "{log}");
    reg.restart();
    assert_eq!(
        std::fs::read(rootfs.join("data/big0")).unwrap(),
        noise(0, BIG)
    );
    s.run(&["delete", "lazy"]).ok();
    assert!(mounts_under(s.dir.path()).is_empty());
}

#[test]
fn a_chunk_that_does_not_match_the_toc_is_never_served() {
    require_root_fuse!();
    let Lazy {
        reg,
        image,
        digest,
        size,
        s,
    } = setup(&[]);
    let rootfs = create(&s, &reg, &image, "lazy", &[NO_COMPLETION], &[]);
    // The registry now lies about the middle of the blob (the big files' data).
    let blob = reg.blob_file(&digest);
    let mut data = std::fs::read(&blob).unwrap();
    for b in &mut data[(size / 4) as usize..(size * 3 / 4) as usize] {
        *b ^= 0x55;
    }
    std::fs::write(&blob, data).unwrap();
    let mut failed = 0;
    for i in 0..4 {
        match std::fs::read(rootfs.join(format!("data/big{i}"))) {
            Ok(d) => assert_eq!(d, noise(i, BIG), "big{i} served wrong data"),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO));
                failed += 1;
            }
        }
    }
    assert!(failed >= 2, "{failed} reads failed");
    // Nor does the layer complete from that blob: it stays lazy, and the daemon says why.
    create(
        &s,
        &reg,
        &image,
        "again",
        &[("NESTFS_LAZY_COMPLETE_DELAY_MS", "0")],
        &[],
    );
    let log = s.root().join("images/again/daemon.log");
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("cannot be completed")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no verdict: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(volumes(&s, "again").iter().any(|v| is_lazy(v)));
    s.run(&["delete", "again"]).ok();
    s.run(&["delete", "lazy"]).ok();
    assert!(mounts_under(s.dir.path()).is_empty());
}

#[test]
fn a_container_reads_and_changes_files_not_fetched_yet_within_its_disk_limit() {
    require_root_fuse!();
    if !runc::runc_available() {
        eprintln!("SKIP runc: runc is not installed");
        return;
    }
    let Lazy {
        reg,
        image,
        digest,
        size,
        s,
    } = setup(&[]);
    let mut c = s.cmd();
    c.env(NO_COMPLETION.0, NO_COMPLETION.1);
    c.args(["create", "--insecure-registry", &reg.addr])
        .args([
            "--disk-limit-size-bytes",
            "20000000",
            "--exclude-image-from-quota",
        ])
        .args([&image, "ctr"]);
    let r: common::Run = c.output().unwrap().into();
    let spec = r.ok().json();
    let stats = |s: &TestStore| {
        s.run(&["stats", "ctr"]).ok().json()["disk_usage"]["exclusive_bytes_used"]
            .as_u64()
            .unwrap()
    };
    let before = stats(&s);
    // Reads one unfetched file, appends to another (a copy-up of data not fetched yet).
    let script = "sha256sum /data/big0 && echo appended >> /data/big2 && cat /etc/os-release";
    let out = runc::Container::new(&spec, script, "nestfs-test-lazy").run();
    let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(noise(0, BIG)));
    assert!(out.contains(&want) && out.contains("ID=lazy"), "{out}");
    let upper = s.root().join("images/ctr/upper");
    let mut big2 = noise(2, BIG);
    big2.extend_from_slice(b"appended\n");
    assert_eq!(std::fs::read(upper.join("data/big2")).unwrap(), big2);
    // Only what the container opened came from the registry.
    let served = reg.bytes_served(&digest);
    assert!(served < size * 3 / 4, "{served} of {size}");
    // Fetched data is the store's: the container is charged its copy-up only.
    let after = stats(&s);
    assert_eq!(after, du(&upper));
    assert!(
        after - before < BIG as u64 + (1 << 20),
        "{before} -> {after}"
    );
    s.run(&["delete", "ctr"]).ok();
    assert!(mounts_under(s.dir.path()).is_empty());
}

#[test]
fn killed_daemons_and_shared_volumes_leave_nothing_half_filled() {
    require_root_fuse!();
    let Lazy { reg, image, s, .. } = setup(&[]);
    let quick = [("NESTFS_LAZY_COMPLETE_DELAY_MS", "0")];
    let a = create(&s, &reg, &image, "a", &quick, &[]);
    let b = create(&s, &reg, &image, "b", &quick, &[]);
    assert_eq!(volumes(&s, "a"), volumes(&s, "b"));
    // Both daemons fill and complete the same volume; kill them at once, mid-way.
    let reader = std::thread::spawn(move || std::fs::read(a.join("data/big3")));
    std::thread::sleep(Duration::from_millis(150));
    common::kill_image_daemons(s.dir.path());
    let _ = reader.join().unwrap();
    // A live lazy volume is not clean's to remove, however far it got.
    s.run(&["clean"]).ok();
    assert!(volumes(&s, "a").iter().all(|v| v.exists()));
    let mut remount = s.cmd();
    remount.envs(quick).args(["remount", "a", "b"]);
    let r: common::Run = remount.output().unwrap().into();
    r.ok();
    for i in 0..4 {
        assert_eq!(
            std::fs::read(b.join(format!("data/big{i}"))).unwrap(),
            noise(i, BIG)
        );
    }
    let start = Instant::now();
    while volumes(&s, "a").iter().any(|v| is_lazy(v)) {
        assert!(start.elapsed() < Duration::from_secs(60), "not completed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let s2 = TestStore::new();
    create(&s2, &reg, &image, "full", &[], &["--without-lazy-pull"]);
    for (lazy, full) in volumes(&s, "a").iter().zip(volumes(&s2, "full")) {
        assert_same_tree(lazy, &full);
    }
    for id in ["a", "b"] {
        s.run(&["delete", id]).ok();
    }
    s2.run(&["delete", "full"]).ok();
    assert_cleaned(&s);
}

#[test]
fn files_before_the_prefetch_landmark_are_fetched_at_once() {
    require_root_fuse!();
    let Lazy {
        reg,
        image,
        digest,
        size,
        s,
    } = setup(&["/data/big2", "/bin/hello"]);
    let rootfs = create(&s, &reg, &image, "lazy", &[NO_COMPLETION], &[]);
    // Read at once, while the prefetch may still run: it waits for it, not fetch again.
    assert_eq!(
        std::fs::read(rootfs.join("data/big2")).unwrap(),
        noise(2, BIG)
    );
    let vol = volumes(&s, "lazy")[1].clone();
    let start = Instant::now();
    while marked(&vol).iter().any(|p| p.ends_with("data/big2")) {
        assert!(start.elapsed() < Duration::from_secs(30), "not prefetched");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut left: Vec<_> = marked(&vol)
        .iter()
        .map(|p| p.strip_prefix(&vol).unwrap().display().to_string())
        .collect();
    left.sort();
    assert_eq!(left, ["data/big0", "data/big1", "data/big3"]);
    assert_eq!(std::fs::read(vol.join("data/big2")).unwrap(), noise(2, BIG));
    let served = reg.bytes_served(&digest);
    assert!(served < size / 2, "{served} of {size}");
    assert!(served < BIG as u64 * 3 / 2, "big2 fetched twice: {served}");
    s.run(&["delete", "lazy"]).ok();
    assert!(mounts_under(s.dir.path()).is_empty());
}

#[test]
fn a_create_killed_at_any_point_leaves_nothing_the_next_one_trips_on() {
    require_root_fuse!();
    let Lazy { reg, image, s, .. } = setup(&[]);
    for (i, after) in [5u64, 20, 60, 150].into_iter().enumerate() {
        let id = format!("k{i}");
        let mut c = s.cmd();
        c.env(NO_COMPLETION.0, NO_COMPLETION.1)
            .args(["create", "--insecure-registry", &reg.addr, &image, &id])
            .stdout(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(after));
        let _ = child.kill();
        let _ = child.wait();
        // The same id again: whatever the killed one left is swept or reused.
        s.run(&["delete", &id]).ok();
        let rootfs = create(&s, &reg, &image, &id, &[NO_COMPLETION], &[]);
        assert_eq!(
            std::fs::read(rootfs.join("data/big1")).unwrap(),
            noise(1, BIG)
        );
        s.run(&["delete", &id]).ok();
    }
    assert_cleaned(&s);
}

#[test]
fn a_registry_that_wants_credentials_gets_them_for_lazy_fetches_too() {
    require_root_fuse!();
    let Lazy {
        reg, image, digest, ..
    } = setup_on(Registry::start(true), &[]);
    let s = TestStore::new();
    let login = [
        "--username",
        registry::USER,
        "--password",
        registry::PASSWORD,
    ];
    let rootfs = create(&s, &reg, &image, "lazy", &[NO_COMPLETION], &login);
    assert!(volumes(&s, "lazy").iter().any(|v| is_lazy(v)));
    let before = reg.bytes_served(&digest);
    assert_eq!(
        std::fs::read(rootfs.join("data/big1")).unwrap(),
        noise(1, BIG)
    );
    assert!(reg.bytes_served(&digest) > before + BIG as u64 / 2);
    // Once complete, nothing of them stays in the store.
    let again = create(
        &s,
        &reg,
        &image,
        "again",
        &[("NESTFS_LAZY_COMPLETE_DELAY_MS", "0")],
        &login,
    );
    let start = Instant::now();
    while volumes(&s, "again").iter().any(|v| is_lazy(v)) {
        assert!(start.elapsed() < Duration::from_secs(60), "not completed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let found = Command::new("grep")
        .args(["-rl", registry::PASSWORD])
        .arg(s.root().join("volumes"))
        .output()
        .unwrap();
    assert!(found.stdout.is_empty(), "{found:?}");
    assert_eq!(
        std::fs::read(again.join("data/big3")).unwrap(),
        noise(3, BIG)
    );
    for id in ["lazy", "again"] {
        s.run(&["delete", id]).ok();
    }
    assert!(mounts_under(s.dir.path()).is_empty());
}

#[test]
fn a_disk_limit_too_small_for_the_image_fails_a_lazy_create_as_a_full_one() {
    require_root_fuse!();
    let Lazy { reg, image, s, .. } = setup(&[]);
    // Above the compressed layers (checked before any pull), below what they unpack to.
    let limit = "7800000";
    let run = |extra: &[&str]| -> common::Run {
        let mut c = s.cmd();
        c.args([
            "create",
            "--insecure-registry",
            &reg.addr,
            "--disk-limit-size-bytes",
            limit,
        ])
        .args(extra)
        .args([&image, "small"]);
        c.output().unwrap().into()
    };
    let lazy = run(&[]);
    let full = run(&["--without-lazy-pull"]);
    assert_eq!(lazy.code, 1, "{lazy:#?}");
    assert_eq!(full.code, 1, "{full:#?}");
    assert_eq!(lazy.stdout, full.stdout);
    assert!(!s.root().join("images/small").exists());
    assert!(mounts_under(s.dir.path()).is_empty());
}

/// Stores lazily pulled by builds before marks were short (`<volume key>/<name>`) still fill
/// as they are read once nestfs is upgraded.
#[test]
fn a_mark_written_by_an_older_build_is_still_filled() {
    require_root_fuse!();
    let Lazy { reg, image, s, .. } = setup(&[]);
    let rootfs = create(&s, &reg, &image, "lazy", &[NO_COMPLETION], &[]);
    let vol = volumes(&s, "lazy")[1].clone();
    let key = vol.file_name().unwrap().to_str().unwrap().to_string();
    for name in ["bin/hello", "data/big1"] {
        let old = format!("{key}/{name}");
        rustix::fs::setxattr(
            vol.join(name),
            "user.nestfs.lazy",
            old.as_bytes(),
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(rootfs.join("bin/hello")).unwrap(),
        "#!/bin/sh\necho hello\n"
    );
    assert_eq!(
        std::fs::read(rootfs.join("data/big1")).unwrap(),
        noise(1, BIG)
    );
    let left = marked(&vol);
    assert!(
        !left
            .iter()
            .any(|p| p.ends_with("bin/hello") || p.ends_with("data/big1")),
        "{left:?}"
    );
    s.run(&["delete", "lazy"]).ok();
    assert!(mounts_under(s.dir.path()).is_empty());
}

#[test]
fn a_read_of_a_big_file_fetches_the_chunks_it_falls_in() {
    require_root_fuse!();
    let Lazy {
        reg,
        image,
        digest,
        s,
        ..
    } = setup(&[]);
    let rootfs = create(&s, &reg, &image, "lazy", &[NO_COMPLETION], &[]);
    let vol = volumes(&s, "lazy")[1].clone();
    let want = noise(2, BIG);
    let before = reg.bytes_served(&digest);
    // 100 bytes in the second of its three 512 KiB chunks.
    let f = std::fs::File::open(rootfs.join("data/big2")).unwrap();
    let mut buf = [0u8; 100];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 600_000).unwrap();
    assert_eq!(buf[..], want[600_000..600_100]);
    let fetched = reg.bytes_served(&digest) - before;
    assert!(fetched < 600_000, "{fetched} bytes for one chunk");
    assert!(marked(&vol).iter().any(|p| p.ends_with("data/big2")));
    // The rest as it is read; then the file is complete.
    assert_eq!(std::fs::read(rootfs.join("data/big2")).unwrap(), want);
    assert!(!marked(&vol).iter().any(|p| p.ends_with("data/big2")));
    let total = reg.bytes_served(&digest) - before;
    assert!(
        total < BIG as u64 + 100_000,
        "chunks fetched twice: {total}"
    );
    drop(f);
    s.run(&["delete", "lazy"]).ok();
    assert!(mounts_under(s.dir.path()).is_empty());
}

/// A store that runs out of inodes while the skeleton is made (its runs in parallel): the
/// create fails saying so, leaves nothing behind, and works once there is room.
#[test]
fn a_skeleton_that_runs_out_of_inodes_fails_cleanly() {
    require_root_fuse!();
    let Lazy { reg, image, .. } = setup(&[]);
    let s = TestStore::uninitialised();
    let _fs = common::Tmpfs::mount_with(&s.root(), "size=64m,nr_inodes=120");
    s.run(&["init-store"]).ok();
    let mut c = s.cmd();
    c.env(NO_COMPLETION.0, NO_COMPLETION.1).args([
        "create",
        "--insecure-registry",
        &reg.addr,
        &image,
        "lazy",
    ]);
    let r: common::Run = c.output().unwrap().into();
    assert_eq!(r.code, 1, "{r:#?}");
    // Bytes were plenty; the message says what ran out.
    assert!(
        r.stdout.contains("filesystem is full") && r.stdout.contains("inodes were free"),
        "{r:#?}"
    );
    let left = |dir: &str| std::fs::read_dir(s.root().join(dir)).map_or(0, |d| d.count());
    assert_eq!((left("tmp"), left("images")), (0, 0), "{r:#?}");
    assert!(daemons_for(s.dir.path()).is_empty());
    let out = Command::new("mount")
        .args(["-o", "remount,nr_inodes=100000"])
        .arg(s.root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let rootfs = create(&s, &reg, &image, "lazy", &[NO_COMPLETION], &[]);
    assert_eq!(
        std::fs::read(rootfs.join("data/big1")).unwrap(),
        noise(1, BIG)
    );
    s.run(&["delete", "lazy"]).ok();
    assert_eq!(mounts_under(s.dir.path()), [s.root().display().to_string()]);
}

#[test]
fn a_fill_on_a_full_store_fails_with_enospc_and_works_once_there_is_room() {
    require_root_fuse!();
    let Lazy { reg, image, .. } = setup(&[]);
    let s = TestStore::uninitialised();
    let _fs = common::Tmpfs::mount(&s.root(), 24 << 20);
    s.run(&["init-store"]).ok();
    let rootfs = create(&s, &reg, &image, "lazy", &[NO_COMPLETION], &[]);
    // Something else takes the room the image's data was counted on.
    let free = rustix::fs::statvfs(s.root()).unwrap();
    let filler = s.root().join("filler");
    let _ = std::fs::write(&filler, vec![1u8; (free.f_bavail * free.f_frsize) as usize]);
    let err = std::fs::read(rootfs.join("data/big1")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let vol = volumes(&s, "lazy")[1].clone();
    assert!(marked(&vol).iter().any(|p| p.ends_with("data/big1")));
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(
        std::fs::read(rootfs.join("data/big1")).unwrap(),
        noise(1, BIG)
    );
    s.run(&["delete", "lazy"]).ok();
    assert_eq!(mounts_under(s.dir.path()), [s.root().display().to_string()]);
}

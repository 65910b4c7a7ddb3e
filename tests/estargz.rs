//! `nestfs convert`: eStargz copies of images, checked with tools that know nothing of
//! nestfs (Debian's tar and gzip) and through `create` from a layout and a real registry.

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
#[path = "support/registry.rs"]
mod registry;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TestStore, bin, mounts_under};
use nestfs_testimages::{Image, Layer, noise, write_layout};
use registry::Registry;
use serde_json::Value;

/// Every kind of entry, names and targets too long for a plain tar header, a file split
/// into chunks (64 KiB here) and a file of exactly two chunks, whiteouts over a lower layer.
fn image(dir: &Path) -> PathBuf {
    let long = format!("deep/{}/file", "d".repeat(120));
    let lower = Layer::gzip()
        .dir("etc", 0o755)
        .file("etc/hostname", 0o644, "lower\n")
        .dir("gone", 0o755)
        .file("gone/x", 0o644, "x")
        .dir("opaque", 0o755)
        .file("opaque/old", 0o644, "old");
    let upper = Layer::gzip()
        .dir("bin", 0o755)
        .file("bin/tool", 0o4755, noise(1, 200_000))
        .file("bin/two-chunks", 0o755, noise(2, 128 << 10))
        .file("empty", 0o600, Vec::new())
        .owned(1000, 1000)
        .hardlink("bin/tool-link", "bin/tool")
        .symlink("etc/long-link", &"t".repeat(150))
        .dir("deep", 0o755)
        .dir(&format!("deep/{}", "d".repeat(120)), 0o700)
        .file(&long, 0o644, "far down")
        .char_dev("null", 0o666, 1, 3)
        .fifo("pipe", 0o644)
        .whiteout("gone")
        .dir("opaque", 0o755)
        .opaque("opaque")
        .file("opaque/new", 0o644, "new");
    let dir = dir.join("src");
    write_layout(
        &dir,
        &Image {
            layers: vec![lower, upper],
            env: Some(vec!["A=1".into()]),
            tag: Some("v1".into()),
        },
    )
    .unwrap();
    dir
}

fn convert(args: &[&str]) -> common::Run {
    Command::new(bin())
        .arg("convert")
        .args(args)
        .output()
        .unwrap()
        .into()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// The layout's manifest and config.
fn manifest(layout: &Path) -> (Value, Value) {
    let index = read_json(&layout.join("index.json"));
    let m = read_json(&blob(
        layout,
        index["manifests"][0]["digest"].as_str().unwrap(),
    ));
    let c = read_json(&blob(layout, m["config"]["digest"].as_str().unwrap()));
    (m, c)
}

/// Every path under `root` with its type, mode, owner, size, mtime, link target and, for
/// files, a content hash: what "the same tree" means here (a directory's mtime is when the
/// entries in it were unpacked, so it is left out).
fn tree(root: &Path) -> Vec<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "cd \"$1\" && find . -mindepth 1 ! -type d -printf '%p %y %m %U:%G %s %T@ %l\\n' && \
             find . -mindepth 1 -type d -printf '%p %y %m %U:%G\\n' && \
             find . -type f -exec sha256sum {} +",
        )
        .arg("sh")
        .arg(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.contains("stargz.index.json") && !l.contains(".prefetch.landmark"))
        .map(String::from)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Unpacks each layer blob of `layout` with Debian's tar, in order, into `dest`.
fn gnu_untar(layout: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    let (m, _) = manifest(layout);
    for l in m["layers"].as_array().unwrap() {
        let s = Command::new("tar")
            .args(["-xzf"])
            .arg(blob(layout, l["digest"].as_str().unwrap()))
            .arg("-C")
            .arg(dest)
            .arg("--numeric-owner")
            .status()
            .unwrap();
        assert!(s.success());
    }
}

#[test]
fn a_converted_image_unpacks_with_debian_tar_to_the_same_tree() {
    require_root_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let src = image(dir.path());
    let dest = dir.path().join("esgz");
    let r = convert(&[
        "--chunk-size",
        "65536",
        "--tag",
        "lazy",
        &format!("oci://{}:v1", src.display()),
        dest.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        r.json()["image"],
        format!("oci://{}:lazy", dest.display()),
        "{r:#?}"
    );
    gnu_untar(&src, &dir.path().join("a"));
    gnu_untar(&dest, &dir.path().join("b"));
    let (a, b) = (tree(&dir.path().join("a")), tree(&dir.path().join("b")));
    assert!(a.len() > 20, "{a:#?}");
    assert_eq!(a, b);

    // Config kept but for the new diff_ids, which are the uncompressed blobs' digests; each
    // layer names its TOC's digest, which is that of the stargz.index.json in it.
    let (m, c) = manifest(&dest);
    let (_, old) = manifest(&src);
    assert_eq!(c["config"], old["config"]);
    for (i, l) in m["layers"].as_array().unwrap().iter().enumerate() {
        let path = blob(&dest, l["digest"].as_str().unwrap());
        let sh = |cmd: &str| {
            let o = Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .arg("sh")
                .arg(&path)
                .output()
                .unwrap();
            assert!(o.status.success(), "{cmd}: {o:?}");
            String::from_utf8(o.stdout).unwrap()
        };
        let diff = sh("gzip -dc \"$1\" | sha256sum");
        assert_eq!(
            format!("sha256:{}", &diff[..64]),
            c["rootfs"]["diff_ids"][i],
            "layer {i}"
        );
        let toc = sh("tar -xzOf \"$1\" stargz.index.json");
        let toc_digest = sh("tar -xzOf \"$1\" stargz.index.json | sha256sum");
        assert_eq!(
            l["annotations"]["containerd.io/snapshot/stargz/toc.digest"],
            format!("sha256:{}", &toc_digest[..64])
        );
        // The footer is the last 51 bytes and names where the TOC's gzip member starts.
        let size = std::fs::metadata(&path).unwrap().len();
        let footer = &std::fs::read(&path).unwrap()[size as usize - 51..];
        let at = u64::from_str_radix(std::str::from_utf8(&footer[16..32]).unwrap(), 16).unwrap();
        let from_toc = sh(&format!(
            "tail -c +{} \"$1\" | gzip -dc 2>/dev/null | head -c 512 | head -c 17",
            at + 1
        ));
        assert_eq!(from_toc, "stargz.index.json");
        // Each payload starts a gzip member of its own at the offset the TOC gives.
        let toc: Value = serde_json::from_str(&toc).unwrap();
        let mut file_size = 0;
        let mut checked = 0;
        for e in toc["entries"].as_array().unwrap() {
            let n = |k: &str| e[k].as_u64().unwrap_or(0);
            match e["type"].as_str().unwrap() {
                "reg" if n("size") > 0 => file_size = n("size"),
                "chunk" => {}
                _ => continue,
            }
            let len = match n("chunkSize") {
                0 => file_size - n("chunkOffset"),
                l => l,
            };
            let got = sh(&format!(
                "tail -c +{} \"$1\" | gzip -dc 2>/dev/null | head -c {len} | sha256sum",
                n("offset") + 1
            ));
            assert_eq!(e["chunkDigest"], format!("sha256:{}", &got[..64]), "{e}");
            checked += 1;
        }
        assert!(checked > 0);
    }
}

#[test]
fn create_serves_a_converted_image_as_the_original_from_a_layout_and_a_registry() {
    require_root_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let src = image(dir.path());
    let reg = Registry::start(false);
    let pushed = reg.push(&src, "plain/image", "v1");
    // Converted from the registry, pushed back, and pulled both ways.
    let dest = dir.path().join("esgz");
    convert(&[
        "--insecure-registry",
        &reg.addr,
        &pushed,
        dest.to_str().unwrap(),
    ])
    .ok();
    let lazy = reg.push(&dest, "esgz/image", "v1");
    let s = TestStore::new();
    let want = tree(&s.create(&format!("oci://{}:v1", src.display()), "plain"));
    let from_layout = s.create(&format!("oci://{}", dest.display()), "layout");
    assert!(!from_layout.join("stargz.index.json").exists());
    assert!(!from_layout.join(".no.prefetch.landmark").exists());
    assert_eq!(tree(&from_layout), want);
    // Kept as Debian's tar makes them: a fifo, a device node with its header's mtime.
    let meta = |p: &str| std::fs::symlink_metadata(from_layout.join(p)).unwrap();
    assert!(meta("pipe").file_type().is_fifo());
    assert!(meta("null").file_type().is_char_device());
    assert_eq!(meta("null").mtime(), 1_577_836_800);
    let r = s
        .run(&[
            "create",
            "--insecure-registry",
            &reg.addr,
            &lazy,
            "registry",
        ])
        .ok();
    let rootfs = PathBuf::from(r.json()["root"]["path"].as_str().unwrap());
    assert_eq!(tree(&rootfs), want);
    assert_eq!(r.json()["process"]["env"], serde_json::json!(["A=1"]));
    for id in ["plain", "layout", "registry"] {
        s.run(&["delete", id]).ok();
    }
    assert!(mounts_under(s.dir.path()).is_empty());
}

#[test]
fn prefetched_files_come_first_and_unknown_ones_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let src = image(dir.path());
    let list = dir.path().join("prefetch");
    std::fs::write(&list, "/bin/tool-link\n\n./etc/hostname\n/no/such/file\n").unwrap();
    let dest = dir.path().join("esgz");
    let r = convert(&[
        "--prefetch-list",
        list.to_str().unwrap(),
        &format!("oci://{}:v1", src.display()),
        dest.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        r.json()["missing_prefetch"],
        serde_json::json!(["no/such/file"])
    );
    let (m, _) = manifest(&dest);
    let names = |layer: usize| -> Vec<String> {
        let path = blob(&dest, m["layers"][layer]["digest"].as_str().unwrap());
        let out = Command::new("tar").arg("-tzf").arg(path).output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    };
    // A hard link's target and a file's directory come with it, then the landmark.
    assert_eq!(names(0)[..3], ["etc", "etc/hostname", ".prefetch.landmark"]);
    assert_eq!(
        names(1)[..4],
        ["bin", "bin/tool", "bin/tool-link", ".prefetch.landmark"]
    );
    assert_eq!(names(1).last().unwrap(), "stargz.index.json");
}

#[test]
fn a_corrupt_source_or_a_used_destination_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = image(dir.path());
    let used = dir.path().join("used");
    std::fs::create_dir(&used).unwrap();
    std::fs::write(used.join("mine"), "keep").unwrap();
    let r = convert(&[&format!("oci://{}", src.display()), used.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("exists and is not empty"), "{r:#?}");
    assert_eq!(std::fs::read_to_string(used.join("mine")).unwrap(), "keep");

    // Flip a byte in the upper layer's blob: its digest no longer matches.
    let (m, _) = manifest(&src);
    let layer = blob(&src, m["layers"][1]["digest"].as_str().unwrap());
    let mut data = std::fs::read(&layer).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&layer, data).unwrap();
    let dest = dir.path().join("esgz");
    let r = convert(&[&format!("oci://{}", src.display()), dest.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("layerID digest mismatch"), "{r:#?}");
    assert!(!dest.exists());
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["src", "used"]);
}

#[test]
fn a_convert_to_the_same_destination_removes_what_a_killed_one_left() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let big = Layer::gzip().file("big", 0o644, noise(7, 16 << 20));
    let one = Image {
        layers: vec![big],
        env: None,
        tag: None,
    };
    write_layout(&src, &one).unwrap();
    let dest = dir.path().join("esgz");
    let work = |d: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().contains(".esgz.converting-"))
            .collect();
        v.sort();
        v
    };
    let mut child = Command::new(bin())
        .arg("convert")
        .arg(format!("oci://{}", src.display()))
        .arg(&dest)
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while work(dir.path()).is_empty() && t0.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed before it finished: {status:?}");
    let killed = work(dir.path());
    assert_eq!(killed.len(), 1, "{killed:?}");
    assert!(!dest.exists());

    // Its debris is a minute old; beside it, another convert's work that is older but
    // still locked (running), and one just made (not locked yet): both stay.
    let aged = |p: &Path| {
        let out = Command::new("touch")
            .args(["-d", "2 minutes ago"])
            .arg(p)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    aged(&killed[0]);
    let live = dir.path().join(".esgz.converting-live");
    std::fs::create_dir(&live).unwrap();
    aged(&live);
    let held = std::fs::File::open(&live).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let young = dir.path().join(".esgz.converting-young");
    std::fs::create_dir(&young).unwrap();

    let r = convert(&[&format!("oci://{}", src.display()), dest.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:#?}");
    assert!(dest.join("index.json").exists());
    assert_eq!(work(dir.path()), [live, young]);
}

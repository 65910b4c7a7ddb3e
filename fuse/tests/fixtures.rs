//! OCI images with the shapes of GrootFS's and Garden's test images (built by
//! `nestfs-testimages` from local files): each layout's layers are unpacked one dir per layer
//! (OCI whiteout format for the overlay under test, converted to overlayfs format for the
//! kernel), mounted, and checked against a model computed from the tars themselves (whiteouts and
//! opaque dirs applied in order): every path with its type, mode, owner, size, content hash and
//! symlink target; whited-out paths absent; no `.wh.` name visible. The merged tree must also equal
//! kernel overlayfs's over the same layers, hardlinked files keep sharing an inode, and a busybox
//! image can run a program from the mount.

// Tests call libc directly, for setup and for the raw results they check.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

#[allow(dead_code)]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use common::layers::{cpath, set_xattr};
use common::mounts::{Impl, Side};
use common::snapshot::{Detail, diff, file_hash, snapshot};

fn fixture(name: &str) -> PathBuf {
    nestfs_testimages::layout(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("images"), name)
}

/// The layer tars of the layout's first manifest, bottom first, decompressed.
fn layer_tars(layout: &Path) -> Vec<Vec<u8>> {
    nestfs_testimages::layer_tars(layout)
        .unwrap_or_else(|e| panic!("layers of {}: {e}", layout.display()))
}

fn norm(path: &Path) -> String {
    let s = path.to_string_lossy();
    s.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

/// Unpacks one layer tar into `dest` as-is (OCI whiteout files stay files). The tar crate writes
/// special files as regular ones, so fifos and device nodes are made here.
fn unpack(tar: &[u8], dest: &Path) {
    let mut archive = tar::Archive::new(tar);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let kind = entry.header().entry_type();
        let special = match kind {
            tar::EntryType::Char => Some(libc::S_IFCHR),
            tar::EntryType::Block => Some(libc::S_IFBLK),
            tar::EntryType::Fifo => Some(libc::S_IFIFO),
            _ => None,
        };
        let Some(fmt) = special else {
            entry.unpack_in(dest).expect("unpack tar entry");
            continue;
        };
        let h = entry.header();
        let path = dest.join(norm(&entry.path().expect("entry path")));
        let mode = h.mode().expect("mode") & 0o7777;
        let dev = libc::makedev(
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
        );
        let c = cpath(&path);
        assert_eq!(
            unsafe { libc::mknod(c.as_ptr(), fmt | mode, dev) },
            0,
            "mknod {path:?}"
        );
        let (uid, gid) = (h.uid().unwrap() as u32, h.gid().unwrap() as u32);
        assert_eq!(
            unsafe { libc::lchown(c.as_ptr(), uid, gid) },
            0,
            "chown {path:?}"
        );
        assert_eq!(
            unsafe { libc::chmod(c.as_ptr(), mode) },
            0,
            "chmod {path:?}"
        );
    }
}

/// Rewrites an unpacked OCI layer into overlayfs format for the kernel.
fn convert_to_overlay_format(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readdir layer") {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if name == ".wh..wh..opq" {
                std::fs::remove_file(&path).expect("remove opq marker");
                set_xattr(&d, "trusted.overlay.opaque", b"y");
            } else if let Some(hidden) = name.strip_prefix(".wh.") {
                std::fs::remove_file(&path).expect("remove whiteout file");
                let c = cpath(&d.join(hidden));
                assert_eq!(
                    unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) },
                    0,
                    "whiteout"
                );
            } else if e.file_type().expect("type").is_dir() {
                stack.push(path);
            }
        }
    }
}

/// What one path of the merged image must look like, from the tar headers.
#[derive(Clone, Debug, PartialEq)]
struct Expect {
    kind: &'static str,
    mode: u32,
    uid: u64,
    gid: u64,
    /// size and sha256 for files, target for symlinks
    data: String,
}

struct Model {
    paths: BTreeMap<String, Expect>,
    whited_out: BTreeSet<String>,
}

fn remove_tree(map: &mut BTreeMap<String, Expect>, path: &str, keep_root: bool) {
    let prefix = format!("{path}/");
    map.retain(|p, _| !(p.starts_with(&prefix) || (!keep_root && p == path)));
}

/// Applies the layers bottom first: whiteouts and opaque markers hide what lower layers hold,
/// then the layer's own entries land on top.
fn model(tars: &[Vec<u8>]) -> Model {
    let mut paths: BTreeMap<String, Expect> = BTreeMap::new();
    let mut whited_out = BTreeSet::new();
    for tar in tars {
        let mut entries: Vec<(String, Expect, Option<String>)> = Vec::new();
        let mut archive = tar::Archive::new(&tar[..]);
        for entry in archive.entries().expect("tar entries") {
            let mut entry = entry.expect("tar entry");
            let path = norm(&entry.path().expect("path"));
            if path.is_empty() {
                continue;
            }
            let h = entry.header().clone();
            let t = h.entry_type();
            let kind = match t {
                tar::EntryType::Directory => "dir",
                tar::EntryType::Symlink => "symlink",
                tar::EntryType::Char => "chardev",
                tar::EntryType::Block => "blockdev",
                tar::EntryType::Fifo => "fifo",
                _ => "file",
            };
            let link = entry.link_name().expect("link name").map(|l| norm(&l));
            let data = match t {
                tar::EntryType::Symlink => entry
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::GNUSparse => {
                    let mut buf = Vec::new();
                    entry.read_to_end(&mut buf).expect("read tar data");
                    let hash: String = Sha256::digest(&buf)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    format!("{} {hash}", buf.len())
                }
                _ => String::new(),
            };
            let hardlink = (t == tar::EntryType::Link).then(|| link.expect("link target"));
            let e = Expect {
                kind,
                mode: h.mode().expect("mode") & 0o7777,
                uid: h.uid().expect("uid"),
                gid: h.gid().expect("gid"),
                data,
            };
            entries.push((path, e, hardlink));
        }
        for (path, _, _) in &entries {
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
            if name == ".wh..wh..opq" {
                remove_tree(&mut paths, dir, true);
            } else if let Some(hidden) = name.strip_prefix(".wh.") {
                let target = if dir.is_empty() {
                    hidden.to_string()
                } else {
                    format!("{dir}/{hidden}")
                };
                remove_tree(&mut paths, &target, false);
                whited_out.insert(target);
            }
        }
        let mut layer: BTreeMap<String, Expect> = BTreeMap::new();
        for (path, e, hardlink) in entries {
            let name = path.rsplit('/').next().unwrap();
            if name.starts_with(".wh.") {
                continue;
            }
            let e = match hardlink {
                Some(target) => layer
                    .get(&target)
                    .cloned()
                    .expect("hardlink to an earlier entry"),
                None => e,
            };
            if e.kind != "dir" {
                remove_tree(&mut paths, &path, true);
            }
            whited_out.remove(&path);
            layer.insert(path.clone(), e.clone());
            paths.insert(path, e);
        }
    }
    Model { paths, whited_out }
}

fn check_against_model(root: &Path, model: &Model, who: &str) {
    let mut errors = Vec::new();
    // Hardlinked files are hashed once per inode.
    let mut hashes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for (path, want) in &model.paths {
        let full = root.join(path);
        let md = match std::fs::symlink_metadata(&full) {
            Ok(md) => md,
            Err(e) => {
                errors.push(format!("{path}: {e}"));
                continue;
            }
        };
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "chardev"
        } else if ft.is_block_device() {
            "blockdev"
        } else {
            "file"
        };
        let data = match kind {
            "file" => {
                let key = (md.dev(), md.ino());
                let hash = hashes.entry(key).or_insert_with(|| file_hash(&full));
                format!("{} {hash}", md.size())
            }
            "symlink" => std::fs::read_link(&full)
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            _ => String::new(),
        };
        let got = Expect {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid().into(),
            gid: md.gid().into(),
            data,
        };
        if &got != want {
            errors.push(format!("{path}:\n    want {want:?}\n    got  {got:?}"));
        }
    }
    for path in &model.whited_out {
        if std::fs::symlink_metadata(root.join(path)).is_ok() {
            errors.push(format!("{path}: whited out but visible"));
        }
    }
    let snap = snapshot(root, Detail::Merged);
    for p in snap
        .keys()
        .filter(|p| p.rsplit('/').next().unwrap_or("").starts_with(".wh."))
    {
        errors.push(format!("{p}: whiteout marker visible"));
    }
    assert!(
        errors.is_empty(),
        "{who} does not match the model:\n{}",
        errors.join("\n")
    );
}

/// Unpacks `name`, mounts it both ways, checks both against the model and each other, runs
/// `extra` on the tested mount, and finally checks that no lower layer changed.
fn check_fixture(name: &str, extra: impl Fn(&Path, &Model)) {
    let layout = fixture(name);
    let tars = layer_tars(&layout);
    let model = model(&tars);
    let scratch = common::Scratch::new();
    let side = |which: Impl, dir: &str| {
        let base = scratch.sub(dir);
        let lowers: Vec<PathBuf> = tars
            .iter()
            .enumerate()
            .rev()
            .map(|(i, t)| {
                let d = base.join(format!("layer{i}"));
                std::fs::create_dir_all(&d).unwrap();
                unpack(t, &d);
                if which == Impl::Kernel {
                    convert_to_overlay_format(&d);
                }
                d
            })
            .collect();
        let mk = |n: &str| {
            let p = base.join(n);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        Side {
            which,
            lowers,
            upper: mk("upper"),
            work: mk("work"),
            mnt: mk("mnt"),
            options: "",
        }
    };
    let kernel = side(Impl::Kernel, "kernel");
    let nestfs = side(Impl::Nestfs, "nestfs");
    let lowers_before: Vec<_> = nestfs
        .lowers
        .iter()
        .map(|l| (l.clone(), snapshot(l, Detail::Exact)))
        .collect();
    {
        let k = kernel.mount();
        let n = nestfs.mount();
        check_against_model(k.root(), &model, "kernel overlayfs (model check)");
        check_against_model(n.root(), &model, "nestfs-overlay");
        extra(n.root(), &model);
        let ks = snapshot(k.root(), Detail::Merged);
        let ns = snapshot(n.root(), Detail::Merged);
        if let Some(d) = diff("kernel", &ks, "nestfs", &ns) {
            panic!("{name}: merged trees differ:\n{d}");
        }
    }
    for (dir, before) in lowers_before {
        if let Some(d) = diff("before", &before, "after", &snapshot(&dir, Detail::Exact)) {
            panic!("{name}: lower {} changed:\n{d}", dir.display());
        }
    }
}

macro_rules! fixture_tests {
    ($($test:ident: $name:expr;)*) => {$(
        #[test]
        fn $test() {
            require_env!();
            check_fixture($name, |_, _| {});
        }
    )*};
}

fixture_tests! {
    four_mb_image: "4mb-image";
    generated: "generated";
    empty: "empty";
    garden_busybox: "garden-busybox";
    four_layers: "four-layers";
    non_writable_file: "non-writable-file";
    non_writable_folder: "non-writable-folder";
    opq_whiteouts_busybox: "opq-whiteouts-busybox";
    tar_layer: "tar-layer";
}

#[test]
fn garden_rootfs_32_layers() {
    require_env!();
    assert_eq!(layer_tars(&fixture("garden-rootfs")).len(), 32);
    check_fixture("garden-rootfs", |_, m| assert!(!m.paths.is_empty()));
}

#[test]
fn hardlink_fixture_keeps_links() {
    require_env!();
    check_fixture("hardlink", |root, _| {
        let ino = |p: &str| std::fs::symlink_metadata(root.join(p)).expect(p).ino();
        let nlink = |p: &str| std::fs::symlink_metadata(root.join(p)).expect(p).nlink();
        assert_eq!(
            ino("file"),
            ino("first/second/file-link"),
            "file and its hardlink"
        );
        assert_eq!(
            ino("file-link2"),
            ino("first/second/file2"),
            "file-link2 and its hardlink"
        );
        assert_eq!(nlink("file"), 2);
        assert_eq!(nlink("first/second/file2"), 2);
    });
}

/// The busybox image is a usable root: a program runs from the mount.
#[test]
fn busybox_runs_from_the_mount() {
    require_env!();
    check_fixture("busybox", |root, m| {
        assert!(
            m.paths.contains_key("bin/busybox"),
            "fixture has bin/busybox"
        );
        let out = std::process::Command::new("chroot")
            .arg(root)
            .args(["/bin/busybox", "echo", "hello from the mount"])
            .output()
            .expect("run chroot");
        assert!(out.status.success(), "chroot busybox: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello from the mount\n"
        );
    });
}

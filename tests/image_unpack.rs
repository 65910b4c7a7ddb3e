//! Hostile layers: the unpacker never writes outside its destination, and bombs stop at their
//! bounds. Tars are built here with raw headers, so names a well-behaved tool refuses can be used.

use std::io::Write;
use std::path::Path;

use nestfs::image::ImageError;
use nestfs::unpack::{UnpackOptions, unpack};

fn opts() -> UnpackOptions {
    UnpackOptions {
        max_bytes: 1 << 30,
        max_entries: 100_000,
        privileged: false,
        skip_estargz_entries: false,
    }
}

/// A tar entry with a raw name (and link name), bypassing the tar crate's path checks.
fn raw(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

struct Case {
    _dir: tempfile::TempDir,
    dest: std::path::PathBuf,
    canary: std::path::PathBuf,
}

fn case() -> Case {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("a/b/dest");
    let canary = dir.path().join("canary");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::create_dir_all(&canary).unwrap();
    std::fs::write(canary.join("passwd"), "canary").unwrap();
    Case {
        _dir: dir,
        dest,
        canary,
    }
}

fn canary_untouched(c: &Case) {
    let names: Vec<_> = std::fs::read_dir(&c.canary)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("passwd")],
        "something written next to the canary"
    );
    assert_eq!(
        std::fs::read_to_string(c.canary.join("passwd")).unwrap(),
        "canary"
    );
    assert!(!c.dest.parent().unwrap().join("escaped").exists());
}

#[test]
fn dotdot_and_absolute_names_stay_inside() {
    let c = case();
    let mut b = tar::Builder::new(Vec::new());
    raw(&mut b, tar::EntryType::Regular, "../escaped", "", b"x");
    raw(
        &mut b,
        tar::EntryType::Regular,
        "../../../canary/passwd",
        "",
        b"pwned",
    );
    raw(
        &mut b,
        tar::EntryType::Regular,
        &format!("{}/new", c.canary.display()),
        "",
        b"pwned",
    );
    raw(&mut b, tar::EntryType::Regular, "ok", "", b"fine");
    let _ = unpack(&b.into_inner().unwrap()[..], &c.dest, &opts());
    canary_untouched(&c);
}

#[test]
fn writes_through_a_symlink_to_outside_are_refused() {
    let c = case();
    let mut b = tar::Builder::new(Vec::new());
    raw(
        &mut b,
        tar::EntryType::Symlink,
        "link",
        c.canary.to_str().unwrap(),
        b"",
    );
    raw(&mut b, tar::EntryType::Regular, "link/passwd", "", b"pwned");
    raw(&mut b, tar::EntryType::Regular, "link/new", "", b"pwned");
    raw(
        &mut b,
        tar::EntryType::Symlink,
        "rel",
        "../../../canary",
        b"",
    );
    raw(&mut b, tar::EntryType::Regular, "rel/new2", "", b"pwned");
    let r = unpack(&b.into_inner().unwrap()[..], &c.dest, &opts());
    assert!(
        r.is_err(),
        "a write through an escaping symlink must fail the layer"
    );
    canary_untouched(&c);
}

#[test]
fn hardlinks_to_outside_are_refused() {
    let c = case();
    let mut b = tar::Builder::new(Vec::new());
    raw(
        &mut b,
        tar::EntryType::Link,
        "h",
        "../../../canary/passwd",
        b"",
    );
    let r = unpack(&b.into_inner().unwrap()[..], &c.dest, &opts());
    assert!(r.is_err() || !c.dest.join("h").exists());
    if c.dest.join("h").exists() {
        panic!("hardlink to outside created");
    }
    canary_untouched(&c);
}

#[test]
fn whiteouts_are_kept_as_files_and_hardlinks_inside_work() {
    let c = case();
    let mut b = tar::Builder::new(Vec::new());
    raw(&mut b, tar::EntryType::Regular, "etc/.wh.passwd", "", b"");
    raw(&mut b, tar::EntryType::Regular, "var/.wh..wh..opq", "", b"");
    raw(&mut b, tar::EntryType::Regular, "bin/a", "", b"busybox");
    raw(&mut b, tar::EntryType::Link, "bin/b", "bin/a", b"");
    let st = unpack(&b.into_inner().unwrap()[..], &c.dest, &opts()).unwrap();
    assert_eq!(st.entries, 4);
    assert!(c.dest.join("etc/.wh.passwd").is_file());
    assert!(c.dest.join("var/.wh..wh..opq").is_file());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(c.dest.join("bin/b")).unwrap().ino(),
        std::fs::metadata(c.dest.join("bin/a")).unwrap().ino()
    );
    assert!(st.bytes >= 4096, "allocated bytes counted: {st:?}");
}

#[test]
fn gzip_bomb_stops_at_the_byte_bound() {
    let c = case();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_path("zeros").unwrap();
    h.set_size(64 << 20);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, std::io::repeat(0).take_bytes(64 << 20))
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&b.into_inner().unwrap()).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 4 << 20, "the bomb is small compressed");
    let o = UnpackOptions {
        max_bytes: 1 << 20,
        ..opts()
    };
    let r = unpack(
        nestfs::unpack::decompressor(&bomb[..]).unwrap(),
        &c.dest,
        &o,
    );
    assert!(matches!(r, Err(ImageError::TooLarge { .. })), "{r:?}");
    assert!(
        dir_bytes(&c.dest) < 2 << 20,
        "the bound stopped it before writing"
    );
}

#[test]
fn entry_bomb_stops_at_the_entry_bound() {
    let c = case();
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..200 {
        raw(&mut b, tar::EntryType::Regular, &format!("f{i}"), "", b"");
    }
    let o = UnpackOptions {
        max_entries: 100,
        ..opts()
    };
    let r = unpack(&b.into_inner().unwrap()[..], &c.dest, &o);
    assert!(
        matches!(r, Err(ImageError::TooManyEntries { limit: 100 })),
        "{r:?}"
    );
    assert!(std::fs::read_dir(&c.dest).unwrap().count() <= 100);
}

fn dir_bytes(p: &Path) -> u64 {
    nestfs_fuse::allocated_bytes(p).unwrap()
}

trait TakeBytes: std::io::Read + Sized {
    fn take_bytes(self, n: u64) -> std::io::Take<Self> {
        std::io::Read::take(self, n)
    }
}
impl<R: std::io::Read> TakeBytes for R {}

#[test]
fn symlinked_directories_inside_the_layer_are_followed() {
    let c = case();
    let mut b = tar::Builder::new(Vec::new());
    raw(&mut b, tar::EntryType::Directory, "usr/lib/", "", b"");
    raw(&mut b, tar::EntryType::Symlink, "lib", "usr/lib", b"");
    raw(&mut b, tar::EntryType::Regular, "lib/x", "", b"through lib");
    raw(&mut b, tar::EntryType::Link, "lib/h", "lib/x", b"");
    raw(&mut b, tar::EntryType::Symlink, "usr/lib/up", "../..", b"");
    raw(
        &mut b,
        tar::EntryType::Regular,
        "usr/lib/up/top",
        "",
        b"at the root",
    );
    unpack(&b.into_inner().unwrap()[..], &c.dest, &opts()).unwrap();
    let x = c.dest.join("usr/lib/x");
    assert_eq!(std::fs::read_to_string(&x).unwrap(), "through lib");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(c.dest.join("usr/lib/h")).unwrap().ino(),
        std::fs::metadata(&x).unwrap().ino(),
        "the hard link shares the file"
    );
    assert_eq!(
        std::fs::read_to_string(c.dest.join("top")).unwrap(),
        "at the root"
    );
    canary_untouched(&c);
}

#[test]
fn a_file_that_replaces_a_symlinked_directory_is_not_walked_through() {
    let c = case();
    let mut b = tar::Builder::new(Vec::new());
    raw(&mut b, tar::EntryType::Directory, "real/", "", b"");
    raw(&mut b, tar::EntryType::Symlink, "s", "real", b"");
    raw(&mut b, tar::EntryType::Regular, "s/a", "", b"a");
    raw(&mut b, tar::EntryType::Regular, "s", "", b"now a file");
    raw(&mut b, tar::EntryType::Regular, "s/b", "", b"b");
    let r = unpack(&b.into_inner().unwrap()[..], &c.dest, &opts());
    assert!(r.is_err(), "s/b unpacked beneath a regular file");
    assert_eq!(std::fs::read_to_string(c.dest.join("real/a")).unwrap(), "a");
    assert!(
        !c.dest.join("real/b").exists(),
        "s/b went through the symlink s no longer is"
    );
    assert_eq!(
        std::fs::read_to_string(c.dest.join("s")).unwrap(),
        "now a file"
    );
}

/// Directories keep the mtime their headers give, also those whose entries were unpacked after
/// them (as Docker and GrootFS keep them), and those that end up empty.
#[test]
fn directories_keep_their_layer_mtimes() {
    use std::os::unix::fs::MetadataExt;
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, name: &str, mtime: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(mtime);
        h.set_size(0);
        b.append_data(&mut h, name, std::io::empty()).unwrap();
    };
    dir(&mut b, "full/", 1_000_000_000);
    dir(&mut b, "full/sub/", 1_100_000_000);
    dir(&mut b, "empty/", 1_200_000_000);
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_mtime(1_300_000_000);
    h.set_size(2);
    b.append_data(&mut h, "full/sub/file", &b"hi"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let c = case();
    unpack(&tar[..], &c.dest, &opts()).unwrap();
    let mtime = |p: &str| std::fs::metadata(c.dest.join(p)).unwrap().mtime();
    assert_eq!(mtime("full"), 1_000_000_000);
    assert_eq!(mtime("full/sub"), 1_100_000_000);
    assert_eq!(mtime("empty"), 1_200_000_000);
    assert_eq!(mtime("full/sub/file"), 1_300_000_000);
}

#[test]
fn estargz_entries_are_left_out_only_at_the_root_and_when_asked() {
    let mut b = tar::Builder::new(Vec::new());
    for name in [
        ".no.prefetch.landmark",
        "etc/",
        "etc/stargz.index.json",
        "./stargz.index.json",
        "kept",
    ] {
        let kind = if name.ends_with('/') {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        };
        raw(&mut b, kind, name, "", b"");
    }
    let tar = b.into_inner().unwrap();
    let names = |skip: bool| {
        let c = case();
        let o = UnpackOptions {
            skip_estargz_entries: skip,
            ..opts()
        };
        unpack(&tar[..], &c.dest, &o).unwrap();
        let mut n: Vec<String> = walkdir(&c.dest);
        n.sort();
        n
    };
    assert_eq!(names(true), ["etc", "etc/stargz.index.json", "kept"]);
    assert_eq!(
        names(false),
        [
            ".no.prefetch.landmark",
            "etc",
            "etc/stargz.index.json",
            "kept",
            "stargz.index.json"
        ]
    );
}

/// Paths under `root`, relative to it.
fn walkdir(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            }
        }
    }
    out
}

/// Files without data (empty, all hole, or empty in the header but not by its PAX size) come
/// out as Debian's tar makes them: owner, set-id bits, xattrs, size, holes, mtime, contents.
#[test]
fn files_without_data_unpack_as_debian_tar_makes_them() {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root (chown to other owners)");
        return;
    }
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind, mode, uid, gid| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_500_000_000);
        h.set_size(0);
        h
    };
    let mut h = header(tar::EntryType::Regular, 0o4755, 1000, 1001);
    b.append_data(&mut h, "setuid", std::io::empty()).unwrap();
    b.append_pax_extensions([("SCHILY.xattr.user.note", &b"kept"[..])])
        .unwrap();
    let mut h = header(tar::EntryType::Regular, 0o600, 0, 0);
    b.append_data(&mut h, "noted", std::io::empty()).unwrap();
    // Given twice: the second, empty one is the file.
    let mut h = header(tar::EntryType::Regular, 0o644, 0, 0);
    h.set_size(3);
    b.append_data(&mut h, "twice", &b"old"[..]).unwrap();
    let mut h = header(tar::EntryType::Regular, 0o640, 0, 0);
    b.append_data(&mut h, "twice", std::io::empty()).unwrap();
    // All hole: one empty block at the end of 1 MiB.
    let mut h = header(tar::EntryType::GNUSparse, 0o644, 0, 0);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.set_real_size(1 << 20);
    gnu.sparse[0].set_offset(1 << 20);
    gnu.sparse[0].set_length(0);
    b.append_data(&mut h, "hole", std::io::empty()).unwrap();
    // Empty by its header, five bytes by its PAX size: readers that disagree differ here.
    b.append_pax_extensions([("size", &b"5"[..])]).unwrap();
    let mut h = header(tar::EntryType::Regular, 0o644, 0, 0);
    h.set_path("paxsize").unwrap();
    h.set_cksum();
    let raw = b.get_mut();
    raw.extend_from_slice(h.as_bytes());
    raw.extend_from_slice(b"hello");
    raw.resize(raw.len() + 512 - 5, 0);
    let tar = b.into_inner().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
    std::fs::create_dir_all(&ours).unwrap();
    std::fs::create_dir_all(&theirs).unwrap();
    let privileged = UnpackOptions {
        privileged: true,
        ..opts()
    };
    unpack(&tar[..], &ours, &privileged).unwrap();
    let archive = dir.path().join("layer.tar");
    std::fs::write(&archive, &tar).unwrap();
    let out = std::process::Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--same-owner",
            "--numeric-owner",
            "-xpf",
        ])
        .arg(&archive)
        .arg("-C")
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for name in ["setuid", "noted", "twice", "hole", "paxsize"] {
        let (a, b) = (ours.join(name), theirs.join(name));
        let (ma, mb) = (
            std::fs::metadata(&a).unwrap(),
            std::fs::metadata(&b).unwrap(),
        );
        let facts =
            |m: &std::fs::Metadata| (m.mode(), m.uid(), m.gid(), m.len(), m.mtime(), m.blocks());
        assert_eq!(facts(&ma), facts(&mb), "{name}");
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{name}"
        );
        let note = |p: &Path| {
            let mut buf = [0u8; 16];
            rustix::fs::getxattr(p, "user.note", &mut buf)
                .map(|n| buf[..n].to_vec())
                .ok()
        };
        assert_eq!(note(&a), note(&b), "{name}");
    }
    assert_eq!(
        std::fs::metadata(ours.join("setuid")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(std::fs::read(ours.join("paxsize")).unwrap(), b"hello");
    let mut buf = [0u8; 16];
    let n = rustix::fs::getxattr(ours.join("noted"), "user.note", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"kept");
    assert_eq!(std::fs::metadata(ours.join("hole")).unwrap().blocks(), 0);
}

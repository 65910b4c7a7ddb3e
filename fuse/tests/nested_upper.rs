//! Upper dirs where the overlayfs form of whiteouts and xattrs is refused: a daemon that is root
//! only in a user namespace (no `trusted.*` xattrs, no RENAME_WHITEOUT), an upper dir on kernel
//! overlayfs (no 0/0 devices, no RENAME_WHITEOUT) and one on another nestfs mount (no 0/0
//! devices, its own `*.nestfs.*` xattr names). Each runs the same changes (a copy-up, an rm and
//! an mv of lower files, an rm -r of a lower dir and a mkdir of its name), proves the outcome
//! and the merged tree are kernel overlayfs's on plain dirs, looks at what the upper dir holds,
//! and remounts to check that the daemon reads back what it wrote.

// Tests call libc directly, for setup and for the raw results they check.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

#[allow(dead_code)]
mod common;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Scratch;
use common::layers::{Format, Layer, cpath};
use common::mounts::{KernelOverlay, Mounted, NestfsOverlay, overlay_bin};
use common::ops::{self, Log};
use common::snapshot::{Detail, Snapshot, diff, snapshot};

/// The lower layer every case starts from.
fn layer() -> Layer {
    Layer::new()
        .file("f", "f\n")
        .file("g", "g\n")
        .file("e", "e\n")
        .file("d/x", "x\n")
        .file("d/sub/y", "y\n")
}

/// The changes every case makes, with their outcomes.
fn changes(root: &Path) -> Log {
    let mut log = Log::default();
    log.rec("append f", ops::append(root, "f", b"more\n"));
    log.rec("unlink g", ops::unlink(root, "g"));
    log.rec("rename e h", ops::rename(root, "e", "h", 0));
    log.rec(
        "rm -r d",
        std::fs::remove_dir_all(root.join("d")).map(|()| String::new()),
    );
    log.rec("mkdir d", ops::mkdir(root, "d", 0o755));
    log.rec("readdir d", ops::readdir(root, "d"));
    log
}

/// One overlay's lower, upper, work and mount dirs beneath `base`, the lower written.
struct Dirs {
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

impl Dirs {
    fn new(base: &Path) -> Dirs {
        let mk = |name: &str| {
            let p = base.join(name);
            std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
            p
        };
        let d = Dirs {
            lower: mk("lower"),
            upper: mk("upper"),
            work: mk("work"),
            mnt: mk("mnt"),
        };
        layer().write(&d.lower, Format::Overlay);
        d
    }

    fn mount(&self) -> NestfsOverlay {
        NestfsOverlay::mount(
            std::slice::from_ref(&self.lower),
            Some((&self.upper, &self.work)),
            &self.mnt,
            "",
        )
    }
}

/// The changes' outcomes and the tree they leave on kernel overlayfs over plain dirs.
fn reference(scratch: &Scratch) -> (Vec<String>, Snapshot) {
    let d = Dirs::new(&scratch.sub("reference"));
    let _m = KernelOverlay::mount(
        std::slice::from_ref(&d.lower),
        Some((&d.upper, &d.work)),
        &d.mnt,
    );
    let log = changes(&d.mnt);
    (log.lines, snapshot(&d.mnt, Detail::Merged))
}

fn assert_same_tree(what: &str, want: &Snapshot, got: &Snapshot) {
    if let Some(d) = diff("kernel", want, what, got) {
        panic!("{what} differs from kernel overlayfs:\n{d}");
    }
}

/// Runs the changes on a nestfs-overlay over `dirs` and checks them against kernel overlayfs,
/// then the OCI whiteouts the upper dir must hold, then the view after a remount.
fn check_oci_upper(scratch: &Scratch, dirs: &Dirs) {
    let (want_log, want_tree) = reference(scratch);
    let ino = {
        let m = dirs.mount();
        let log = changes(m.root());
        assert_eq!(log.lines, want_log, "outcomes differ from kernel overlayfs");
        assert_same_tree(
            "nestfs-overlay",
            &want_tree,
            &snapshot(m.root(), Detail::Merged),
        );
        ops::ino(m.root(), "h")
    };
    for wh in [".wh.g", ".wh.e", "d/.wh..wh..opq"] {
        let md = std::fs::symlink_metadata(dirs.upper.join(wh))
            .unwrap_or_else(|e| panic!("upper dir has no {wh}: {e}"));
        assert!(md.is_file(), "{wh} is not an OCI marker file: {md:?}");
    }
    for gone in ["g", "e"] {
        assert!(
            std::fs::symlink_metadata(dirs.upper.join(gone)).is_err(),
            "upper dir holds {gone} besides its OCI whiteout"
        );
    }
    let m = dirs.mount();
    assert_same_tree("remounted", &want_tree, &snapshot(m.root(), Detail::Merged));
    assert_eq!(ops::ino(m.root(), "h"), ino, "copied-up h lost its origin");
}

/// The raw value of xattr `name` of `path`, None if it has none.
fn raw_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let (c, n) = (cpath(path), CString::new(name).unwrap());
    let mut buf = vec![0u8; 4096];
    let len =
        unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

/// An upper dir on kernel overlayfs (the nested default: a store on a container's root).
#[test]
fn upper_on_the_kernels_union_mount_takes_oci_whiteouts() {
    require_env!();
    let s = Scratch::new();
    let outer = s.sub("outer");
    let _m = KernelOverlay::mount(&[s.sub("L")], Some((&s.sub("U"), &s.sub("W"))), &outer);
    check_oci_upper(&s, &Dirs::new(&outer));
}

/// A work dir keeps what the probe found on its filesystem; copied with its upper dir onto
/// kernel overlayfs, it must not carry that over: the daemon probes again and writes OCI
/// whiteouts there.
#[test]
fn a_work_dir_copied_onto_the_kernels_union_mount_probes_again() {
    require_env!();
    let s = Scratch::new();
    let first = Dirs::new(&s.sub("first"));
    drop(first.mount());
    let record = std::fs::read_to_string(first.work.join("nestfs-probe"))
        .expect("the work dir keeps the probe's result");
    assert!(record.contains("overlay opaque="), "{record}");
    let outer = s.sub("outer");
    let _m = KernelOverlay::mount(&[s.sub("L")], Some((&s.sub("U"), &s.sub("W"))), &outer);
    let status = Command::new("cp")
        .args(["-a", "--"])
        .arg(s.sub("first"))
        .arg(&outer)
        .status()
        .expect("run cp");
    assert!(status.success(), "cp -a of the dirs failed");
    let moved = outer.join("first");
    let dirs = Dirs {
        lower: moved.join("lower"),
        upper: moved.join("upper"),
        work: moved.join("work"),
        mnt: moved.join("mnt"),
    };
    check_oci_upper(&s, &dirs);
}

/// nestfs in nestfs: the inner daemon's origins are the outer's user's xattrs, stored escaped
/// one level deeper, and read back (unescaped) after a remount.
#[test]
fn upper_on_nestfs_takes_oci_whiteouts_and_escaped_xattrs() {
    require_env!();
    let s = Scratch::new();
    let outer_upper = s.sub("U");
    let a = NestfsOverlay::mount(
        &[s.sub("L")],
        Some((&outer_upper, &s.sub("W"))),
        &s.sub("outer"),
        "",
    );
    let inner = Dirs::new(a.root());
    check_oci_upper(&s, &inner);
    let stored = raw_xattr(&outer_upper.join("upper/h"), "trusted.nestfs.nestfs.origin")
        .expect("the inner origin is stored escaped in the outer upper dir");
    assert_eq!(stored.len(), 8);
    let through = inner.upper.join("h");
    assert_eq!(
        raw_xattr(&through, "trusted.nestfs.origin"),
        Some(stored),
        "the outer mount shows the inner origin under its own name"
    );
    let listed = ops::listxattr(&inner.upper, "h").expect("listxattr");
    assert!(listed.contains("trusted.nestfs.origin"), "listed: {listed}");
    // The outer's own origin (on its copy-ups) stays hidden.
    assert_eq!(raw_xattr(&through, "trusted.nestfs.nestfs.origin"), None);
}

/// Three levels: each escapes the one above it, so the innermost origin lands on disk under
/// three `nestfs.` and is read back through both outer mounts.
#[test]
fn three_nestfs_levels_stack() {
    require_env!();
    let s = Scratch::new();
    let disk = s.sub("U");
    let a = NestfsOverlay::mount(&[s.sub("L")], Some((&disk, &s.sub("W"))), &s.sub("a"), "");
    let b_dirs = Dirs::new(a.root());
    let b = b_dirs.mount();
    let c_dirs = Dirs::new(b.root());
    let ino = {
        let c = c_dirs.mount();
        assert_eq!(ops::append(c.root(), "f", b"more\n").unwrap(), "5");
        ops::ino(c.root(), "f")
    };
    // C's upper dir is new in B's upper dir, which is new in A's.
    let on_disk = disk.join("upper/upper/f");
    assert_eq!(
        raw_xattr(&on_disk, "trusted.nestfs.nestfs.nestfs.origin").map(|v| v.len()),
        Some(8),
        "xattrs of {}: {:?}",
        on_disk.display(),
        common::snapshot::xattrs(&on_disk)
    );
    let c = c_dirs.mount();
    assert_eq!(std::fs::read(c.root().join("f")).unwrap(), b"f\nmore\n");
    assert_eq!(
        ops::ino(c.root(), "f"),
        ino,
        "f lost its origin at the third level"
    );
}

/// Runs the changes as root in a new user, mount and pid namespace, in `base` (lower, upper,
/// work and mnt dirs), with `mount` (a command taking the mount point) for each mount, and
/// returns what they showed after a remount. The pid namespace ends every daemon started in it
/// when the script exits, so nothing stays mounted even if it fails halfway.
fn changes_in_user_namespace(mount: &str, base: &Path) -> String {
    let script = r#"mount_cmd=$1
        cd "$2"
        mnt() { $mount_cmd mnt; }
        mnt
        echo more >> mnt/f
        rm mnt/g
        mv mnt/e mnt/h
        rm -r mnt/d
        mkdir mnt/d
        umount mnt
        mnt
        echo "root: $(ls -A mnt | tr '\n' ' ')"
        echo "d: $(ls -A mnt/d)"
        cat mnt/f mnt/h
        umount mnt"#;
    let out = Command::new("timeout")
        .args(["120", "unshare", "-Urmpf", "--mount-proc", "--kill-child"])
        .args(["sh", "-ec", script, "sh", mount])
        .arg(base)
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{mount}: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Root in a user namespace (rootless podman's mount program, `unshare -Urm`) cannot write
/// `trusted.*` xattrs nor rename with RENAME_WHITEOUT: copy-ups record origins and opaque
/// dirs in `user.*`, as kernel overlayfs's `userxattr` does, and renames of lower files still
/// leave whiteouts.
#[test]
fn root_in_a_user_namespace_writes_user_xattrs() {
    require_env!();
    let s = Scratch::new();
    let want = "root: d f h \nd: \nf\nmore\ne\n";
    let opts = "-o lowerdir=lower,upperdir=upper,workdir=work";
    let kernel = Dirs::new(&s.sub("kernel"));
    let kernel_mount = format!("mount -t overlay overlay {opts},userxattr");
    assert_eq!(
        changes_in_user_namespace(&kernel_mount, kernel.mnt.parent().unwrap()),
        want
    );
    let dirs = Dirs::new(&s.sub("nestfs"));
    let nestfs_mount = format!("{} {opts}", overlay_bin().display());
    assert_eq!(
        changes_in_user_namespace(&nestfs_mount, dirs.mnt.parent().unwrap()),
        want
    );
    let f = dirs.upper.join("f");
    assert_eq!(
        raw_xattr(&f, "user.nestfs.origin").map(|v| v.len()),
        Some(8)
    );
    assert_eq!(
        raw_xattr(&dirs.upper.join("d"), "user.overlay.opaque"),
        Some(b"y".to_vec())
    );
    for p in [&f, &dirs.upper.join("d")] {
        let names = common::snapshot::xattrs(p);
        assert!(
            names.iter().all(|(k, _)| !k.starts_with("trusted.")),
            "{}: {names:?}",
            p.display()
        );
    }
    // The same upper dir as kernel overlayfs leaves (overlay or OCI whiteouts alike).
    let shape = common::snapshot::upper_shape;
    assert_eq!(shape(&dirs.upper), shape(&kernel.upper));
}

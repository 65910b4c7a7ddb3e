//! Hostile layer content: symlinks aiming outside the layers (absolute, `../../..`, relative
//! escapes), symlinks in lower layers where an upper layer has a directory, fifos and device nodes,
//! and hardlinks in odd places. Proves that whatever the calls, the daemon never touches anything
//! outside its layer/upper/work dirs (canary files next to the layers stay byte-for-byte and
//! xattr-for-xattr unchanged, ctime included), that it never hangs on a fifo, that device nodes give
//! no more access than kernel overlayfs gives, and that outcomes match kernel overlayfs.

// Tests call libc directly, for setup and for the raw results they check.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

#[allow(dead_code)]
mod common;

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use common::layers::{Format, Layer, cpath, set_xattr};
use common::ops::{self, Log, Res};
use common::pair::Pair;
use common::snapshot::{Detail, Snapshot, diff, snapshot};

/// Long enough for any healthy daemon under a loaded CI box; only a stuck one exceeds it.
const HANG: Duration = Duration::from_secs(20);

const CANARY: &str = "outside-canary-dir";

/// A scratch dir with a canary dir next to where the sides' layers will be built.
struct Canary {
    dir: PathBuf,
    before: Snapshot,
}

impl Canary {
    fn plant(scratch: &common::Scratch) -> Canary {
        let dir = scratch.sub(CANARY);
        std::fs::write(dir.join("passwd"), "canary:x:0:0\n").unwrap();
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/file"), "deep canary").unwrap();
        set_xattr(&dir.join("passwd"), "user.canary", b"1");
        Canary {
            before: snapshot(&dir, Detail::Exact),
            dir,
        }
    }

    fn assert_untouched(&self) {
        let after = snapshot(&self.dir, Detail::Exact);
        if let Some(d) = diff("before", &self.before, "after", &after) {
            panic!(
                "canary {} outside the layers changed:\n{d}",
                self.dir.display()
            );
        }
    }
}

/// Builds the layers and mounts them with nestfs alone (no kernel reference), recording the
/// lowers so the caller can prove them unchanged afterwards.
fn mount_solo(
    scratch: &common::Scratch,
    layers: &[Layer],
    format: Format,
) -> (
    common::mounts::Side,
    LowerGuard,
    common::mounts::NestfsOverlay,
) {
    let side = common::mounts::Side::build(
        &scratch.sub("solo"),
        common::mounts::Impl::Nestfs,
        layers,
        format,
    );
    let lowers = LowerGuard::record(&side.lowers);
    let m = common::mounts::NestfsOverlay::mount(
        &side.lowers,
        Some((side.upper.as_path(), side.work.as_path())),
        &side.mnt,
        "",
    );
    (side, lowers, m)
}

/// Exact snapshots of lower dirs, for tests that mount a single side without a `Pair`.
struct LowerGuard(Vec<(PathBuf, Snapshot)>);

impl LowerGuard {
    fn record(lowers: &[PathBuf]) -> Self {
        LowerGuard(
            lowers
                .iter()
                .map(|l| (l.clone(), snapshot(l, Detail::Exact)))
                .collect(),
        )
    }

    fn assert_unchanged(&self) {
        for (dir, before) in &self.0 {
            if let Some(d) = diff("before", before, "after", &snapshot(dir, Detail::Exact)) {
                panic!("lower layer {} changed:\n{d}", dir.display());
            }
        }
    }
}

/// Runs `f` on a helper thread; panics if it does not finish within `HANG` (the daemon is stuck).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(HANG) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no answer within {HANG:?}"),
        // The closure panicked: report its panic, not a hang.
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(e) => std::panic::resume_unwind(e),
            Ok(()) => unreachable!("{what}: worker ended without a result"),
        },
    }
}

/// Runs a differential case with a canary planted next to the layers; `layers` gets the canary's
/// absolute path so symlinks can aim at it.
fn hostile_case(
    format: Format,
    layers: impl Fn(&str) -> Vec<Layer>,
    script: impl Fn(&Path, &mut Log) + Sync,
) {
    let scratch = common::Scratch::new();
    let canary = Canary::plant(&scratch);
    let target = canary.dir.display().to_string();
    let pair = Pair::new_in(scratch, &layers(&target), format);
    pair.run(script);
    canary.assert_untouched();
    let _scratch = pair.finish();
    canary.assert_untouched();
}

fn escaping_symlinks(canary: &str) -> Vec<Layer> {
    vec![
        Layer::new()
            .symlink("etc", canary)
            .symlink("up", "../../..")
            .symlink("abs", &format!("{canary}/passwd"))
            .symlink("rel", &format!("../../{CANARY}/passwd"))
            .symlink("deep/x/rel", &format!("../../../../{CANARY}"))
            .file("deep/x/ok", "ok"),
        Layer::new().file("deep/x/lower", "lower"),
    ]
}

/// fchmodat(AT_SYMLINK_NOFOLLOW): acts on the link itself (usually refused), never the target.
fn chmod_nofollow(r: &Path, p: &str, mode: u32) -> Res {
    let c = cpath(&r.join(p));
    let rc = unsafe { libc::fchmodat(libc::AT_FDCWD, c.as_ptr(), mode, libc::AT_SYMLINK_NOFOLLOW) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(String::new())
    }
}

/// open(O_PATH|O_NOFOLLOW) + fstat: the type of the entry itself.
fn fstat_nofollow(r: &Path, p: &str) -> Res {
    let fd = ops::open(r, p, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.0, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(format!("type={:o}", st.st_mode & libc::S_IFMT))
}

fn symlink_entry_ops(r: &Path, log: &mut Log) {
    for p in ["etc", "up", "abs", "rel", "deep/x/rel"] {
        log.rec(format!("lstat {p}"), ops::stat(r, p));
        log.rec(format!("readlink {p}"), ops::readlink(r, p));
        log.rec(format!("O_PATH {p}"), fstat_nofollow(r, p));
        log.rec(format!("lchown {p}"), ops::lchown(r, p, 1234, 1234));
        log.rec(format!("chmod nofollow {p}"), chmod_nofollow(r, p, 0o600));
        log.rec(
            format!("trusted xattr {p}"),
            ops::setxattr(r, p, "trusted.t", b"x", 0),
        );
        log.rec(
            format!("user xattr {p}"),
            ops::setxattr(r, p, "user.t", b"x", 0),
        );
        log.rec(format!("list xattrs {p}"), ops::listxattr(r, p));
        log.rec(
            format!("remove xattr {p}"),
            ops::removexattr(r, p, "trusted.t"),
        );
        log.rec(format!("utimes {p}"), ops::utimes(r, p, 1_000_000_000));
        log.rec(format!("lstat after {p}"), ops::stat(r, p));
    }
    log.rec("link rel", ops::link(r, "rel", "rel.link"));
    log.rec("rename abs", ops::rename(r, "abs", "abs.moved", 0));
    log.rec(
        "exchange etc/rel",
        ops::rename(r, "etc", "rel", libc::RENAME_EXCHANGE),
    );
    log.rec("rename over etc", ops::rename(r, "deep/x/ok", "etc", 0));
    log.rec("unlink up", ops::unlink(r, "up"));
    log.rec("rmdir symlink", ops::rmdir(r, "deep/x/rel"));
    log.rec("unlink deep rel", ops::unlink(r, "deep/x/rel"));
    log.rec("readdir root", ops::readdir(r, ""));
    log.rec("readdir deep/x", ops::readdir(r, "deep/x"));
}

#[test]
fn symlink_entries_are_never_followed_overlay_format() {
    require_env!();
    hostile_case(Format::Overlay, escaping_symlinks, symlink_entry_ops);
}

#[test]
fn symlink_entries_are_never_followed_oci_format() {
    require_env!();
    hostile_case(Format::Oci, escaping_symlinks, symlink_entry_ops);
}

/// openat2(RESOLVE_IN_ROOT) from the mount root: how a container whose root is the mount
/// resolves paths. Absolute and `..` symlinks must stay inside the mount.
fn open_in_root(r: &Path, p: &str, flags: u64, mode: u64) -> io::Result<ops::Fd> {
    let root = ops::open(r, "", libc::O_PATH | libc::O_DIRECTORY, 0)?;
    // struct open_how { u64 flags; u64 mode; u64 resolve; } (libc's is non-exhaustive).
    let how: [u64; 3] = [flags | libc::O_CLOEXEC as u64, mode, libc::RESOLVE_IN_ROOT];
    let c = CString::new(p).unwrap();
    loop {
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.0,
                c.as_ptr(),
                &how,
                std::mem::size_of_val(&how),
            )
        };
        if rc >= 0 {
            return Ok(ops::Fd(rc as i32));
        }
        let e = io::Error::last_os_error();
        // A mount or rename anywhere on the system while `..` is resolved makes openat2 ask
        // for a retry (tests running in parallel mount all the time).
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
}

fn write_in_root(r: &Path, p: &str) -> Res {
    let fd = open_in_root(r, p, (libc::O_WRONLY | libc::O_CREAT) as u64, 0o644)?;
    let msg = b"written from inside";
    let n = unsafe { libc::write(fd.0, msg.as_ptr().cast(), msg.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n.to_string())
    }
}

#[test]
fn writes_through_escaping_symlinks_stay_in_the_mount() {
    require_env!();
    for format in [Format::Overlay, Format::Oci] {
        hostile_case(format, escaping_symlinks, |r: &Path, log: &mut Log| {
            log.rec("write etc/passwd", write_in_root(r, "etc/passwd"));
            log.rec("write abs", write_in_root(r, "abs"));
            log.rec("write rel", write_in_root(r, "rel"));
            log.rec("write up/escaped", write_in_root(r, "up/escaped"));
            log.rec(
                "write deep/x/rel/passwd",
                write_in_root(r, "deep/x/rel/passwd"),
            );
            log.rec("read up/escaped", ops::read(r, "escaped"));
            log.rec("readdir root", ops::readdir(r, ""));
        });
    }
}

/// A lower layer has a symlink (to the canary) where a higher layer has a directory: the merge
/// must stop at the symlink, so nothing behind it is listed, looked up, copied up or whited out.
fn symlink_under_dir(canary: &str) -> Vec<Layer> {
    vec![
        Layer::new()
            .file("cdir/new", "top")
            .file("a/b/c", "top c")
            .dir("a/b/sub"),
        Layer::new()
            .symlink("cdir", canary)
            .symlink("a", canary)
            .file("sub/passwd", "p"),
    ]
}

#[test]
fn lower_symlink_is_not_merged_under_a_dir() {
    require_env!();
    for format in [Format::Overlay, Format::Oci] {
        hostile_case(format, symlink_under_dir, |r: &Path, log: &mut Log| {
            log.rec("readdir cdir", ops::readdir(r, "cdir"));
            log.rec("stat cdir/passwd", ops::stat(r, "cdir/passwd"));
            log.rec("stat cdir/sub/file", ops::stat(r, "cdir/sub/file"));
            log.rec(
                "create cdir/passwd",
                ops::create(r, "cdir/passwd", libc::O_WRONLY | libc::O_EXCL, 0o600),
            );
            log.rec(
                "write cdir/passwd",
                ops::write_at(r, "cdir/passwd", 0, b"mine"),
            );
            log.rec("chmod cdir", ops::chmod(r, "cdir", 0o700));
            log.rec("xattr cdir", ops::setxattr(r, "cdir", "user.x", b"1", 0));
            log.rec("mkdir cdir/sub", ops::mkdir(r, "cdir/sub", 0o755));
            log.rec("unlink a/b/c", ops::unlink(r, "a/b/c"));
            log.rec("rmdir a/b/sub", ops::rmdir(r, "a/b/sub"));
            log.rec("rmdir a/b", ops::rmdir(r, "a/b"));
            log.rec("readdir a", ops::readdir(r, "a"));
            log.rec("rmdir a", ops::rmdir(r, "a"));
            log.rec("stat a", ops::stat(r, "a"));
            log.rec("rename cdir", ops::rename(r, "cdir/new", "cdir/passwd2", 0));
            log.rec("readdir root", ops::readdir(r, ""));
        });
    }
}

fn fifo_layers(_: &str) -> Vec<Layer> {
    vec![
        Layer::new()
            .fifo("fifo")
            .file("other", "other")
            .hardlink("fifo.link", "fifo"),
    ]
}

/// A reader blocked in open() of a lower fifo must not stall the daemon; changing the fifo's
/// attributes (a copy-up) must neither open it nor hang.
fn fifo_script(r: &Path, log: &mut Log) {
    let root = r.to_path_buf();
    let (tx, rx) = mpsc::channel();
    let reader = {
        let root = root.clone();
        std::thread::spawn(move || {
            let r = ops::open(&root, "fifo", libc::O_RDONLY, 0).map(|_| String::new());
            let _ = tx.send(r);
        })
    };
    let r2 = root.clone();
    log.rec(
        "stat other while a reader waits",
        within("stat", move || ops::stat(&r2, "other")),
    );
    let r2 = root.clone();
    log.rec(
        "read other while a reader waits",
        within("read", move || ops::read(&r2, "other")),
    );
    let r2 = root.clone();
    log.rec(
        "chmod fifo",
        within("chmod fifo", move || ops::chmod(&r2, "fifo", 0o600)),
    );
    let r2 = root.clone();
    log.rec(
        "stat fifo",
        within("stat fifo", move || ops::stat(&r2, "fifo")),
    );
    let r2 = root.clone();
    log.rec(
        "xattr fifo",
        within("xattr", move || {
            ops::setxattr(&r2, "fifo", "trusted.f", b"1", 0)
        }),
    );
    // Open the write end (non-blocking: fails with ENXIO if no reader is there) to release the
    // reader, whichever inode it ended up on.
    let mut released = false;
    for _ in 0..200 {
        if ops::open(&root, "fifo", libc::O_WRONLY | libc::O_NONBLOCK, 0).is_ok() {
            released = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    log.rec("writer met the reader", Ok(released.to_string()));
    let got = rx.recv_timeout(HANG).expect("fifo reader never returned");
    log.rec("reader open", got);
    reader.join().expect("reader thread");
    let r2 = root.clone();
    log.rec(
        "stat fifo.link",
        within("stat link", move || ops::stat(&r2, "fifo.link")),
    );
}

#[test]
fn lower_fifo_never_blocks_the_daemon() {
    require_env!();
    for format in [Format::Overlay, Format::Oci] {
        hostile_case(format, fifo_layers, fifo_script);
    }
}

fn device_layers(_: &str) -> Vec<Layer> {
    vec![
        Layer::new()
            .chardev("zero", 1, 5)
            .chardev("mem", 1, 1)
            .chardev("kmsg", 1, 11)
            .file("blk.note", "a block device entry follows"),
        Layer::new().chardev("full", 1, 7),
    ]
}

fn read_dev(r: &Path, p: &str) -> Res {
    let fd = ops::open(r, p, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
    let mut buf = [0xffu8; 16];
    let n = unsafe { libc::read(fd.0, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(format!("{:?}", &buf[..n as usize]))
}

/// Device nodes keep their type and number, and reading one through the overlay under test
/// succeeds only where it succeeds through kernel overlayfs, with the same bytes. (`/dev/mem` is
/// never read: only its metadata is compared.)
#[test]
fn device_nodes_grant_no_more_than_kernel() {
    require_env!();
    for format in [Format::Overlay, Format::Oci] {
        let scratch = common::Scratch::new();
        let canary = Canary::plant(&scratch);
        let pair = Pair::new_in(scratch, &device_layers(""), format);
        pair.run(|r: &Path, log: &mut Log| {
            for p in ["zero", "mem", "kmsg", "full"] {
                log.rec(format!("stat {p}"), ops::stat(r, p));
            }
            log.rec("chown zero (copy-up)", ops::lchown(r, "zero", 0, 5));
            log.rec("stat zero after", ops::stat(r, "zero"));
            log.rec(
                "mknod",
                ops::mknod(r, "null2", libc::S_IFCHR | 0o666, libc::makedev(1, 3)),
            );
        });
        for p in ["zero", "full", "null2"] {
            let k = read_dev(pair.kroot(), p);
            let n = read_dev(pair.nroot(), p);
            if let Ok(nv) = &n {
                match &k {
                    Ok(kv) => assert_eq!(kv, nv, "reading {p}: different bytes"),
                    Err(ke) => {
                        panic!("reading {p}: nestfs gave {nv} where the kernel refused ({ke})")
                    }
                }
            }
        }
        let _scratch = pair.finish();
        canary.assert_untouched();
    }
}

fn odd_hardlinks(_: &str) -> Vec<Layer> {
    vec![
        Layer::new().whiteout("secret").file("pub/new", "n"),
        Layer::new()
            .file("secret/shadow", "root:hash")
            .mode(0o4755)
            .hardlink("pub/shadow.link", "secret/shadow")
            .hardlink("pub/again", "secret/shadow")
            .fifo("fifo")
            .hardlink("pub/fifo.link", "fifo")
            .symlink("sym", "/etc/shadow")
            .hardlink("pub/sym.link", "sym")
            .file("deep/a/b/c/d", "deep")
            .hardlink("d.link", "deep/a/b/c/d"),
    ]
}

#[test]
fn hardlinks_in_odd_places() {
    require_env!();
    for format in [Format::Overlay, Format::Oci] {
        hostile_case(format, odd_hardlinks, |r: &Path, log: &mut Log| {
            for p in [
                "pub/shadow.link",
                "pub/again",
                "pub/fifo.link",
                "pub/sym.link",
                "d.link",
                "secret",
            ] {
                log.rec(format!("stat {p}"), ops::stat(r, p));
            }
            log.rec("write shadow.link", ops::append(r, "pub/shadow.link", b"x"));
            log.rec("read again", ops::read(r, "pub/again"));
            log.rec("chmod fifo.link", ops::chmod(r, "pub/fifo.link", 0o600));
            log.rec("lchown sym.link", ops::lchown(r, "pub/sym.link", 9, 9));
            log.rec("readlink sym.link", ops::readlink(r, "pub/sym.link"));
            log.rec("link d.link into pub", ops::link(r, "d.link", "pub/d"));
            log.rec("truncate pub/d", ops::truncate(r, "pub/d", 1));
            log.rec("read deep d", ops::read(r, "deep/a/b/c/d"));
            log.rec("mkdir secret", ops::mkdir(r, "secret", 0o700));
            log.rec("readdir secret", ops::readdir(r, "secret"));
            log.rec("readdir pub", ops::readdir(r, "pub"));
        });
    }
}

/// After all of the above the daemon must still be alive: a crash on hostile input is a failure
/// even when the kernel's answers were matched by luck.
#[test]
fn daemon_survives_hostile_tree_walk() {
    require_env!();
    let scratch = common::Scratch::new();
    let canary = Canary::plant(&scratch);
    let target = canary.dir.display().to_string();
    let mut layers = escaping_symlinks(&target);
    layers.extend(fifo_layers(""));
    layers.extend(device_layers(""));
    let (side, lowers, mut m) = mount_solo(&scratch, &layers, Format::Oci);
    let root = side.mnt.clone();
    let snap = within("walk", move || snapshot(&root, Detail::Merged));
    assert!(
        snap.contains_key("etc") && snap.contains_key("fifo"),
        "walk saw {snap:?}"
    );
    assert!(m.alive(), "daemon died while walking hostile layers");
    drop(m);
    canary.assert_untouched();
    lowers.assert_unchanged();
}

/// Every path under `root` with its lstat result, xattr names and (for files) content; errors are
/// recorded, not fatal: refusing odd entries is fine, serving what lies outside is not.
fn tolerant_walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let md = std::fs::symlink_metadata(&path);
            let xattrs = ops::listxattr(root, &rel);
            let content = match &md {
                Ok(m) if m.is_file() => std::fs::read(&path)
                    .map(|d| String::from_utf8_lossy(&d).into_owned())
                    .unwrap_or_default(),
                _ => String::new(),
            };
            if md.as_ref().is_ok_and(|m| m.is_dir()) {
                stack.push(path.clone());
            }
            out.push(format!(
                "{rel}: {:?} {xattrs:?} {content:?}",
                md.map(|m| m.file_type())
            ));
        }
    }
    out
}

/// Layers carrying overlayfs's own metadata xattrs aimed outside (redirects, origins, metacopy):
/// whatever the overlay makes of them, it must not serve or change anything outside its dirs,
/// must keep the `trusted.overlay.*` names hidden, and must keep running.
#[test]
fn overlay_metadata_xattrs_in_layers_cannot_escape() {
    require_env!();
    let scratch = common::Scratch::new();
    let canary = Canary::plant(&scratch);
    let escape = format!("/../../{CANARY}");
    let layers = [
        Layer::new()
            .dir("r")
            .xattr("trusted.overlay.redirect", &escape)
            .dir("r2")
            .xattr("trusted.overlay.redirect", "/../../../../..")
            .file("meta", "")
            .xattr("trusted.overlay.metacopy", "")
            .xattr(
                "trusted.overlay.redirect",
                format!("/../../{CANARY}/passwd"),
            )
            .file("origin", "o")
            .xattr("trusted.overlay.origin", [0u8; 16]),
        Layer::new().file("r/lower", "l").file("meta", "lower meta"),
    ];
    let (side, lowers, mut m) = mount_solo(&scratch, &layers, Format::Overlay);
    let root = side.mnt.clone();
    let seen = within("walk", move || tolerant_walk(&root));
    for line in &seen {
        assert!(
            !line.contains("trusted.overlay."),
            "overlay xattrs visible: {line}"
        );
        assert!(!line.contains("canary"), "canary content served: {line}");
    }
    for p in ["r/passwd", "r2/tmp", "r/sub/file"] {
        assert!(
            std::fs::symlink_metadata(side.mnt.join(p)).is_err(),
            "{p} reached outside"
        );
    }
    let root = side.mnt.clone();
    let written = within("writes", move || {
        let mut log = Log::default();
        log.rec("append meta", ops::append(&root, "meta", b"x"));
        log.rec(
            "create r/passwd",
            ops::create(&root, "r/passwd", libc::O_WRONLY, 0o644),
        );
        log.rec(
            "write r/passwd",
            ops::write_at(&root, "r/passwd", 0, b"mine"),
        );
        log.rec("chmod r", ops::chmod(&root, "r", 0o700));
        log.rec("unlink r/lower", ops::unlink(&root, "r/lower"));
        log.rec("rmdir r2", ops::rmdir(&root, "r2"));
        log
    });
    println!("{}", written.lines.join("\n"));
    assert!(m.alive(), "daemon died on overlay metadata in layers");
    drop(m);
    canary.assert_untouched();
    lowers.assert_unchanged();
}

/// An OCI layer holding both `NAME` and `.wh.NAME`: the whiteout hides only lower layers'
/// copies (image-spec), so the layer's own file shows; a lone whiteout still hides.
#[test]
fn a_whiteout_never_hides_its_own_layers_file() {
    require_env!();
    let scratch = common::Scratch::new();
    let layers = [
        Layer::new().file("both", "top").file("gone", "x"),
        Layer::new().file("both", "base").file("gone", "base"),
    ];
    let (side, lowers, m) = mount_solo(&scratch, &layers, Format::Oci);
    std::fs::write(side.lowers[0].join(".wh.both"), "").unwrap();
    std::fs::remove_file(side.lowers[0].join("gone")).unwrap();
    std::fs::write(side.lowers[0].join(".wh.gone"), "").unwrap();
    let r = &side.mnt;
    assert_eq!(std::fs::read_to_string(r.join("both")).unwrap(), "top");
    assert!(
        !r.join("gone").exists(),
        "a whiteout in the top layer hides the base's file"
    );
    let mut names: Vec<_> = std::fs::read_dir(r)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["both"]);
    drop((m, lowers));
}

//! The daemon's life around its mount, with fuse-overlayfs's command line: without `-f` it returns
//! only once the mount answers and keeps serving after the parent exits; with `-f` it exits by
//! itself (successfully) when the mount is unmounted; bad options fail without mounting anything.

// Tests call libc directly, for setup and for the raw results they check.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::layers::{Format, Layer};
use common::mounts::{Impl, Side, is_mounted, overlay_bin};

/// Only a stuck daemon takes this long.
const HANG: Duration = Duration::from_secs(30);

/// Unmounts `0` on drop if a test left it mounted.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("fusermount3").arg("-u").arg(&self.0).status();
        }
        if is_mounted(&self.0) {
            let c = common::layers::cpath(&self.0);
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Unmounts `mnt` as a user would, asserting that it worked.
fn fusermount_u(mnt: &Path) {
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "fusermount3 -u: {out:?}");
}

fn side(scratch: &common::Scratch) -> Side {
    let layers = [Layer::new().file("hello", "world").dir("d")];
    Side::build(&scratch.sub("side"), Impl::Nestfs, &layers, Format::Oci)
}

fn opts(s: &Side) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}",
        s.lowers[0].display(),
        s.upper.display(),
        s.work.display()
    )
}

fn wait_with_limit(mut child: std::process::Child, what: &str) -> std::process::ExitStatus {
    let (tx, rx) = mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(HANG) {
        Ok(status) => status.expect("wait for daemon"),
        Err(_) => {
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{what}: the process did not exit within {HANG:?}");
        }
    }
}

#[test]
fn without_f_returns_once_the_mount_answers() {
    require_env!();
    let scratch = common::Scratch::new();
    let s = side(&scratch);
    let _guard = Unmount(s.mnt.clone());
    let child = Command::new(overlay_bin())
        .arg("-o")
        .arg(opts(&s))
        .arg(&s.mnt)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn daemon");
    let status = wait_with_limit(child, "daemonising parent");
    assert!(status.success(), "daemonising parent exited with {status}");
    assert!(
        is_mounted(&s.mnt),
        "parent returned before the mount existed"
    );
    assert_eq!(
        fstype(&s.mnt),
        "fuse.nestfs-overlay",
        "findmnt -t finds it, as fuse.fuse-overlayfs"
    );
    assert_eq!(
        std::fs::read_to_string(s.mnt.join("hello")).unwrap(),
        "world"
    );
    std::fs::write(s.mnt.join("new"), "served by the detached daemon").unwrap();
    fusermount_u(&s.mnt);
    assert!(!is_mounted(&s.mnt));
    assert_eq!(
        std::fs::read_to_string(s.upper.join("new")).unwrap(),
        "served by the detached daemon"
    );
}

/// The filesystem type /proc/self/mountinfo gives the mount at `mnt`.
fn fstype(mnt: &Path) -> String {
    let mounts = nestfs_fuse::mounts::list();
    let m = mounts.into_iter().find(|m| m.point == mnt);
    m.map(|m| m.fs_type).unwrap_or_default()
}

/// Starts `nestfs-overlay -f` on `s` and returns once its mount exists.
fn foreground(s: &Side) -> std::process::Child {
    foreground_with(s, "-f", &opts(s), Stdio::inherit())
}

/// Starts `nestfs-overlay FLAG -o OPTS` (staying in the foreground) on `s`; returns once it is
/// mounted.
fn foreground_with(s: &Side, flag: &str, opts: &str, stderr: Stdio) -> std::process::Child {
    let mut child = Command::new(overlay_bin())
        .arg(flag)
        .arg("-o")
        .arg(opts)
        .arg(&s.mnt)
        .stdin(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn daemon");
    wait_mounted(&mut child, &s.mnt);
    child
}

/// Returns once `mnt` is mounted; panics if the daemon exits first.
fn wait_mounted(child: &mut std::process::Child, mnt: &Path) {
    while !is_mounted(mnt) {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("daemon exited with {st} before mounting");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn stop_signals_unmount_and_exit_cleanly() {
    require_env!();
    // At once (while the daemon still settles) and once it has shed its startup pages.
    for (signal, after) in [
        (libc::SIGTERM, Duration::ZERO),
        (libc::SIGINT, Duration::from_millis(500)),
        (libc::SIGHUP, Duration::from_millis(500)),
    ] {
        let scratch = common::Scratch::new();
        let s = side(&scratch);
        let _guard = Unmount(s.mnt.clone());
        let child = foreground(&s);
        std::fs::write(s.mnt.join("kept"), "written before the signal").unwrap();
        std::thread::sleep(after);
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let status = wait_with_limit(child, &format!("signal {signal} after {after:?}"));
        assert!(
            status.success(),
            "signal {signal} after {after:?}: exit {status}"
        );
        assert!(!is_mounted(&s.mnt), "signal {signal} left the mount");
        assert_eq!(
            std::fs::read_to_string(s.upper.join("kept")).unwrap(),
            "written before the signal"
        );
    }
}

#[test]
fn debug_flag_logs_every_request() {
    require_env!();
    let scratch = common::Scratch::new();
    let s = side(&scratch);
    let _guard = Unmount(s.mnt.clone());
    let mut child = foreground_with(&s, "-d", &opts(&s), Stdio::piped());
    assert_eq!(
        std::fs::read_to_string(s.mnt.join("hello")).unwrap(),
        "world"
    );
    fusermount_u(&s.mnt);
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    let status = wait_with_limit(child, "daemon with -d");
    assert!(status.success(), "exit {status}");
    for want in ["LOOKUP name \"hello\"", " OPEN flags"] {
        assert!(log.contains(want), "no {want:?} in the -d log:\n{log}");
    }
}

/// Resident KiB of the daemon's own executable mappings.
fn exe_rss_kib(pid: u32) -> u64 {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut ours = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Rss:") if ours => kib += words.next().unwrap().parse::<u64>().unwrap(),
            Some(range) if range.contains('-') && !range.ends_with(':') => {
                ours = words.nth(4).map(Path::new) == Some(exe.as_path());
            }
            _ => {}
        }
    }
    kib
}

#[test]
fn an_idle_daemon_keeps_only_the_code_serving_needs() {
    require_env!();
    let scratch = common::Scratch::new();
    let s = side(&scratch);
    let _guard = Unmount(s.mnt.clone());
    let child = foreground(&s);
    let pid = child.id();
    assert_eq!(
        std::fs::read_to_string(s.mnt.join("hello")).unwrap(),
        "world"
    );
    let started = exe_rss_kib(pid);
    // The daemon sheds startup pages 200 ms after mounting.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while exe_rss_kib(pid) * 2 > started {
        assert!(
            std::time::Instant::now() < deadline,
            "the executable's resident pages stayed at {} KiB (after mount: {started} KiB)",
            exe_rss_kib(pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // What was dropped comes back from the page cache: the mount serves as before.
    assert_eq!(
        std::fs::read_to_string(s.mnt.join("hello")).unwrap(),
        "world"
    );
    std::fs::write(s.mnt.join("new"), "after shedding").unwrap();
    assert_eq!(
        std::fs::read_to_string(s.upper.join("new")).unwrap(),
        "after shedding"
    );
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let status = wait_with_limit(child, "daemon after shedding");
    assert!(status.success(), "exit {status}");
}

/// The number after `field` in /proc/PID/status.
fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line[field.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn many_workers_start_without_inflating_memory() {
    require_env!();
    let scratch = common::Scratch::new();
    let s = side(&scratch);
    let _guard = Unmount(s.mnt.clone());
    // With more workers than glibc has arenas (eight per CPU, so hosts below 8 CPUs), each
    // worker's 16 MiB request buffer used to be zeroed by hand: 228 MiB resident on 2 CPUs.
    let child = foreground_with(
        &s,
        "-f",
        &format!("{},max_threads=64", opts(&s)),
        Stdio::inherit(),
    );
    let pid = child.id();
    assert_eq!(
        std::fs::read_to_string(s.mnt.join("hello")).unwrap(),
        "world"
    );
    // Workers start while the first requests are served.
    let deadline = std::time::Instant::now() + HANG;
    while status_field(pid, "Threads:") < 64 {
        assert!(
            std::time::Instant::now() < deadline,
            "max_threads=64 gave {} tasks",
            status_field(pid, "Threads:")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let rss = status_field(pid, "VmRSS:");
    assert!(rss < 16 << 10, "64 idle workers hold {rss} KiB");
    fusermount_u(&s.mnt);
    let status = wait_with_limit(child, "daemon with 64 workers");
    assert!(status.success(), "exit {status}");
}

#[test]
fn foreground_daemon_exits_cleanly_after_unmount() {
    require_env!();
    let scratch = common::Scratch::new();
    let s = side(&scratch);
    let _guard = Unmount(s.mnt.clone());
    let child = foreground(&s);
    assert!(Path::new(&s.mnt.join("d")).is_dir());
    fusermount_u(&s.mnt);
    let status = wait_with_limit(child, "foreground daemon after unmount");
    assert!(
        status.success(),
        "daemon exited with {status} after a clean unmount"
    );
}

/// Without /dev/fuse (a container run without --device /dev/fuse) the error names the device
/// and what to do, not the mountpoint.
#[test]
fn a_missing_dev_fuse_is_named() {
    require_env!();
    let scratch = common::Scratch::new();
    let s = side(&scratch);
    let _guard = Unmount(s.mnt.clone());
    let script = format!(
        "mount -t tmpfs none /dev && exec {} -f -o {} {}",
        overlay_bin().display(),
        opts(&s),
        s.mnt.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot open /dev/fuse") && err.contains("--device /dev/fuse"),
        "{err}"
    );
}

/// `--help` describes every `-o` option nestfs-overlay acts on.
#[test]
fn help_describes_the_mount_options() {
    let out = Command::new(overlay_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for o in [
        "lowerdir=",
        "upperdir=",
        "workdir=",
        "uidmapping=",
        "gidmapping=",
        "nopassthrough",
        "max_threads=",
        "fsname=",
    ] {
        assert!(help.contains(o), "--help lacks {o}:\n{help}");
    }
}

#[test]
fn bad_options_fail_without_mounting() {
    require_env!();
    let scratch = common::Scratch::new();
    let s = side(&scratch);
    let _guard = Unmount(s.mnt.clone());
    let missing = scratch.path().join("no-such-layer");
    for o in [
        String::new(),
        format!("lowerdir={}", missing.display()),
        format!("{},max_threads=0", opts(&s)),
        format!(
            "lowerdir={},upperdir={}",
            s.lowers[0].display(),
            missing.display()
        ),
    ] {
        let child = Command::new(overlay_bin())
            .arg("-f")
            .arg("-o")
            .arg(&o)
            .arg(&s.mnt)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn daemon");
        let status = wait_with_limit(child, &format!("-o {o:?}"));
        assert!(!status.success(), "-o {o:?} was accepted");
        assert!(!is_mounted(&s.mnt), "-o {o:?} left a mount");
    }
}

/// uid/gid of `p` (not following symlinks).
fn owner(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid())
}

#[test]
fn id_mappings_match_the_c_implementation() {
    require_env!();
    let scratch = common::Scratch::new();
    let mut bins = vec![overlay_bin()];
    // The reference, when installed (CI installs it): both must agree on every figure.
    if Command::new("fuse-overlayfs")
        .arg("--version")
        .output()
        .is_ok()
    {
        bins.push(PathBuf::from("fuse-overlayfs"));
    }
    for (i, bin) in bins.iter().enumerate() {
        let layers = [Layer::new()
            .file("rootfile", "r")
            .file("userfile", "u")
            .owner(5, 6)
            .dir("d")];
        let s = Side::build(
            &scratch.sub(&format!("m{i}")),
            Impl::Nestfs,
            &layers,
            Format::Oci,
        );
        let _guard = Unmount(s.mnt.clone());
        let status = Command::new(bin)
            .arg("-o")
            .arg(format!(
                "{},uidmapping=0:100000:65536,gidmapping=0:200000:65536",
                opts(&s)
            ))
            .arg(&s.mnt)
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{}", bin.display());
        let what = bin.display();
        assert_eq!(owner(&s.mnt.join("rootfile")), (100000, 200000), "{what}");
        assert_eq!(owner(&s.mnt.join("userfile")), (100005, 200006), "{what}");
        // A process with mapped ids writes; the upper dir keeps the layers' (inside) ids.
        let ok = Command::new("setpriv")
            .args([
                "--reuid",
                "100000",
                "--regid",
                "200000",
                "--clear-groups",
                "sh",
                "-c",
            ])
            .arg(format!("echo x > {}/d/new", s.mnt.display()))
            .status()
            .unwrap()
            .success();
        assert!(ok, "{what}: write as mapped root");
        assert_eq!(owner(&s.mnt.join("d/new")), (100000, 200000), "{what}");
        assert_eq!(owner(&s.upper.join("d/new")), (0, 0), "{what}");
        std::os::unix::fs::chown(s.mnt.join("d/new"), Some(100007), Some(200008)).unwrap();
        assert_eq!(owner(&s.upper.join("d/new")), (7, 8), "{what}");
        assert_eq!(owner(&s.mnt.join("d/new")), (100007, 200008), "{what}");
        let ok = Command::new("fusermount3")
            .arg("-u")
            .arg(&s.mnt)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

/// Makes the calling process (a daemon about to exec) answer EPERM to fchmodat2 and the *xattrat
/// calls, as a container runtime's seccomp profile written before Linux 6.6 does.
fn refuse_new_calls() -> std::io::Result<()> {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let prog = [
        op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0), // the syscall number
        op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 2, 0, 452), // fchmodat2
        op(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K, 0, 2, 463), // setxattrat
        op(libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K, 1, 0, 466), // removexattrat
        op(
            libc::BPF_RET | libc::BPF_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr().cast_mut(),
    };
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

// Under a seccomp filter that refuses the newest calls with EPERM (not ENOSYS), chmod and xattrs
// still work: the daemon falls back to the calls older kernels have.
#[test]
fn chmod_and_xattrs_work_where_seccomp_refuses_new_calls() {
    use common::ops;
    use std::fs::Permissions;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    require_env!();
    let scratch = common::Scratch::new();
    let layers = [Layer::new()
        .file("hello", "world")
        .xattr("user.layer", "lower value")];
    let s = Side::build(&scratch.sub("side"), Impl::Nestfs, &layers, Format::Oci);
    let _guard = Unmount(s.mnt.clone());
    let mut cmd = Command::new(overlay_bin());
    cmd.arg("-f").arg("-o").arg(opts(&s)).arg(&s.mnt);
    unsafe { cmd.pre_exec(refuse_new_calls) };
    let mut child = cmd.stdin(Stdio::null()).spawn().expect("spawn daemon");
    wait_mounted(&mut child, &s.mnt);
    let mode = status_field(child.id(), "Seccomp:");
    assert_eq!(mode, 2, "no filter on the daemon (seccomp mode {mode})");

    let m = &s.mnt;
    assert_eq!(
        ops::getxattr(m, "hello", "user.layer").unwrap(),
        "lower value"
    );
    ops::setxattr(m, "hello", "user.new", b"v", 0).expect("setxattr (a copy-up)");
    assert_eq!(ops::getxattr(m, "hello", "user.new").unwrap(), "v");
    assert_eq!(ops::listxattr(m, "hello").unwrap(), "user.layer,user.new");
    ops::removexattr(m, "hello", "user.new").expect("removexattr");
    let chmod = std::fs::set_permissions(s.mnt.join("hello"), Permissions::from_mode(0o604));
    chmod.expect("chmod under the filter");
    let mode = std::fs::metadata(s.upper.join("hello")).unwrap().mode();
    assert_eq!(mode & 0o7777, 0o604);
    fusermount_u(&s.mnt);
    assert!(wait_with_limit(child, "daemon under seccomp").success());
}

/// A lower dir holding `f`, a tmpfs (mounted with `opts`) holding `upper/` and `work/`, and a
/// mount point; everything unmounted on drop, the overlay first.
struct TmpfsUpper {
    lower: PathBuf,
    fs: PathBuf,
    mnt: PathBuf,
    _mnt: Unmount,
    _fs: Unmount,
}

impl TmpfsUpper {
    fn new(scratch: &common::Scratch, opts: &str) -> TmpfsUpper {
        let (lower, fs, mnt) = (scratch.sub("lower"), scratch.sub("fs"), scratch.sub("mnt"));
        std::fs::write(lower.join("f"), "x").unwrap();
        let tmpfs = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(&fs)
            .status()
            .unwrap();
        assert!(tmpfs.success());
        let t = TmpfsUpper {
            _mnt: Unmount(mnt.clone()),
            _fs: Unmount(fs.clone()),
            lower,
            fs,
            mnt,
        };
        for d in ["upper", "work"] {
            std::fs::create_dir(t.fs.join(d)).unwrap();
        }
        t
    }

    fn opts(&self) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.fs.join("upper").display(),
            self.fs.join("work").display()
        )
    }

    /// Runs the mount command over the dirs, to its exit.
    fn mount(&self) -> std::process::Output {
        Command::new(overlay_bin())
            .arg("-o")
            .arg(self.opts())
            .arg(&self.mnt)
            .stdin(Stdio::null())
            .output()
            .expect("run nestfs-overlay")
    }
}

/// The work dir keeps what the first mount's probe found, yet an upper filesystem remounted
/// read-only is still refused at mount time, as kernel overlayfs refuses it, not at each
/// write later.
#[test]
fn a_read_only_upper_filesystem_is_refused_also_after_a_first_mount() {
    require_env!();
    let scratch = common::Scratch::new();
    let t = TmpfsUpper::new(&scratch, "size=16m");
    let first = t.mount();
    assert!(first.status.success(), "{first:?}");
    fusermount_u(&t.mnt);
    assert!(t.fs.join("work/nestfs-probe").is_file());
    let ro = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&t.fs)
        .status()
        .unwrap();
    assert!(ro.success());
    let again = t.mount();
    assert!(
        !again.status.success(),
        "mounted over a read-only upper dir"
    );
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!is_mounted(&t.mnt));
    let kernel = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(t.opts())
        .arg(&t.mnt)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!kernel.success(), "kernel overlayfs mounted it");
}

/// An upper filesystem too full to keep the probe's record still mounts: the record is an
/// optimisation, so the daemon probes again next time and leaves nothing half-written.
#[test]
fn a_full_upper_filesystem_mounts_without_keeping_the_probe() {
    require_env!();
    let scratch = common::Scratch::new();
    let t = TmpfsUpper::new(&scratch, "size=64k");
    // Fill every data page; directories and empty files still fit (tmpfs counts inodes apart).
    let mut filler = std::fs::File::create(t.fs.join("filler")).unwrap();
    let page = vec![0u8; 4096];
    while std::io::Write::write_all(&mut filler, &page).is_ok() {}
    drop(filler);
    let out = t.mount();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(t.mnt.join("f")).unwrap(), "x");
    fusermount_u(&t.mnt);
    let left: Vec<_> = std::fs::read_dir(t.fs.join("work"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "the work dir holds {left:?}");
}

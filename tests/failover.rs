//! Issue 19: a container survives its rootfs daemon. As root a keeper holds each image's FUSE
//! connection and starts another daemon when one dies. These tests SIGKILL the serving daemon
//! again and again under a runc container's loops (with and without a disk limit), during
//! copy-ups of large files, and hand images to another build of the binary (`nestfs upgrade`):
//! nothing a process using the rootfs does may fail or be lost.

#[allow(dead_code)]
mod common;
#[path = "support/runc.rs"]
mod runc;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{TestStore, du, oci};
use nestfs_testimages::{Compression, Image, Layer, noise, write_layout};
use runc::{Container, runc_available};

/// The image's daemon and its keeper, as its pid file names them.
fn served(s: &TestStore, id: &str) -> (i32, i32) {
    let record = std::fs::read_to_string(s.root().join("images").join(id).join("daemon.pid"))
        .expect("pid file");
    let f: Vec<i32> = record
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(f.len(), 4, "a daemon with a keeper: {record}");
    (f[0], f[2])
}

/// SIGKILLs the image's daemon; returns once another one serves the rootfs: when the kill was,
/// and how long nothing served (a lookup of a name never seen before waits for a daemon).
fn takeover_at(s: &TestStore, id: &str, rootfs: &Path, n: usize) -> (Instant, Duration) {
    let (old, keeper) = served(s, id);
    let killed = Instant::now();
    common::kill(old);
    let probe = rootfs.join(format!(".takeover-probe-{n}"));
    let e = std::fs::symlink_metadata(&probe).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    let stall = killed.elapsed();
    // The new daemon wrote its pid file before it took over.
    let (new, k) = served(s, id);
    assert_ne!(new, old, "another daemon serves");
    assert_eq!(k, keeper, "the same keeper");
    (killed, stall)
}

/// [`takeover_at`]'s stall.
fn takeover(s: &TestStore, id: &str, rootfs: &Path, n: usize) -> Duration {
    takeover_at(s, id, rootfs, n).1
}

/// Creates image `id` in `s` from an OCI layout of `layer` alone, written under `dir`.
fn create_one_layer(s: &TestStore, dir: &Path, layer: Layer, id: &str) -> PathBuf {
    let layout = dir.join("layout");
    let image = Image {
        layers: vec![layer],
        env: None,
        tag: Some("v1".into()),
    };
    write_layout(&layout, &image).unwrap();
    s.create(&format!("oci://{}:v1", layout.display()), id)
}

/// An installation of nestfs and its keeper of the test's own (in the store's temp dir), so
/// that installing over it disturbs no other test; its `nestfs`.
fn install_apart(s: &TestStore) -> PathBuf {
    let bin = s.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let built = Path::new(common::bin());
    for name in ["nestfs", "nestfs-keeper"] {
        std::fs::copy(built.with_file_name(name), bin.join(name)).unwrap();
    }
    bin.join("nestfs")
}

fn run_installed(nestfs: &Path, s: &TestStore, args: &[&str]) -> common::Run {
    std::process::Command::new(nestfs)
        .arg("--store")
        .arg(s.root())
        .args(args)
        .output()
        .unwrap()
        .into()
}

/// A small xorshift: random moments, reproducible from the seed the test prints.
struct Moments(u64);

impl Moments {
    fn new() -> Moments {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("moments seed {seed}");
        Moments(seed)
    }

    fn next_ms(&mut self, lo: u64, hi: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(lo + self.0 % (hi - lo))
    }
}

fn median_and_max(mut d: Vec<Duration>) -> (Duration, Duration) {
    d.sort();
    (d[d.len() / 2], d[d.len() - 1])
}

/// Loops a container runs until /stop appears: files written, synced, checked, renamed and
/// removed, directories made and removed; the image listed, stat'ed and read; and files held
/// open (one written, one read) from before the first takeover to the end. Any failed command
/// fails the container.
const LOOPS: &str = r#"
set -e
mkdir -p /data/dir
writer() {
  i=0
  while [ ! -e /stop ]; do
    i=$((i+1))
    echo "line $i" >> /data/log
    echo "$i" > /data/dir/f$i
    sync -d /data/dir/f$i
    [ "$(cat /data/dir/f$i)" = "$i" ]
    mv /data/dir/f$i /data/dir/g$i
    if [ $((i % 3)) = 0 ]; then rm /data/dir/g$i; fi
    mkdir /data/dir/d$i
    rmdir /data/dir/d$i
  done
  echo $i > /data/writes
}
reader() {
  n=0
  while [ ! -e /stop ]; do
    n=$((n+1))
    ls -lR /etc /bin > /dev/null
    stat /bin/busybox > /dev/null
    cat /bin/busybox > /dev/null
  done
  echo $n > /data/reads
}
holder() {
  exec 3>> /data/held 4< /bin/busybox
  n=0
  while [ ! -e /stop ]; do
    n=$((n+1))
    echo "held $n" >&3
    head -c 64 <&4 > /dev/null
  done
  echo $n > /data/helds
}
writer & w=$!
reader & r=$!
holder & h=$!
wait $w
wait $r
wait $h
echo loops-done
"#;

/// `n` lines `<prefix> 1` .. `<prefix> n`.
fn numbered(prefix: &str, n: usize) -> String {
    (1..=n).map(|i| format!("{prefix} {i}\n")).collect()
}

fn loops_survive_takeovers(limit: Option<u64>) {
    require_root_fuse!();
    if !runc_available() {
        eprintln!("SKIP failover: runc is not installed");
        return;
    }
    let s = TestStore::new();
    let mut args = vec!["create".to_string()];
    if let Some(l) = limit {
        args.extend(["--disk-limit-size-bytes".into(), l.to_string()]);
    }
    args.extend([oci("busybox"), "ctr".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let spec = s.run(&args).ok().json();
    let rootfs = PathBuf::from(spec["root"]["path"].as_str().unwrap());
    let c = Container::new(
        &spec,
        LOOPS,
        &format!("nestfs-failover-{}", limit.is_some()),
    );
    let run = std::thread::spawn(move || {
        let out = c.run();
        drop(c);
        out
    });
    let start = Instant::now();
    while !rootfs.join("data/held").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the loops never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (_, keeper) = served(&s, "ctr");
    let mut moments = Moments::new();
    let mut stalls = Vec::new();
    for n in 0..20 {
        std::thread::sleep(moments.next_ms(20, 250));
        stalls.push(takeover(&s, "ctr", &rootfs, n));
    }
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(rootfs.join("stop"), "").unwrap();
    let out = run.join().expect("the container failed");
    assert!(out.contains("loops-done"), "{out}");
    let (median, max) = median_and_max(stalls);
    eprintln!("20 takeovers under load: stall median {median:?}, max {max:?}");
    assert_eq!(served(&s, "ctr").1, keeper, "one keeper all along");

    // What the loops wrote, all of it, read back from the upper dir and through the mount.
    let count = |f: &str| -> usize {
        let t = std::fs::read_to_string(rootfs.join("data").join(f)).unwrap();
        t.trim().parse().unwrap()
    };
    let (writes, helds) = (count("writes"), count("helds"));
    assert!(writes > 20 && helds > 20 && count("reads") > 0);
    let upper = s.root().join("images/ctr/upper");
    for dir in [&rootfs, &upper] {
        let log = std::fs::read_to_string(dir.join("data/log")).unwrap();
        assert!(
            log == numbered("line", writes),
            "data/log in {}",
            dir.display()
        );
        let held = std::fs::read_to_string(dir.join("data/held")).unwrap();
        assert!(
            held == numbered("held", helds),
            "data/held in {}",
            dir.display()
        );
        let mut names: Vec<String> = std::fs::read_dir(dir.join("data/dir"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want: Vec<String> = (1..=writes)
            .filter(|i| i % 3 != 0)
            .map(|i| format!("g{i}"))
            .collect();
        want.sort();
        assert_eq!(names, want, "data/dir in {}", dir.display());
        for i in (1..=writes).filter(|i| i % 3 != 0) {
            let g = std::fs::read_to_string(dir.join(format!("data/dir/g{i}"))).unwrap();
            assert_eq!(g, format!("{i}\n"));
        }
    }
    let stats = s.run(&["stats", "ctr"]).ok().json();
    let used = stats["disk_usage"]["exclusive_bytes_used"]
        .as_u64()
        .unwrap();
    assert_eq!(used, du(&upper), "stats agrees with du after the takeovers");
    if let Some(limit) = limit {
        // The limit holds exactly as before: writes stop with EDQUOT at it.
        let mut f = std::fs::File::create(rootfs.join("fill")).unwrap();
        let chunk = vec![7u8; 1 << 20];
        let e = loop {
            if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
                break e;
            }
        };
        assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
        drop(f);
        let used = du(&upper);
        assert!(
            used <= limit && used + (2 << 20) >= limit,
            "{used} of {limit}"
        );
    }
    s.run(&["delete", "ctr"]).ok();
    assert!(common::mounts_under(s.dir.path()).is_empty());
    assert!(common::daemons_for(s.dir.path()).is_empty());
    assert!(common::keepers_for(s.dir.path()).is_empty());
}

#[test]
fn a_container_sees_no_error_while_its_daemon_is_killed_twenty_times() {
    loops_survive_takeovers(None);
}

#[test]
fn with_a_disk_limit_takeovers_keep_the_limit_and_stats_exact() {
    loops_survive_takeovers(Some(64 << 20));
}

/// Large lower files, each copied up by an open for writing while its daemon is killed at a
/// different moment: the copy-up is made again by the next daemon, whole, and leaves nothing
/// in the work dir.
#[test]
fn a_takeover_during_a_copy_up_neither_corrupts_nor_leaves_debris() {
    require_root_fuse!();
    const BIG: usize = 32 << 20;
    let dir = tempfile::tempdir().unwrap();
    // Uncompressed: the test's time goes to copy-ups, not to gzip in a debug build.
    let mut layer = Layer::new(Compression::None).dir("big", 0o755);
    let delays = [0u64, 5, 15, 40];
    for i in 0..delays.len() {
        layer = layer.file(&format!("big/f{i}"), 0o644, noise(i as u64, BIG));
    }
    let s = TestStore::new();
    let rootfs = create_one_layer(&s, dir.path(), layer, "cu");
    let mut interrupted = 0;
    for (i, delay) in delays.iter().enumerate() {
        let path = rootfs.join(format!("big/f{i}"));
        let writer = std::thread::spawn(move || {
            let start = Instant::now();
            let f = std::fs::OpenOptions::new().append(true).open(&path)?;
            let opened = Instant::now();
            (&f).write_all(b"tail")?;
            f.sync_all()?;
            std::io::Result::Ok((start, opened))
        });
        std::thread::sleep(Duration::from_millis(*delay));
        let (killed, stall) = takeover_at(&s, "cu", &rootfs, i);
        let (start, opened) = writer.join().unwrap().expect("the copy-up open and write");
        eprintln!(
            "killed {:?} into the open, which took {:?}; stall {stall:?}",
            killed.saturating_duration_since(start),
            opened - start
        );
        // The open (its copy-up) was under way when its daemon died.
        if start < killed && killed < opened {
            interrupted += 1;
        }
        let mut want = noise(i as u64, BIG);
        want.extend_from_slice(b"tail");
        let got = std::fs::read(rootfs.join(format!("big/f{i}"))).unwrap();
        assert!(
            got == want,
            "f{i}: {} bytes, not the copy plus tail",
            got.len()
        );
    }
    assert!(interrupted > 0, "no takeover fell into a copy-up");
    let work = s.root().join("images/cu/work");
    let left: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "nestfs-probe")
        .collect();
    assert!(left.is_empty(), "work dir debris: {left:?}");
    let upper = s.root().join("images/cu/upper/big");
    for i in 0..delays.len() {
        let len = std::fs::metadata(upper.join(format!("f{i}")))
            .unwrap()
            .len();
        assert_eq!(len, BIG as u64 + 4);
    }
    let stats = s.run(&["stats", "cu"]).ok().json();
    let used = stats["disk_usage"]["exclusive_bytes_used"]
        .as_u64()
        .unwrap();
    assert_eq!(used, du(&s.root().join("images/cu/upper")));
}

/// `nestfs upgrade` after a new binary is installed at the same path: each image's daemon is
/// the new file from then on, its keeper and mount stay, and a process working in the rootfs
/// all along sees no error.
#[test]
fn upgrade_hands_every_image_to_the_installed_binary() {
    require_root_fuse!();
    let s = TestStore::new();
    let nestfs = install_apart(&s);
    let built = Path::new(common::bin()).to_path_buf();
    let bin = nestfs.parent().unwrap().to_path_buf();
    let run = |args: &[&str]| run_installed(&nestfs, &s, args);
    let mut rootfs = Vec::new();
    for id in ["u1", "u2"] {
        let spec = run(&["create", &oci("busybox"), id]).ok().json();
        rootfs.push(PathBuf::from(spec["root"]["path"].as_str().unwrap()));
    }
    let before: Vec<(i32, i32)> = ["u1", "u2"].iter().map(|id| served(&s, id)).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (stop, root) = (stop.clone(), rootfs[0].clone());
        std::thread::spawn(move || -> std::io::Result<usize> {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let f = root.join(format!("w{n}"));
                std::fs::write(&f, n.to_string())?;
                assert_eq!(std::fs::read_to_string(&f)?, n.to_string());
                std::fs::read_dir(root.join("bin"))?.count();
                if n % 2 == 0 {
                    std::fs::remove_file(&f)?;
                }
            }
            Ok(n)
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    // A different build at the same path (a new file: the old one lives on while it runs).
    let mut new = std::fs::read(&built).unwrap();
    new.extend_from_slice(&[0u8; 4096]);
    let staged = bin.join("nestfs.new");
    std::fs::write(&staged, &new).unwrap();
    std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, &nestfs).unwrap();
    let out = run(&["upgrade"]).ok();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = worker.join().unwrap().expect("no error while upgrading");
    assert!(n > 0);
    for (i, id) in ["u1", "u2"].iter().enumerate() {
        let (daemon, keeper) = served(&s, id);
        assert_eq!(keeper, before[i].1, "{id}: the same keeper");
        assert!(
            out.stdout
                .contains(&format!("{id}: {} -> {daemon}", before[i].0)),
            "{id}: {}",
            out.stdout
        );
        let exe = std::fs::read_link(format!("/proc/{daemon}/exe")).unwrap();
        assert_eq!(exe, nestfs, "{id} runs the installed file");
        assert_eq!(std::fs::read(&exe).unwrap().len(), new.len());
        assert!(!common::runs(before[i].0));
        assert!(std::fs::read_dir(rootfs[i].join("bin")).unwrap().count() > 0);
    }
    for id in ["u1", "u2"] {
        run(&["delete", id]).ok();
    }
    assert!(common::keepers_for(s.dir.path()).is_empty());
}

/// Files the kernel reads through passthrough need no daemon at all: they read on while the
/// daemon is stopped, and after a takeover new opens of the same files share the backing file
/// the old daemon registered (the kernel allows one per inode), so they open and read too.
#[test]
fn passthrough_files_read_without_a_daemon_and_open_again_after_a_takeover() {
    require_root_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let layer = Layer::new(Compression::None).file("blob", 0o644, noise(7, 4 << 20));
    let s = TestStore::new();
    let rootfs = create_one_layer(&s, dir.path(), layer, "pt");
    // One name: the kernel reads it through passthrough.
    let path = rootfs.join("blob");
    let want = noise(7, 4 << 20);
    let held = std::fs::File::open(&path).unwrap();
    let read_all = |f: &std::fs::File| {
        let mut buf = vec![0u8; want.len()];
        std::os::unix::fs::FileExt::read_exact_at(f, &mut buf, 0).map(|()| buf)
    };
    let (daemon, keeper) = served(&s, "pt");
    common::signal(daemon, rustix::process::Signal::STOP);
    // In a thread: a read that needed the daemon would wait for it.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = held.try_clone().unwrap();
    let len = want.len();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; len];
        let r = std::os::unix::fs::FileExt::read_exact_at(&reader, &mut buf, 0);
        let _ = tx.send(r.map(|()| buf));
    });
    let got = rx.recv_timeout(Duration::from_secs(10));
    common::signal(daemon, rustix::process::Signal::CONT);
    let got = got.expect("a passthrough read waited for the stopped daemon");
    assert!(got.unwrap() == want, "read with the daemon stopped");
    takeover(&s, "pt", &rootfs, 0);
    let again = std::fs::File::open(&path).expect("open again after the takeover");
    assert!(read_all(&again).unwrap() == want);
    assert!(read_all(&held).unwrap() == want);
    drop((held, again));
    let reopened = std::fs::read(&path).unwrap();
    assert!(reopened == want);
    // Both processes are listed.
    let list = s.run(&["list", "--json"]).ok().json();
    let row = &list.as_array().unwrap()[0];
    assert_eq!(row["daemon_pid"], served(&s, "pt").0);
    assert_eq!(row["keeper_pid"], keeper);
}

/// Daemons that fail as they start (here: the upper dir is gone) are not restarted for ever:
/// after five, the keeper detaches the mount and exits, and `remount` serves the image again
/// once it can.
#[test]
fn a_keeper_gives_up_on_daemons_that_keep_failing() {
    require_root_fuse!();
    let s = TestStore::new();
    let rootfs = s.create(&oci("busybox"), "g");
    std::fs::write(rootfs.join("kept"), "data").unwrap();
    let dir = s.root().join("images/g");
    let (daemon, keeper) = served(&s, "g");
    std::fs::rename(dir.join("upper"), dir.join("upper.away")).unwrap();
    common::kill(daemon);
    let start = Instant::now();
    while common::runs(keeper) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the keeper never gave up"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap();
    assert!(log.contains("5 servers in a row failed"), "{log}");
    assert!(
        common::mounts_under(s.dir.path()).is_empty(),
        "the mount was detached"
    );
    std::fs::rename(dir.join("upper.away"), dir.join("upper")).unwrap();
    s.run(&["remount", "g"]).ok();
    assert_eq!(
        std::fs::read_to_string(rootfs.join("kept")).unwrap(),
        "data"
    );
}

/// An image served without a keeper (its binary found none) cannot be handed over: `upgrade`
/// says so, and still hands over the others.
#[test]
fn upgrade_refuses_an_image_without_a_keeper() {
    require_root_fuse!();
    let s = TestStore::new();
    let alone = s.dir.path().join("alone");
    std::fs::create_dir(&alone).unwrap();
    std::fs::copy(common::bin(), alone.join("nestfs")).unwrap();
    let out = std::process::Command::new(alone.join("nestfs"))
        .arg("--store")
        .arg(s.root())
        .args(["create", &oci("busybox"), "lone"])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    s.create(&oci("busybox"), "kept");
    let record = std::fs::read_to_string(s.root().join("images/lone/daemon.pid")).unwrap();
    assert_eq!(record.split_whitespace().count(), 2, "no keeper: {record}");
    let before = served(&s, "kept").0;
    let r = s.run(&["upgrade"]);
    assert_ne!(r.code, 0, "{r:?}");
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(said.contains("lone is served without a keeper"), "{said}");
    assert!(said.contains(&format!("kept: {before} -> ")), "{said}");
    assert_ne!(served(&s, "kept").0, before);
}

/// A daemon that dies while its binary is missing (mid-install): the keeper tries again, after
/// growing pauses, and the rootfs is served again as soon as the binary is back; a process
/// reading in it meanwhile only waits.
#[test]
fn a_keeper_retries_while_the_binary_is_missing() {
    require_root_fuse!();
    let s = TestStore::new();
    let nestfs = install_apart(&s);
    let spec = run_installed(&nestfs, &s, &["create", &oci("busybox"), "m"])
        .ok()
        .json();
    let rootfs = PathBuf::from(spec["root"]["path"].as_str().unwrap());
    let (daemon, keeper) = served(&s, "m");
    let away = nestfs.with_file_name("nestfs.away");
    std::fs::rename(&nestfs, &away).unwrap();
    common::kill(daemon);
    let reader = {
        let probe = rootfs.join(".asked-while-missing");
        std::thread::spawn(move || std::fs::symlink_metadata(probe).map(|_| ()))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!reader.is_finished(), "answered with no daemon");
    assert!(common::runs(keeper), "the keeper gave up");
    std::fs::rename(&away, &nestfs).unwrap();
    let e = reader.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    let (new, k) = served(&s, "m");
    assert!(new != daemon && k == keeper);
    let log = std::fs::read_to_string(s.root().join("images/m/daemon.log")).unwrap();
    assert!(log.contains("cannot start"), "{log}");
    run_installed(&nestfs, &s, &["delete", "m"]).ok();
}

/// The keeper refuses a command line it does not know, saying how it is used.
#[test]
fn the_keeper_explains_its_usage() {
    let keeper = Path::new(common::bin()).with_file_name("nestfs-keeper");
    for args in [
        &[][..],
        &["--mount"][..],
        &["--bogus", "x", "--", "true"][..],
    ] {
        let out = std::process::Command::new(&keeper)
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("nestfs-keeper: "), "{args:?}: {err}");
    }
    let out = std::process::Command::new(&keeper).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: nestfs-keeper --mount DIR"));
}

/// `delete` while a takeover is under way (the daemon killed, the next one not started yet:
/// here its binary is away, as mid-install) stops the keeper too, and leaves no keeper,
/// daemon, mount or image behind.
#[test]
fn delete_during_a_takeover_leaves_nothing() {
    require_root_fuse!();
    let s = TestStore::new();
    let nestfs = install_apart(&s);
    run_installed(&nestfs, &s, &["create", &oci("busybox"), "t"]).ok();
    let (daemon, keeper) = served(&s, "t");
    std::fs::rename(&nestfs, nestfs.with_file_name("nestfs.away")).unwrap();
    common::kill(daemon);
    s.run(&["delete", "t"]).ok();
    assert!(!s.root().join("images/t").exists(), "not deleted");
    let start = Instant::now();
    while common::runs(keeper) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the keeper was left"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(common::daemons_for(s.dir.path()).is_empty());
    assert!(common::mounts_under(s.dir.path()).is_empty());
}

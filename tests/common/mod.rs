//! Harness for the CLI tests: runs the real `nestfs` binary against a store in a temp dir and
//! removes everything (daemons, mounts, files) when the test ends, even when it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Why tests that mount cannot run here, if they cannot.
pub fn skip_reason() -> Option<&'static str> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root: these tests mount FUSE filesystems as root");
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing");
    }
    None
}

/// Returns from the calling test with a printed reason when it cannot run here.
#[macro_export]
macro_rules! require_root_fuse {
    () => {
        if let Some(reason) = $crate::common::skip_reason() {
            eprintln!("SKIP {}: {reason}", module_path!());
            return;
        }
    };
}

/// The OCI layout of test image `name` (see `nestfs_testimages::NAMES`), built from local
/// files the first time a test asks for it and cached under the target dir.
pub fn fixture(name: &str) -> PathBuf {
    nestfs_testimages::layout(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("images"), name)
}

pub fn oci(name: &str) -> String {
    format!("oci://{}", fixture(name).display())
}

/// A store in a temp dir; dropping it unmounts every image and stops its daemon.
pub struct TestStore {
    pub dir: tempfile::TempDir,
}

/// The result of one `nestfs` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Panics with everything the run printed unless it succeeded.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "nestfs failed: {self:#?}");
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nestfs")
}

impl TestStore {
    /// A fresh, initialised store.
    pub fn new() -> TestStore {
        let s = TestStore::uninitialised();
        s.run(&["init-store"]).ok();
        s
    }

    pub fn uninitialised() -> TestStore {
        let dir = tempfile::Builder::new()
            .prefix("nestfs-cli-")
            .tempdir()
            .expect("temp dir");
        TestStore { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.arg("--store").arg(self.root());
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd().args(args).output().expect("run nestfs").into()
    }

    /// `create` of `image` as `id`; returns the rootfs path it printed.
    pub fn create(&self, image: &str, id: &str) -> PathBuf {
        let r = self.run(&["create", image, id]).ok();
        PathBuf::from(r.json()["root"]["path"].as_str().expect("root.path"))
    }
}

/// Allocated bytes under `p` as `du -s --block-size=1` counts them.
pub fn du(p: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-s", "--block-size=1"])
        .arg(p)
        .output()
        .expect("run du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("du {}: {out:?}", p.display()))
}

/// A rootfs tarball in `dir` holding `files` (name, size in bytes of pseudo-random data).
pub fn tarball(dir: &Path, files: &[(&str, usize)]) -> PathBuf {
    let root = dir.join("tar-root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hostname"), "tarball\n").unwrap();
    for (i, (name, size)) in files.iter().enumerate() {
        let data: Vec<u8> = (0..*size)
            .map(|j| (j * 31 + i * 7 + j / 4096) as u8)
            .collect();
        std::fs::write(root.join(name), data).unwrap();
    }
    let tar = dir.join("image.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar");
    tar
}

/// Whether anything is mounted at or below `p`.
pub fn mounts_under(p: &Path) -> Vec<String> {
    let prefix = p.to_string_lossy().into_owned();
    nestfs_fuse::mounts::list()
        .into_iter()
        .map(|m| m.point.to_string_lossy().into_owned())
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// Daemons serving images of the store under `p` (not their keepers).
pub fn daemons_for(p: &Path) -> Vec<i32> {
    processes_for(p, false)
}

/// Keepers holding the FUSE connections of images of the store under `p` (root only).
pub fn keepers_for(p: &Path) -> Vec<i32> {
    processes_for(p, true)
}

fn processes_for(p: &Path, keepers: bool) -> Vec<i32> {
    let needle = p.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let keeper = cmd
            .split(|b| *b == 0)
            .next()
            .is_some_and(|a| a.ends_with(b"nestfs-keeper"));
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("serve-image") && cmd.contains(&needle) && keeper == keepers {
            pids.push(pid);
        }
    }
    pids
}

/// Kills every image's keeper, then its daemon: the rootfs is dead ("transport endpoint is not
/// connected") until a remount. Waits until they are gone.
pub fn kill_image_daemons(p: &Path) {
    for pids in [keepers_for(p), daemons_for(p)] {
        for pid in &pids {
            kill(*pid);
        }
        let start = std::time::Instant::now();
        while pids.iter().any(|pid| runs(*pid)) && start.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Whether process `pid` runs (and is not a zombie).
pub fn runs(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with('Z'))
    })
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let _ = self.run(&["delete-store"]);
        for m in mounts_under(self.dir.path()) {
            let _ = detach(Path::new(&m));
        }
        kill_image_daemons(self.dir.path());
    }
}

/// SIGKILLs process `pid`, if it still runs.
pub fn kill(pid: i32) {
    signal(pid, rustix::process::Signal::KILL);
}

/// Sends `sig` to process `pid` (never to a group), if it still runs.
pub fn signal(pid: i32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid).expect("a positive pid");
    let _ = rustix::process::kill_process(pid, sig);
}

/// Detaches the mount at `p` (umount -l).
pub fn detach(p: &Path) -> std::io::Result<()> {
    Ok(rustix::mount::unmount(
        p,
        rustix::mount::UnmountFlags::DETACH,
    )?)
}

/// A tmpfs mounted for a test, unmounted when dropped (also when the test fails).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, bytes: u64) -> Tmpfs {
        Tmpfs::mount_with(at, &format!("size={bytes}"))
    }

    /// A tmpfs with mount options `opts` (`size=...,nr_inodes=...`).
    pub fn mount_with(at: &Path, opts: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = detach(&self.0);
    }
}

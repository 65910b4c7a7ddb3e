//! podman as a real client of nestfs-overlay: `mount_program` in a private containers-storage
//! root. A busybox image with a /data tree (imported from a tarball made here) is changed by
//! `podman run`, `podman commit` + `podman diff` and `podman build`: a lower file appended to
//! (copy-up), one removed, a lower dir removed and recreated (it must come back empty), a hard
//! link, a chown and a setuid bit. Every listing and diff must equal what the same steps give
//! with kernel overlayfs as the store's filesystem; fuse-overlayfs's results are only printed.
//!
//! Each store is a private podman (tests/support/podman.rs, shared with the nestfs crate's
//! tests): its own configuration and storage in a temp dir, so nothing outside it changes; the
//! dir, its processes and mounts are removed on drop, also when a test fails.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

#[allow(dead_code)] // shared by both crates' tests, each using a part
#[path = "../../tests/support/podman.rs"]
mod podman;
#[path = "../../tests/support/scrub.rs"]
mod scrub;
#[path = "../../tests/support/users.rs"]
mod users;
use podman::{Podman, USER, test_user};

const NESTFS: &str = env!("CARGO_BIN_EXE_nestfs-overlay");
const FUSE_OVERLAYFS: &str = "/usr/bin/fuse-overlayfs";
/// The imported image's name; scripts see it as `$BASE`.
const BASE: &str = "localhost/nestfs-base";

/// The changes under test, one `RUN` step each in the Containerfile; `sh -ec` gets them one
/// command a line, since `sh -e` does not stop at a failure inside an `&&` list.
const STEPS: [&str; 3] = [
    "echo more >> /data/log && rm /data/gone",
    "rm -r /data/dir && mkdir /data/dir",
    "ln /data/orig /data/link && chown 1000:1000 /data/owned && chmod u+s /data/tool",
];

/// What a container sees of /data: mode, owner, and for non-dirs link count and size (a dir's
/// size and link count are the backing filesystem's business), then the appended file.
const LISTING: &str = r#"find /data -xdev | sort | while read -r p; do
    if [ -d "$p" ]; then stat -c '%n %A %u:%g' "$p"; else stat -c '%n %A %u:%g %h %s' "$p"; fi
done; cat /data/log"#;

/// `LISTING` after `STEPS` in a running container.
const EXPECTED_LIVE: &str = "\
/data drwxr-xr-x 0:0
/data/dir drwxr-xr-x 0:0
/data/link -rw-r--r-- 0:0 2 2
/data/log -rw-r--r-- 0:0 1 11
/data/orig -rw-r--r-- 0:0 2 2
/data/owned -rw-r--r-- 1000:1000 1 2
/data/tool -rwsr-xr-x 0:0 1 10
line1
more
";

/// `LISTING` in an image committed or built from those steps. With a mount_program podman
/// computes layer diffs by comparing trees ("naive diff"), which sees no change in the linked
/// lower file: the layer carries the new name as a separate file, so both have one link.
const EXPECTED_COMMITTED: &str = "\
/data drwxr-xr-x 0:0
/data/dir drwxr-xr-x 0:0
/data/link -rw-r--r-- 0:0 1 2
/data/log -rw-r--r-- 0:0 1 11
/data/orig -rw-r--r-- 0:0 1 2
/data/owned -rw-r--r-- 1000:1000 1 2
/data/tool -rwsr-xr-x 0:0 1 10
line1
more
";

/// `podman diff` (sorted) of a container after `STEPS`, as podman's naive diff reports it:
/// the recreated dir as changed with its old entries deleted (podman adds /etc/hosts etc.).
const EXPECTED_DIFF: &str = "\
A /data/link
C /data
C /data/dir
C /data/log
C /data/owned
C /data/tool
C /etc
D /data/dir/a
D /data/dir/sub
D /data/gone
";

/// Which filesystem a store's containers get.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Driver {
    Nestfs,
    FuseOverlayfs,
    /// Kernel overlayfs, podman's native driver.
    Kernel,
    /// Kernel overlayfs with `redirect_dir=on`, which makes podman use the naive diff it uses
    /// for every mount_program: the reference for commit, diff and build.
    KernelNaiveDiff,
}

impl Driver {
    fn overlay_options(self) -> String {
        match self {
            Driver::Nestfs => format!("mount_program = \"{NESTFS}\""),
            Driver::FuseOverlayfs => format!("mount_program = \"{FUSE_OVERLAYFS}\""),
            Driver::Kernel => String::new(),
            Driver::KernelNaiveDiff => "mountopt = \"redirect_dir=on\"".into(),
        }
    }
}

/// Parts of the scenario; each prints its result under `==name==`.
#[derive(Clone, Copy)]
enum Part {
    /// `podman run --rm` applying the steps, then the listing.
    Run,
    /// `podman run` applying the steps, `podman diff` of it, `podman commit`, listing.
    CommitAndDiff,
    /// `podman build` of the steps as RUN lines, listing of the built image.
    Build,
}

impl Part {
    fn script(self) -> &'static str {
        match self {
            Part::Run => {
                "echo ==run==; podman run --rm --network none $BASE sh -ec \"$STEPS; $LISTING\"\n"
            }
            Part::CommitAndDiff => {
                "podman run --name changed --network none $BASE sh -ec \"$STEPS\"
                echo ==diff==; podman diff changed | sort
                podman commit -q changed localhost/committed > /dev/null
                echo ==commit==; podman run --rm --network none localhost/committed sh -ec \"$LISTING\"\n"
            }
            Part::Build => {
                "podman build -q --pull=never --network none -t localhost/built \"$PODMAN_DIR/context\" > /dev/null
                echo ==build==; podman run --rm --network none localhost/built sh -ec \"$LISTING\"\n"
            }
        }
    }
}

/// The base image: scripts/make-busybox-image.sh's busybox rootfs (Debian's busybox-static)
/// plus the /data tree the steps change, appended to the tarball.
fn base_image() -> &'static [u8] {
    static TAR: OnceLock<Vec<u8>> = OnceLock::new();
    TAR.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("temp dir");
        let tar = tmp.path().join("base.tar");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/make-busybox-image.sh"
        );
        let made = Command::new("bash").arg(script).arg(&tar).status();
        assert!(made.is_ok_and(|s| s.success()), "{script} failed");
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("dir/sub")).unwrap();
        for (path, text, mode) in [
            ("log", "line1\n", 0o644),
            ("gone", "x\n", 0o644),
            ("orig", "o\n", 0o644),
            ("owned", "w\n", 0o644),
            ("tool", "#!/bin/sh\n", 0o755),
            ("dir/a", "a\n", 0o644),
            ("dir/sub/b", "b\n", 0o644),
        ] {
            std::fs::write(data.join(path), text).unwrap();
            std::fs::set_permissions(data.join(path), PermissionsExt::from_mode(mode)).unwrap();
        }
        for dir in ["", "dir", "dir/sub"] {
            std::fs::set_permissions(data.join(dir), PermissionsExt::from_mode(0o755)).unwrap();
        }
        let appended = Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(tmp.path())
            .arg("-rf")
            .arg(&tar)
            .arg("./data")
            .status();
        assert!(appended.is_ok_and(|s| s.success()), "tar -r failed");
        std::fs::read(&tar).unwrap()
    })
}

/// A private podman whose overlay driver is `driver`, with the base image's tarball and a
/// build context in its dir.
struct Store {
    podman: Podman,
    driver: Driver,
}

impl Store {
    fn new(driver: Driver, user: Option<(u32, u32)>) -> Store {
        let podman = Podman::new(user, &driver.overlay_options());
        let d = podman.dir();
        std::fs::write(d.join("base.tar"), base_image()).unwrap();
        std::fs::create_dir(d.join("context")).unwrap();
        let runs: String = STEPS.iter().map(|s| format!("RUN {s}\n")).collect();
        let containerfile = format!("FROM {BASE}\n{runs}");
        std::fs::write(d.join("context/Containerfile"), containerfile).unwrap();
        if let Some((uid, gid)) = podman.user() {
            std::os::unix::fs::chown(d.join("context"), Some(uid), Some(gid)).unwrap();
        }
        Store { podman, driver }
    }

    /// Runs `script` with this store's podman, stopping at the first failing line.
    fn sh(&self, script: &str) -> Output {
        let steps = STEPS.join("\n").replace(" && ", "\n");
        let env = [("BASE", BASE), ("STEPS", &steps), ("LISTING", LISTING)];
        self.podman.sh(&format!("set -e\n{script}"), &env)
    }

    /// Imports the base image and runs `parts`: their outputs by section name.
    fn scenario(&self, parts: &[Part]) -> Sections {
        let mut script =
            String::from("podman import -q \"$PODMAN_DIR/base.tar\" $BASE > /dev/null\n");
        parts.iter().for_each(|p| script.push_str(p.script()));
        let out = self.sh(&script);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Sections {
            driver: self.driver,
            ok: out.status.success(),
            parts: split_sections(&stdout),
            log: format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)),
        }
    }
}

/// One store's scenario outcome.
struct Sections {
    driver: Driver,
    ok: bool,
    parts: BTreeMap<String, String>,
    /// stdout and stderr, for failure messages.
    log: String,
}

impl Sections {
    fn get(&self, name: &str) -> &str {
        assert!(
            self.ok,
            "{:?}: the scenario failed:\n{}",
            self.driver, self.log
        );
        self.parts
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{:?}: no section {name}:\n{}", self.driver, self.log))
    }

    /// Asserts that `name` is `expected` and equals the reference's.
    fn check(&self, name: &str, expected: &str, reference: &Sections) {
        assert_eq!(
            reference.get(name),
            expected,
            "{name} on {:?} (the reference) is not as expected:\n{}",
            reference.driver,
            reference.log
        );
        assert_eq!(
            self.get(name),
            reference.get(name),
            "{name} on {:?} differs from {:?}:\n{}",
            self.driver,
            reference.driver,
            self.log
        );
    }

    /// Prints how `name` differs from `reference`'s, asserting nothing.
    fn show_difference(&self, name: &str, reference: &Sections) {
        let (Some(ours), Some(theirs)) = (self.parts.get(name), reference.parts.get(name)) else {
            eprintln!("{name} on {:?}: missing\n{}", self.driver, self.log);
            return;
        };
        let ours: Vec<&str> = ours.lines().collect();
        let theirs: Vec<&str> = theirs.lines().collect();
        let diff: Vec<String> = (theirs.iter().filter(|l| !ours.contains(l)))
            .map(|l| format!("  - {l}"))
            .chain(
                ours.iter()
                    .filter(|l| !theirs.contains(l))
                    .map(|l| format!("  + {l}")),
            )
            .collect();
        if diff.is_empty() {
            eprintln!(
                "{name} on {:?}: same as {:?}",
                self.driver, reference.driver
            );
        } else {
            let diff = diff.join("\n");
            eprintln!(
                "{name} on {:?} vs {:?}:\n{diff}",
                self.driver, reference.driver
            );
        }
    }
}

fn split_sections(out: &str) -> BTreeMap<String, String> {
    let mut parts = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in out.lines() {
        if let Some(name) = line.strip_prefix("==").and_then(|l| l.strip_suffix("==")) {
            parts.extend(current.take());
            current = Some((name.to_string(), String::new()));
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    parts.extend(current);
    parts
}

/// Runs `parts` on a fresh store of each driver, in parallel; fuse-overlayfs's is `None` when
/// it is not installed.
fn run_on(drivers: &[Driver], parts: &[Part]) -> Vec<Option<Sections>> {
    std::thread::scope(|s| {
        let runs: Vec<_> = drivers
            .iter()
            .map(|&d| {
                s.spawn(move || {
                    if d == Driver::FuseOverlayfs && !Path::new(FUSE_OVERLAYFS).exists() {
                        eprintln!("fuse-overlayfs is not installed: no comparison with it");
                        return None;
                    }
                    Some(Store::new(d, None).scenario(parts))
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    })
}

#[test]
fn podman_run_changes_the_image_as_the_kernel_driver_does() {
    require_podman!();
    let [nestfs, kernel, fuse] = &run_on(
        &[Driver::Nestfs, Driver::Kernel, Driver::FuseOverlayfs],
        &[Part::Run],
    )[..] else {
        unreachable!()
    };
    let (nestfs, kernel) = (nestfs.as_ref().unwrap(), kernel.as_ref().unwrap());
    if let Some(fuse) = fuse {
        fuse.show_difference("run", kernel);
    }
    nestfs.check("run", EXPECTED_LIVE, kernel);
}

#[test]
fn podman_commit_and_diff_see_what_the_kernel_driver_shows() {
    require_podman!();
    let drivers = [
        Driver::Nestfs,
        Driver::KernelNaiveDiff,
        Driver::Kernel,
        Driver::FuseOverlayfs,
    ];
    let [nestfs, naive, kernel, fuse] = &run_on(&drivers, &[Part::CommitAndDiff])[..] else {
        unreachable!()
    };
    let (nestfs, naive) = (nestfs.as_ref().unwrap(), naive.as_ref().unwrap());
    // Podman's own native diff (kernel driver) differs from its naive one by design: printed.
    for part in ["diff", "commit"] {
        nestfs.show_difference(part, kernel.as_ref().unwrap());
        if let Some(fuse) = fuse {
            fuse.show_difference(part, naive);
        }
    }
    nestfs.check("diff", EXPECTED_DIFF, naive);
    nestfs.check("commit", EXPECTED_COMMITTED, naive);
}

#[test]
fn podman_build_makes_the_image_the_kernel_driver_makes() {
    require_podman!();
    let drivers = [
        Driver::Nestfs,
        Driver::KernelNaiveDiff,
        Driver::Kernel,
        Driver::FuseOverlayfs,
    ];
    let [nestfs, naive, kernel, fuse] = &run_on(&drivers, &[Part::Build])[..] else {
        unreachable!()
    };
    let (nestfs, naive) = (nestfs.as_ref().unwrap(), naive.as_ref().unwrap());
    nestfs.show_difference("build", kernel.as_ref().unwrap());
    if let Some(fuse) = fuse {
        fuse.show_difference("build", naive);
    }
    nestfs.check("build", EXPECTED_COMMITTED, naive);
}

#[test]
fn rootless_podman_runs_commits_and_builds() {
    require_podman!();
    let Some(user) = test_user() else {
        eprintln!("SKIP rootless_podman_runs_commits_and_builds: cannot create the user {USER}");
        return;
    };
    let store = Store::new(Driver::Nestfs, Some(user));
    // The user namespace (newuidmap with the user's subordinate ids) is the sandbox's part.
    let probe = store.sh("podman unshare cat /proc/self/uid_map");
    if !probe.status.success() {
        eprintln!(
            "SKIP rootless_podman_runs_commits_and_builds: rootless podman cannot start here: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        return;
    }
    // Fails today with EPERM on the first copy-up: in podman's user namespace the daemon's euid
    // is 0, so it takes itself as privileged and tags the copy with a trusted.* xattr.
    let out = store.scenario(&[Part::Run, Part::CommitAndDiff, Part::Build]);
    for (name, expected) in [
        ("run", EXPECTED_LIVE),
        ("diff", EXPECTED_DIFF),
        ("commit", EXPECTED_COMMITTED),
        ("build", EXPECTED_COMMITTED),
    ] {
        assert_eq!(out.get(name), expected, "rootless {name}:\n{}", out.log);
    }
}

//! A private podman for tests, rootful or rootless: its own storage.conf, containers.conf,
//! graph root, run root and tmp dir in one temp dir, so nothing outside it changes. On drop its
//! containers are removed, every process started for it killed, its mounts detached and the
//! dir removed, also when a test fails. Both crates' podman tests use it (fuse/tests/podman.rs
//! includes this file).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use crate::users::{USER, test_user};

/// Why podman tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<&'static str> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root: the tests run podman as root and create the rootless user");
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing");
    }
    let podman = Command::new("podman").arg("--version").output();
    if !podman.is_ok_and(|o| o.status.success()) {
        return Some("podman is not installed (scripts/install-test-deps.sh installs it)");
    }
    None
}

/// Returns from the calling test with a printed reason when podman cannot run here.
#[macro_export]
macro_rules! require_podman {
    () => {
        if let Some(reason) = $crate::podman::skip_reason() {
            eprintln!("SKIP {}: {reason}", module_path!());
            return;
        }
    };
}

pub struct Podman {
    dir: PathBuf,
    /// The test user's ids when podman runs rootless as that user.
    user: Option<(u32, u32)>,
    /// The overlay driver's `[storage.options.overlay]` lines (e.g. a `mount_program`).
    overlay_options: String,
}

impl Podman {
    pub fn rootful() -> Podman {
        Podman::new(None, "")
    }

    /// Podman run by the test user; its containers get the user's subordinate ids.
    pub fn rootless(user: (u32, u32)) -> Podman {
        Podman::new(Some(user), "")
    }

    /// Podman run by root (`user` None) or the test user, its overlay driver configured with
    /// `overlay_options`.
    pub fn new(user: Option<(u32, u32)>, overlay_options: &str) -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("nestfs-podman-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let podman = Podman {
            dir,
            user,
            overlay_options: overlay_options.to_string(),
        };
        let d = &podman.dir;
        std::fs::set_permissions(d, PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::write(d.join("storage.conf"), podman.storage_conf()).unwrap();
        std::fs::write(d.join("containers.conf"), podman.containers_conf()).unwrap();
        if let Some((uid, gid)) = user {
            // Rootless podman needs its own runtime dir, and /dev/fuse usable by the user
            // (root-only on this machine): a 0666 node made here is bound over /dev/fuse in a
            // private mount namespace, and `--device /dev/fuse` passes that one on.
            std::fs::create_dir(d.join("xdg")).unwrap();
            let fuse = d.join("fuse");
            let mode = rustix::fs::Mode::from_raw_mode(0o666);
            let dev = rustix::fs::makedev(10, 229);
            let kind = rustix::fs::FileType::CharacterDevice;
            rustix::fs::mknodat(rustix::fs::CWD, &fuse, kind, mode, dev).expect("mknod");
            std::fs::set_permissions(d.join("fuse"), PermissionsExt::from_mode(0o666)).unwrap();
            for p in [d.as_path(), &d.join("xdg")] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
            }
            std::fs::set_permissions(d.join("xdg"), PermissionsExt::from_mode(0o700)).unwrap();
        }
        podman
    }

    fn storage_conf(&self) -> String {
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/root\"\nrunroot = \"{d}/run\"\n\
             rootless_storage_path = \"{d}/root\"\n[storage.options.overlay]\n{}\n",
            self.overlay_options,
            d = self.dir.display(),
        )
    }

    /// Root here lacks CAP_SYS_RESOURCE, so podman's default ulimits (raised above the current
    /// ones) fail: explicit lower ones. crun 1.8 refuses hybrid cgroup v1/v2 hierarchies, runc
    /// does not. The tmp and network dirs would otherwise be global.
    fn containers_conf(&self) -> String {
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             netns = \"none\"\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             runtime = \"runc\"\ntmp_dir = \"{d}/tmp\"\n\
             [network]\nnetwork_config_dir = \"{d}/net\"\n",
            d = self.dir.display(),
        )
    }

    /// The dir holding everything of this podman (`$PODMAN_DIR` in scripts).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The test user's ids, when podman runs rootless.
    pub fn user(&self) -> Option<(u32, u32)> {
        self.user
    }

    /// `podman import`s the rootfs tarball `tar` as image `name`.
    pub fn import(&self, tar: &[u8], name: &str) {
        let path = self.dir.join("import.tar");
        std::fs::write(&path, tar).unwrap();
        let out = self.sh(
            &format!("podman import -q \"$PODMAN_DIR/import.tar\" {name}"),
            &[],
        );
        assert!(out.status.success(), "podman import: {out:?}");
        std::fs::remove_file(path).unwrap();
    }

    /// Runs `script` with this podman's configuration and `env` (as the test user, in a mount
    /// namespace with a usable /dev/fuse, if rootless); `$PODMAN_DIR` is its dir.
    pub fn sh(&self, script: &str, env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "10", "300"]);
        match self.user {
            None => cmd.args(["sh", "-ec", script]),
            Some(_) => cmd
                .args(["unshare", "-m", "--propagation", "private", "sh", "-ec"])
                .arg(format!(
                    "mount --bind \"$PODMAN_DIR/fuse\" /dev/fuse; exec runuser -u {USER} -- sh -ec '{}'",
                    script.replace('\'', r"'\''")
                )),
        };
        cmd.env("PODMAN_DIR", &self.dir)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env("XDG_RUNTIME_DIR", self.dir.join("xdg"))
            .env("XDG_DATA_HOME", self.dir.join("xdg/data"))
            .env("XDG_CONFIG_HOME", self.dir.join("xdg/config"))
            .envs(env.iter().copied())
            .output()
            .expect("run sh")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first: their processes mention nothing of the dir.
        let _ = self.sh("podman rm -af -t 0 > /dev/null 2>&1", &[]);
        crate::scrub::scrub(&self.dir);
    }
}

//! Shared harness for the differential tests: layer builders, mount guards, tree snapshots and a
//! tiny syscall layer whose results are logged so two mounts can be compared call by call.
//!
//! Every test binary includes this module but uses only part of it, hence `dead_code` is allowed
//! at the `mod common;` sites. `support/kernel-overlay-shim.sh` checks the harness itself: run as
//! the binary under test, it must make every overlay-format case pass.

pub mod layers;
pub mod mounts;
pub mod ops;
pub mod pair;
pub mod snapshot;

use std::path::{Path, PathBuf};

/// Returns why FUSE/overlay tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root: kernel overlay and FUSE mounts need root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    let bin = mounts::overlay_bin();
    if !bin.exists() {
        return Some(format!("overlay binary {} is missing", bin.display()));
    }
    None
}

/// Skips the calling test (returns from it) with a printed reason when it cannot run here.
#[macro_export]
macro_rules! require_env {
    () => {
        if let Some(reason) = $crate::common::skip_reason() {
            eprintln!("SKIP {}: {reason}", module_path!());
            return;
        }
    };
}

/// A per-test scratch directory; removed on drop after every mount under it is gone.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nestfs-fusediff-")
            .tempdir()
            .expect("create scratch dir");
        Scratch { dir }
    }

    /// Creates (if needed) and returns `name` under the scratch dir.
    pub fn sub(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

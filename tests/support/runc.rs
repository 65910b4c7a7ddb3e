//! A container run by Debian's `runc` from a rootfs `nestfs create` printed, with the
//! printed process env; force-deleted on drop.

use std::process::{Command, Stdio};

/// `runc` state and a bundle in a temp dir; the container is force-deleted on drop.
pub struct Container {
    dir: tempfile::TempDir,
    id: String,
}

impl Container {
    pub fn new(spec: &serde_json::Value, script: &str, id: &str) -> Container {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        let ok = Command::new("runc")
            .args(["spec", "-b"])
            .arg(&bundle)
            .status()
            .unwrap()
            .success();
        assert!(ok, "runc spec");
        let path = bundle.join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        cfg["process"]["terminal"] = false.into();
        cfg["process"]["args"] = serde_json::json!(["sh", "-c", script]);
        cfg["process"]["env"] = spec["process"]["env"].clone();
        cfg["root"]["path"] = spec["root"]["path"].clone();
        cfg["root"]["readonly"] = false.into();
        std::fs::write(&path, cfg.to_string()).unwrap();
        Container {
            dir,
            id: id.to_string(),
        }
    }

    fn runc(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(self.dir.path().join("state"));
        c
    }

    /// Runs the container to completion; returns its stdout.
    pub fn run(&self) -> String {
        let out = self
            .runc()
            .args(["run", "-b"])
            .arg(self.dir.path().join("bundle"))
            .arg(&self.id)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "container failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self
            .runc()
            .args(["delete", "-f", &self.id])
            .stderr(Stdio::null())
            .status();
    }
}

pub fn runc_available() -> bool {
    Command::new("runc")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

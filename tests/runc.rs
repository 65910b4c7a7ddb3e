//! End to end with a real container runtime: Debian's `runc` runs a container whose root is the
//! rootfs `nestfs create` printed, with the printed process env; what the container writes
//! lands in the image's upper dir, `stats` grows by it, and `delete` leaves nothing behind.

#[allow(dead_code)]
mod common;
#[path = "support/runc.rs"]
mod runc;

use common::{TestStore, daemons_for, du, mounts_under, oci};
use runc::{Container, runc_available};

fn run_in_container(fixture: &str) {
    require_root_fuse!();
    if !runc_available() {
        // CI installs runc; elsewhere say why this did not run.
        eprintln!("SKIP runc: runc is not installed");
        return;
    }
    let s = TestStore::new();
    let r = s.run(&["create", &oci(fixture), "ctr"]).ok();
    let spec = r.json();
    let before = s.run(&["stats", "ctr"]).ok().json();
    // Writes a file, 512 KiB of data, a directory, deletes something from the image, and
    // reports its environment and what it sees.
    let script = "echo written-in-container > /hello.txt && \
        dd if=/dev/zero of=/blob bs=1024 count=512 2>/dev/null && \
        mkdir -p /made/here && echo x > /made/here/f && \
        rm -rf /tmp && \
        echo PATH=$PATH && ls /";
    let c = Container::new(&spec, script, &format!("nestfs-test-{fixture}"));
    let out = c.run();
    let env = spec["process"]["env"].as_array().unwrap();
    let path = env
        .iter()
        .filter_map(|v| v.as_str())
        .find(|v| v.starts_with("PATH="))
        .unwrap_or("PATH=");
    assert!(out.contains(path), "image env reaches the process: {out}");
    assert!(
        out.contains("hello.txt") && !out.lines().any(|l| l == "tmp"),
        "{out}"
    );
    let upper = s.root().join("images/ctr/upper");
    assert_eq!(
        std::fs::read_to_string(upper.join("hello.txt")).unwrap(),
        "written-in-container\n"
    );
    assert_eq!(
        std::fs::metadata(upper.join("blob")).unwrap().len(),
        512 * 1024
    );
    assert!(upper.join("made/here/f").exists());
    let gone = std::fs::symlink_metadata(upper.join("tmp")).unwrap();
    assert!(
        !gone.is_dir(),
        "the image's /tmp is whited out in the upper dir"
    );
    let after = s.run(&["stats", "ctr"]).ok().json();
    let excl = |v: &serde_json::Value| v["disk_usage"]["exclusive_bytes_used"].as_u64().unwrap();
    assert!(
        excl(&after) >= excl(&before) + 512 * 1024,
        "stats grew by what was written: {before} -> {after}"
    );
    assert_eq!(
        excl(&after),
        du(&upper),
        "stats agrees with du of the upper dir"
    );
    drop(c);
    s.run(&["delete", "ctr"]).ok();
    assert!(mounts_under(s.dir.path()).is_empty());
    assert!(daemons_for(s.dir.path()).is_empty());
    assert!(!s.root().join("images/ctr").exists());
}

#[test]
fn busybox_container_writes_land_in_the_upper_dir() {
    run_in_container("busybox");
}

#[test]
fn four_layer_container_writes_land_in_the_upper_dir() {
    run_in_container("four-layers");
}

#[test]
fn garden_rootfs_container_writes_land_in_the_upper_dir() {
    run_in_container("garden-rootfs");
}

#[test]
fn dd_in_a_container_stops_at_the_disk_limit_with_edquot() {
    require_root_fuse!();
    if !runc_available() {
        eprintln!("SKIP runc: runc is not installed");
        return;
    }
    let s = TestStore::new();
    let limit = 10u64 << 20;
    let r = s
        .run(&[
            "create",
            "--disk-limit-size-bytes",
            &limit.to_string(),
            "--exclude-image-from-quota",
            &oci("busybox"),
            "dd",
        ])
        .ok();
    let script = "dd if=/dev/zero of=/fill bs=1M count=50 2>&1; echo dd-exit=$?; \
        rm /fill && echo after > /after && echo freed-ok";
    let c = Container::new(&r.json(), script, "nestfs-test-dd");
    let out = c.run();
    assert!(out.contains("dd-exit=1"), "dd must fail: {out}");
    assert!(out.contains("Disk quota exceeded"), "with EDQUOT: {out}");
    assert!(
        out.contains("freed-ok"),
        "space freed can be used again: {out}"
    );
    let upper = s.root().join("images/dd/upper");
    let stats = s.run(&["stats", "dd"]).ok().json();
    assert_eq!(
        stats["disk_usage"]["exclusive_bytes_used"]
            .as_u64()
            .unwrap(),
        du(&upper)
    );
    drop(c);
    s.run(&["delete", "dd"]).ok();
    assert!(mounts_under(s.dir.path()).is_empty());
}

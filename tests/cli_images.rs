//! Images through the real binary: create serves a live rootfs, stats measures it, delete
//! removes it (also after its daemon was killed), clean removes exactly the unused volumes.

#[allow(dead_code)]
mod common;

use std::path::Path;

use common::{TestStore, daemons_for, mounts_under, oci};

fn is_mount(p: &Path) -> bool {
    mounts_under(p).iter().any(|m| Path::new(m) == p)
}

#[test]
fn create_serves_the_image_and_delete_removes_it() {
    require_root_fuse!();
    let s = TestStore::new();
    let r = s.run(&["create", &oci("garden-rootfs"), "c1"]).ok();
    let spec = r.json();
    let rootfs = Path::new(spec["root"]["path"].as_str().unwrap()).to_path_buf();
    assert_eq!(rootfs, s.root().join("images/c1/rootfs"));
    assert!(
        spec.get("mounts").is_none(),
        "no mounts key, as GrootFS prints it: {spec}"
    );
    let env = spec["process"]["env"].as_array().unwrap();
    assert_eq!(env.len(), 2, "garden-rootfs has two Env vars: {spec}");
    assert!(
        is_mount(&rootfs),
        "create returned before the rootfs was mounted"
    );
    // The opaque dir and whiteouts of the image are honoured.
    assert!(
        rootfs.join("bin").is_dir() || rootfs.join("usr").is_dir(),
        "image content visible"
    );
    let before = s.run(&["stats", "c1"]).ok().json();
    std::fs::write(rootfs.join("grown"), vec![7u8; 1 << 20]).unwrap();
    let after = s.run(&["stats", "c1"]).ok().json();
    let excl = |v: &serde_json::Value| v["disk_usage"]["exclusive_bytes_used"].as_u64().unwrap();
    let total = |v: &serde_json::Value| v["disk_usage"]["total_bytes_used"].as_u64().unwrap();
    assert!(
        excl(&after) >= excl(&before) + (1 << 20),
        "{before} -> {after}"
    );
    assert!(
        total(&after) > excl(&after),
        "total counts the layers too: {after}"
    );
    assert_eq!(
        std::fs::read(s.root().join("images/c1/upper/grown"))
            .unwrap()
            .len(),
        1 << 20
    );
    assert_eq!(
        s.run(&["list"]).ok().stdout,
        format!("{}\n", s.root().join("images/c1").display()),
        "one path per line, as GrootFS prints them"
    );
    s.run(&["delete", rootfs.to_str().unwrap()]).ok();
    assert!(!s.root().join("images/c1").exists());
    assert!(
        mounts_under(s.dir.path()).is_empty(),
        "mount left after delete"
    );
    assert!(
        daemons_for(s.dir.path()).is_empty(),
        "daemon left after delete"
    );
    s.run(&["delete", "c1"]).ok();
}

#[test]
fn every_fixture_creates_and_deletes() {
    require_root_fuse!();
    let s = TestStore::new();
    for (i, name) in nestfs_testimages::NAMES.iter().enumerate() {
        let image = match *name {
            "empty" => format!("{}:v0.1.1", oci(name)),
            _ => oci(name),
        };
        let id = format!("f{i}");
        let rootfs = s.create(&image, &id);
        assert!(is_mount(&rootfs), "{name}: not mounted");
        assert!(
            std::fs::read_dir(&rootfs).unwrap().next().is_some(),
            "{name}: empty rootfs"
        );
        s.run(&["delete", &id]).ok();
    }
    assert!(mounts_under(s.dir.path()).is_empty());
}

#[test]
fn existing_id_fails_and_keeps_the_first_image() {
    require_root_fuse!();
    let s = TestStore::new();
    let rootfs = s.create(&oci("busybox"), "same");
    std::fs::write(rootfs.join("mine"), "kept").unwrap();
    let r = s.run(&["create", &oci("generated"), "same"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout.trim(), "image for id `same` already exists");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("mine")).unwrap(),
        "kept"
    );
}

#[test]
fn delete_after_the_daemon_was_killed() {
    require_root_fuse!();
    let s = TestStore::new();
    let rootfs = s.create(&oci("busybox"), "k");
    common::kill_image_daemons(s.dir.path());
    // The mount is now "transport endpoint is not connected".
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(std::fs::read_dir(&rootfs).is_err());
    s.run(&["stats", "k"]).ok();
    s.run(&["delete", "k"]).ok();
    assert!(!s.root().join("images/k").exists());
    assert!(mounts_under(s.dir.path()).is_empty());
}

#[test]
fn concurrent_creates_share_layers_and_all_succeed() {
    require_root_fuse!();
    let s = TestStore::new();
    let image = oci("four-layers");
    let children: Vec<_> = (0..8)
        .map(|i| {
            s.cmd()
                .args(["create", &image, &format!("p{i}")])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let volumes = std::fs::read_dir(s.root().join("volumes"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .count();
    assert_eq!(volumes, 4, "each of the 4 layers unpacked once");
    let deletes: Vec<_> = (0..8)
        .map(|i| s.cmd().args(["delete", &format!("p{i}")]).spawn().unwrap())
        .collect();
    for mut d in deletes {
        assert!(d.wait().unwrap().success());
    }
    assert!(mounts_under(s.dir.path()).is_empty());
}

#[test]
fn clean_removes_only_unused_volumes() {
    require_root_fuse!();
    let s = TestStore::new();
    s.create(&oci("busybox"), "keep");
    s.create(&oci("generated"), "drop");
    s.run(&["delete", "drop"]).ok();
    let count = || {
        std::fs::read_dir(s.root().join("volumes"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .count()
    };
    assert_eq!(count(), 2);
    s.run(&["clean", "--threshold-bytes", "999999999999"]).ok();
    assert_eq!(count(), 2, "under the threshold nothing is removed");
    s.run(&["clean"]).ok();
    assert_eq!(
        count(),
        1,
        "the generated image's volume is unused, busybox's is in use"
    );
    assert!(s.root().join("images/keep/rootfs/bin").exists());
}

#[test]
fn disk_limit_smaller_than_the_image_fails_cleanly() {
    require_root_fuse!();
    let s = TestStore::new();
    let r = s.run(&[
        "create",
        "--disk-limit-size-bytes",
        "1000",
        &oci("busybox"),
        "small",
    ]);
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stdout.contains("layers exceed disk quota"),
        "the compressed layers alone exceed it, found before pulling: {r:#?}"
    );
    assert!(!s.root().join("images/small").exists());
    // 4mb-image: 2.6 MB of blobs (one layer is 1.5 MB of gzipped zeros) that unpack to 4 MB.
    let r = s.run(&[
        "create",
        "--disk-limit-size-bytes",
        "3500000",
        &oci("4mb-image"),
        "unpacked",
    ]);
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stdout.contains("uncompressed layer size exceeds quota"),
        "{r:#?}"
    );
    assert!(!s.root().join("images/unpacked").exists());
    assert_eq!(std::fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    s.run(&[
        "create",
        "--disk-limit-size-bytes",
        "1000",
        "--exclude-image-from-quota",
        &oci("busybox"),
        "excl",
    ])
    .ok();
}

#[test]
fn corrupted_layer_fails_and_caches_nothing() {
    require_root_fuse!();
    let s = TestStore::new();
    let layout = s.dir.path().join("layout");
    let src = common::fixture("busybox");
    let out = std::process::Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(&layout)
        .output()
        .unwrap();
    assert!(out.status.success());
    // Flip a byte in the middle of the (only) layer blob, the biggest file of the layout.
    let biggest = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let mut data = std::fs::read(&biggest).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&biggest, data).unwrap();
    let r = s.run(&["create", &format!("oci://{}", layout.display()), "bad"]);
    assert_eq!(r.code, 1, "{r:#?}");
    assert_eq!(r.stdout.trim().lines().count(), 1, "{r:#?}");
    assert!(!s.root().join("images/bad").exists());
    let volumes = std::fs::read_dir(s.root().join("volumes")).unwrap().count();
    assert_eq!(volumes, 0, "nothing cached from a corrupt pull");
    let tmp = std::fs::read_dir(s.root().join("tmp")).unwrap().count();
    assert_eq!(tmp, 0, "no partial layer left behind");
}

/// What is wrong with a tarball argument is said in GrootFS's words, and a file that is not a
/// tar archive is named as such, never printed.
#[test]
fn bad_tarball_arguments_are_named_and_never_printed() {
    require_root_fuse!();
    let s = TestStore::new();
    let text = s.dir.path().join("secrets.txt");
    std::fs::write(&text, "root:x:0:0:secret-line:/root:/bin/sh\n".repeat(20)).unwrap();
    let r = s.run(&["create", text.to_str().unwrap(), "t"]);
    assert_eq!(r.code, 1, "{r:#?}");
    assert_eq!(
        r.stdout.trim(),
        "invalid image: the layer is not a tar archive (no tar header at its start)"
    );
    assert!(!r.stderr.contains("secret-line"), "{r:#?}");
    let dir = s.dir.path().join("a-dir");
    std::fs::create_dir(&dir).unwrap();
    let r = s.run(&["create", dir.to_str().unwrap(), "d"]);
    assert_eq!(
        r.stdout.trim(),
        "invalid base image: directory provided instead of a tar file"
    );
    let r = s.run(&["create", "/invalid/image", "m"]);
    assert!(
        r.stdout
            .contains("stat /invalid/image: no such file or directory"),
        "{r:#?}"
    );
    assert_eq!(r.code, 1);
    for id in ["t", "d", "m"] {
        assert!(!s.root().join("images").join(id).exists());
    }
}

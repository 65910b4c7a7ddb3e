//! `create` from a real registry (Debian's docker-registry on loopback): plain http with
//! `--insecure-registry`, basic auth, wrong credentials, unknown tags, unreachable registries.

// A port bound but never listened on takes raw socket calls (std binds only to listen).
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
#[path = "support/registry.rs"]
mod registry;

use common::{TestStore, fixture, mounts_under};
use registry::Registry;

#[test]
fn pulls_over_http_and_serves_the_image() {
    require_root_fuse!();
    let reg = Registry::start(false);
    let image = reg.push(&fixture("garden-rootfs"), "garden/rootfs", "v1");
    let s = TestStore::new();
    let r = s
        .run(&["create", "--insecure-registry", &reg.addr, &image, "r1"])
        .ok();
    let spec = r.json();
    assert_eq!(
        spec["process"]["env"].as_array().unwrap().len(),
        2,
        "{spec}"
    );
    let rootfs = s.root().join("images/r1/rootfs");
    assert!(std::fs::read_dir(&rootfs).unwrap().count() > 3);
    // The same image again reuses its 32 volumes.
    s.run(&["create", "--insecure-registry", &reg.addr, &image, "r2"])
        .ok();
    let volumes = std::fs::read_dir(s.root().join("volumes"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .count();
    assert_eq!(volumes, 32);
    let r = s.run(&[
        "create",
        "--insecure-registry",
        &reg.addr,
        &format!("docker://{}/garden/rootfs:nope", reg.addr),
        "r3",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("not found"), "{r:#?}");
    assert!(!s.root().join("images/r3").exists());
    s.run(&["delete", "r1"]).ok();
    s.run(&["delete", "r2"]).ok();
    assert!(mounts_under(s.dir.path()).is_empty());
}

#[test]
fn basic_auth_and_wrong_credentials() {
    require_root_fuse!();
    let reg = Registry::start(true);
    let image = reg.push(&fixture("busybox"), "busybox", "1.25");
    let s = TestStore::new();
    let insecure = ["--insecure-registry", reg.addr.as_str()];
    let r = s.run(
        &[
            &["create"][..],
            &insecure,
            &[
                "--username",
                registry::USER,
                "--password",
                "wrong",
                &image,
                "a",
            ],
        ]
        .concat(),
    );
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("unauthorized"), "{r:#?}");
    let r = s.run(&[&["create"][..], &insecure, &[&image, "anon"]].concat());
    assert_eq!(
        r.code, 1,
        "anonymous pull from an auth registry must fail: {r:#?}"
    );
    s.run(
        &[
            &["create"][..],
            &insecure,
            &[
                "--username",
                registry::USER,
                "--password",
                registry::PASSWORD,
                &image,
                "ok",
            ],
        ]
        .concat(),
    )
    .ok();
    assert!(s.root().join("images/ok/rootfs/bin").exists());
}

/// A loopback port that refuses connections for as long as the returned socket lives: bound
/// but not listening, so no other test's server can take it meanwhile (a port merely found
/// free once can be, and then the "unreachable" registry answers).
fn refusing_port() -> (std::os::fd::OwnedFd, u16) {
    use std::os::fd::FromRawFd;
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let r = unsafe { libc::bind(raw, (&raw const addr).cast(), len) };
    assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
    let mut len = len;
    let r = unsafe { libc::getsockname(raw, (&raw mut addr).cast(), &mut len) };
    assert_eq!(r, 0, "getsockname: {}", std::io::Error::last_os_error());
    (fd, u16::from_be(addr.sin_port))
}

#[test]
fn unreachable_registry_fails_with_a_clear_line() {
    let s = TestStore::new();
    let (_held, port) = refusing_port();
    let r = s.run(&[
        "create",
        "--insecure-registry",
        &format!("127.0.0.1:{port}"),
        &format!("docker://127.0.0.1:{port}/x:1"),
        "u",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("unreachable"), "{r:#?}");
    assert!(r.stdout.contains("connection refused"), "{r:#?}");
    assert_eq!(r.stdout.trim().lines().count(), 1);
}

#[test]
fn stalling_registry_fails_in_bounded_time() {
    // Accepts connections and never answers.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            held.push(c);
        }
    });
    let s = TestStore::new();
    let r: common::Run = s
        .cmd()
        .env("NESTFS_READ_TIMEOUT_MS", "500")
        .env("NESTFS_RESOLVE_DEADLINE_MS", "2000")
        .args([
            "create",
            "--insecure-registry",
            &addr,
            &format!("docker://{addr}/x:1"),
            "s",
        ])
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stdout.contains("unreachable"), "{r:#?}");
    assert!(r.stdout.contains("timed out"), "{r:#?}");
}

/// The digest of the biggest blob of a layout: its (only) layer for single-layer fixtures.
fn biggest_blob(layout: &std::path::Path) -> String {
    let e = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap();
    format!("sha256:{}", e.file_name().to_string_lossy())
}

#[test]
fn a_registry_serving_corrupt_or_truncated_blobs_caches_nothing() {
    require_root_fuse!();
    let reg = Registry::start(false);
    let image = reg.push(&fixture("busybox"), "busybox", "lying");
    let stored = reg.blob_file(&biggest_blob(&fixture("busybox")));
    let good = std::fs::read(&stored).unwrap();
    let s = TestStore::new();
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    for (what, bytes) in [
        ("corrupt", corrupt),
        ("truncated", good[..good.len() / 3].to_vec()),
    ] {
        std::fs::write(&stored, &bytes).unwrap();
        let r = s.run(&["create", "--insecure-registry", &reg.addr, &image, what]);
        assert_eq!(r.code, 1, "{what}: {r:#?}");
        assert_eq!(r.stdout.trim().lines().count(), 1, "{what}: {r:#?}");
        if what == "corrupt" {
            assert!(r.stdout.contains("layerID digest mismatch"), "{r:#?}");
        }
        assert!(!s.root().join("images").join(what).exists());
        assert_eq!(
            std::fs::read_dir(s.root().join("volumes")).unwrap().count(),
            0,
            "{what}: cached"
        );
        assert_eq!(
            std::fs::read_dir(s.root().join("tmp")).unwrap().count(),
            0,
            "{what}: debris"
        );
    }
    // Once the registry tells the truth again, the same create works.
    std::fs::write(&stored, &good).unwrap();
    s.run(&["create", "--insecure-registry", &reg.addr, &image, "honest"])
        .ok();
}

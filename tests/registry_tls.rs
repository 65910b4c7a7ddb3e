//! Registries as GrootFS treats them: one listed as insecure (flag or config) is tried over
//! HTTPS without verifying its certificate, then over plain HTTP; an unlisted one with an
//! untrusted certificate is refused in GrootFS's words. Also multi-platform indexes and zstd
//! layers pulled from a real registry.

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
#[path = "support/registry.rs"]
mod registry;

use common::{TestStore, fixture};
use nestfs_testimages::{Compression, Image, Layer, busybox_layer, write_layout};
use registry::Registry;

#[test]
fn self_signed_registry_needs_to_be_listed_as_insecure() {
    require_root_fuse!();
    let reg = Registry::start_tls();
    let image = reg.push(&fixture("busybox"), "busybox", "tls");
    let s = TestStore::new();

    let r = s.run(&["create", &image, "unlisted"]);
    assert_eq!(r.code, 1, "{r:#?}");
    assert_eq!(r.stdout.trim().lines().count(), 1, "{r:#?}");
    for words in [
        "This registry is insecure. To pull images from this registry, please use the --insecure-registry option",
        "create.insecure_registries",
        "untrusted TLS certificate",
    ] {
        assert!(r.stdout.contains(words), "{words:?} missing: {r:#?}");
    }
    assert!(!s.root().join("images/unlisted").exists());

    s.run(&["create", "--insecure-registry", &reg.addr, &image, "flag"])
        .ok();
    assert!(s.root().join("images/flag/rootfs/bin/busybox").exists());
}

#[test]
fn config_file_lists_insecure_registries_over_https_and_http() {
    require_root_fuse!();
    let tls = Registry::start_tls();
    let http = Registry::start(false);
    let over_tls = tls.push(&fixture("busybox"), "busybox", "cfg");
    let over_http = http.push(&fixture("busybox"), "busybox", "cfg");
    let s = TestStore::new();
    let cfg = s.dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "create:\n  insecure_registries: [{}, {}]\n",
            tls.addr, http.addr
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    s.run(&["--config", cfg, "create", &over_tls, "tls"]).ok();
    s.run(&["--config", cfg, "create", &over_http, "http"]).ok();
    for id in ["tls", "http"] {
        assert!(s.root().join("images").join(id).join("rootfs/bin").exists());
    }
}

#[test]
fn index_entry_for_linux_amd64_is_picked() {
    require_root_fuse!();
    let reg = Registry::start(false);
    let amd64 = reg.push_entry(&fixture("busybox"), "multi", "amd64");
    let arm64 = reg.push_entry(&fixture("four-layers"), "multi", "arm64");
    // Same architecture, other OS, and its layer gone from the registry: picking it fails.
    let bogus_layout = tempfile::tempdir().unwrap();
    let bogus_image = Image {
        layers: vec![Layer::new(Compression::Gzip).file("bogus", 0o644, "x\n")],
        env: None,
        tag: None,
    };
    write_layout(bogus_layout.path(), &bogus_image).unwrap();
    let bogus = reg.push_entry(bogus_layout.path(), "multi", "bogus");
    let removed = std::fs::read_dir(bogus_layout.path().join("blobs/sha256"))
        .unwrap()
        .map(|b| format!("sha256:{}", b.unwrap().file_name().to_string_lossy()))
        .filter(|digest| std::fs::remove_file(reg.blob_file(digest)).is_ok())
        .count();
    // Its layer and config; the manifest pushed is re-serialised, so not the layout's.
    assert_eq!(removed, 2);
    let image = reg.push_index(
        "multi",
        "latest",
        &[
            (&bogus, "windows", "amd64"),
            (&arm64, "linux", "arm64"),
            (&amd64, "linux", "amd64"),
        ],
    );
    let elsewhere = reg.push_index("multi", "arm", &[(&arm64, "linux", "arm64")]);
    let s = TestStore::new();
    let r = s.run(&["create", "--insecure-registry", &reg.addr, &elsewhere, "a"]);
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stdout.contains("platform"), "{r:#?}");
    let broken = format!("docker://{}/multi:bogus", reg.addr);
    let r = s.run(&["create", "--insecure-registry", &reg.addr, &broken, "b"]);
    assert_eq!(r.code, 1, "the bogus entry must not be pullable: {r:#?}");
    s.run(&["create", "--insecure-registry", &reg.addr, &image, "m"])
        .ok();
    let rootfs = s.root().join("images/m/rootfs");
    assert!(rootfs.join("bin/busybox").exists());
    assert!(!rootfs.join("file-1").exists(), "arm64 entry picked");
}

#[test]
fn zstd_layer_from_a_registry() {
    require_root_fuse!();
    let layout = tempfile::tempdir().unwrap();
    let image = Image {
        layers: vec![
            busybox_layer(),
            Layer::new(Compression::Zstd)
                .dir("etc", 0o755)
                .file("etc/zstd", 0o644, "squeezed\n"),
        ],
        env: None,
        tag: None,
    };
    write_layout(layout.path(), &image).unwrap();
    let reg = Registry::start(false);
    let image = reg.push(layout.path(), "zstd", "1");
    let s = TestStore::new();
    s.run(&["create", "--insecure-registry", &reg.addr, &image, "z"])
        .ok();
    let file = s.root().join("images/z/rootfs/etc/zstd");
    assert_eq!(std::fs::read_to_string(file).unwrap(), "squeezed\n");
}

#[test]
fn unlisted_plain_http_registry_is_named_as_such() {
    let reg = Registry::start(false);
    let s = TestStore::new();
    let r = s.run(&["create", &format!("docker://{}/x:1", reg.addr), "h"]);
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stdout.contains("plain HTTP"), "{r:#?}");
    assert!(r.stdout.contains("--insecure-registry"), "{r:#?}");
}

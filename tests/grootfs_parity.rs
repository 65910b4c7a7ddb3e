//! Where GrootFS's integration specs (cloudfoundry/grootfs `integration/`) pin behaviour down,
//! through the real binary: messages for images and stores that are not there, `list`'s
//! output, `clean`'s no-op, `delete-store` on a directory that is not a store, the clean-on-create
//! log file, and dropsonde metrics on UDP.

#[allow(dead_code)]
mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::{TestStore, oci};

#[test]
fn deleting_what_is_not_there_says_so_and_succeeds() {
    let s = TestStore::new();
    let r = s.run(&["delete", "non-existing-id"]).ok();
    assert_eq!(
        r.stdout.trim(),
        "Image `non-existing-id` not found. Skipping delete."
    );
    let missing = s.root().join("images/non_existing");
    let r = s.run(&["delete", missing.to_str().unwrap()]).ok();
    assert_eq!(
        r.stdout.trim(),
        "Image `non_existing` not found. Skipping delete."
    );
    let r = s
        .run(&["delete", "/Iamnot/in/the/storage/images/1234/rootfs"])
        .ok();
    assert_eq!(
        r.stdout.trim(),
        "path `/Iamnot/in/the/storage/images/1234/rootfs` is outside store path Skipping delete."
    );
    let r = s.run(&["stats", "/Iamnot/in/the/storage/images/1234/rootfs"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stdout.trim(),
        "path `/Iamnot/in/the/storage/images/1234/rootfs` is outside store path"
    );
}

#[test]
fn without_a_store_delete_and_clean_succeed_and_log_why() {
    let s = TestStore::uninitialised();
    let r = s
        .run(&["--log-level", "debug", "delete", "/path/to/random-id"])
        .ok();
    assert!(r.stderr.contains(r#""id":"/path/to/random-id""#), "{r:#?}");
    let r = s.run(&["--log-level", "debug", "clean"]).ok();
    let want = format!("no store found at {}", s.root().display());
    assert!(r.stderr.contains(&want), "{r:#?}");
    let r = s.run(&["list"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout.trim(), want);
    s.run(&["delete-store"]).ok();
}

#[test]
fn delete_store_refuses_a_directory_that_is_not_a_store() {
    let s = TestStore::uninitialised();
    std::fs::create_dir_all(s.root().join("precious")).unwrap();
    let r = s.run(&["delete-store"]);
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stdout.contains("does not look like a store"), "{r:#?}");
    assert!(s.root().join("precious").exists());
    std::fs::remove_dir_all(s.root()).unwrap();
}

#[test]
fn clean_under_its_threshold_says_it_skipped() {
    let s = TestStore::new();
    let r = s.run(&["clean", "--threshold-bytes", "1000000000"]).ok();
    assert_eq!(r.stdout.trim(), "threshold not reached: skipping clean");
    assert_eq!(s.run(&["clean"]).ok().stdout, "");
}

#[test]
fn list_prints_one_image_path_per_line() {
    require_root_fuse!();
    let s = TestStore::new();
    s.create(&oci("busybox"), "b");
    s.create(&oci("four-layers"), "a");
    let r = s.run(&["list"]).ok();
    assert_eq!(
        r.stdout,
        format!(
            "{}\n{}\n",
            s.root().join("images/a").display(),
            s.root().join("images/b").display()
        )
    );
    // What GrootFS-era scripts do with it works: every image goes.
    for path in r.stdout.lines() {
        let id = std::path::Path::new(path).file_name().unwrap();
        s.run(&["delete", id.to_str().unwrap()]).ok();
    }
    assert_eq!(s.run(&["list"]).ok().stdout.trim(), "Store empty");
    assert!(common::daemons_for(s.dir.path()).is_empty());
}

#[test]
fn clean_on_create_logs_to_the_clean_log_file() {
    require_root_fuse!();
    let s = TestStore::new();
    let clean_log = s.dir.path().join("clean.log");
    let r = s
        .run(&[
            "--log-level",
            "debug",
            "create",
            "--with-clean",
            "--clean-log-file",
            clean_log.to_str().unwrap(),
            &oci("busybox"),
            "c",
        ])
        .ok();
    assert!(!r.stderr.contains("groot-cleaning"), "{r:#?}");
    let text = std::fs::read_to_string(&clean_log).unwrap();
    assert!(
        text.contains("nestfs.create.groot-cleaning.starting"),
        "{text}"
    );
    let r = s
        .run(&[
            "--log-level",
            "debug",
            "create",
            "--with-clean",
            &oci("busybox"),
            "d",
        ])
        .ok();
    assert!(r.stderr.contains("groot-cleaning"), "{r:#?}");
}

/// GrootFS's metrics reach a metron endpoint as dropsonde envelopes, one datagram each.
#[test]
fn metrics_reach_the_metron_endpoint() {
    require_root_fuse!();
    let s = TestStore::new();
    let metron = UdpSocket::bind("127.0.0.1:0").unwrap();
    metron
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let endpoint = metron.local_addr().unwrap().to_string();
    let with_metron = |args: &[&str]| {
        let mut all = vec!["--metron-endpoint", endpoint.as_str()];
        all.extend_from_slice(args);
        s.run(&all).ok()
    };
    with_metron(&[
        "create",
        "--disk-limit-size-bytes",
        "1048576",
        "--exclude-image-from-quota",
        &oci("busybox"),
        "m",
    ]);
    with_metron(&["stats", "m"]);
    with_metron(&["delete", "m"]);
    with_metron(&["clean"]);
    let mut got = std::collections::BTreeMap::<String, (f64, String)>::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = metron.recv(&mut buf) {
        let e: nestfs::metrics::Envelope = prost::Message::decode(&buf[..n]).expect("envelope");
        assert_eq!(e.origin, "grootfs");
        assert_eq!(e.event_type, 6, "a ValueMetric");
        let m = e.value_metric.expect("a value metric");
        got.entry(m.name).or_insert((m.value, m.unit));
    }
    for (name, unit) in [
        ("ImageCreationTime", "nanos"),
        ("UnpackTime", "nanos"),
        ("SharedLockingTime", "nanos"),
        ("ImageStatsTime", "nanos"),
        ("ImageDeletionTime", "nanos"),
        ("ImageCleanTime", "nanos"),
        ("ExclusiveLockingTime", "nanos"),
        ("UnusedLayersSize", "bytes"),
        ("UsedLayersSize", "bytes"),
        ("DownloadedLayersSizeInBytes", "bytes"),
        ("CommittedQuotaInBytes", "bytes"),
        ("UsedBackingStoreInBytes", "bytes"),
    ] {
        let (value, u) = got
            .get(name)
            .unwrap_or_else(|| panic!("no {name}: {got:?}"));
        assert_eq!(u, unit, "{name}");
        assert!(*value >= 0.0, "{name}");
    }
    assert_eq!(
        got["CommittedQuotaInBytes"].0, 1048576.0,
        "the first create's quota"
    );
    assert!(got["ImageCreationTime"].0 > 0.0);
    assert!(got["DownloadedLayersSizeInBytes"].0 > 0.0);
}

/// Messages GrootFS's logging and OCI specs match on, and io errors that name their cause once.
#[test]
fn messages_end_as_grootfs_words_them() {
    let s = TestStore::new();
    let r = s.run(&["--log-file", "/path/to/log_file.log", "list"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stdout.trim(),
        "failed to configure logger: open /path/to/log_file.log: no such file or directory"
    );
    let r = s.run(&["create", "oci:///cfgarden/sorry-not-here", "x"]);
    assert!(r.stdout.starts_with("Image source doesn't exist"), "{r:#?}");
    let r = s.run(&["create", "/non/existent/rootfs", "x"]);
    assert!(
        r.stdout
            .trim()
            .ends_with("stat /non/existent/rootfs: no such file or directory"),
        "{r:#?}"
    );
    let r: common::Run = std::process::Command::new(common::bin())
        .args(["--store", "/proc/nope/store", "init-store"])
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stdout.matches("no such file or directory").count(),
        1,
        "the cause once: {r:#?}"
    );
}

/// Metrics never fail a command: an endpoint that does not resolve is logged and ignored.
#[test]
fn a_bad_metron_endpoint_is_logged_not_fatal() {
    let s = TestStore::new();
    let r = s
        .run(&[
            "--log-level",
            "error",
            "--metron-endpoint",
            "no-such-host.invalid:3457",
            "clean",
        ])
        .ok();
    assert!(r.stderr.contains("failed-to-emit-metric"), "{r:#?}");
}

/// A clean log file that cannot be opened fails the create before anything is pulled.
#[test]
fn an_unopenable_clean_log_file_fails_before_pulling() {
    require_root_fuse!();
    let s = TestStore::new();
    let r = s.run(&[
        "create",
        "--with-clean",
        "--clean-log-file",
        "/nonexistent/dir/clean.log",
        &oci("busybox"),
        "x",
    ]);
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stdout
            .contains("open clean log file /nonexistent/dir/clean.log"),
        "{r:#?}"
    );
    assert!(!s.root().join("images/x").exists());
    assert_eq!(
        std::fs::read_dir(s.root().join("volumes")).unwrap().count(),
        0
    );
}

//! Store commands through the real binary: init-store, list, capacity, delete of unknown ids,
//! errors on stdout, lager logs and the config file.

#[allow(dead_code)]
mod common;

use common::TestStore;

#[test]
fn init_store_is_idempotent_and_checks_mappings() {
    let s = TestStore::uninitialised();
    let m = [
        "init-store",
        "--uid-mapping",
        "0:100000:65536",
        "--gid-mapping",
        "0:100000:65536",
    ];
    s.run(&m).ok();
    s.run(&m).ok();
    let r = s.run(&["init-store", "--uid-mapping", "0:200000:65536"]);
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stdout.contains("different id mappings"), "{r:#?}");
    let r = s.run(&["init-store", "--uid-mapping", "nonsense"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stdout.contains("nonsense"),
        "the bad value is named on stdout: {r:#?}"
    );
}

#[test]
fn commands_on_an_uninitialised_store_say_so_on_stdout() {
    let s = TestStore::uninitialised();
    for args in [
        &["create", "oci:///nowhere", "x"][..],
        &["stats", "x"],
        &["list"],
        &["capacity"],
    ] {
        let r = s.run(args);
        assert_eq!(r.code, 1, "{args:?}: {r:#?}");
        let want = match args[0] {
            "create" => "Store path is not initialized. Please run init-store.",
            "stats" => "Image `x` not found.",
            _ => "no store found at",
        };
        assert!(r.stdout.contains(want), "{args:?}: {r:#?}");
        assert_eq!(
            r.stderr, "",
            "{args:?}: the default level writes nothing to stderr, as GrootFS's"
        );
    }
}

#[test]
fn delete_of_an_unknown_id_succeeds_and_stats_fails() {
    let s = TestStore::new();
    s.run(&["delete", "never-made"]).ok();
    s.run(&["delete", "/some/other/path"]).ok();
    let r = s.run(&["stats", "never-made"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("Image `never-made` not found."), "{r:#?}");
}

#[test]
fn list_and_capacity() {
    let s = TestStore::new();
    assert_eq!(s.run(&["list"]).ok().stdout.trim(), "Store empty");
    let cap = s.run(&["capacity"]).ok().json()["capacity"]
        .as_u64()
        .unwrap();
    assert!(cap > 0);
    let sized = TestStore::uninitialised();
    sized
        .run(&["init-store", "--store-size-bytes", "12345"])
        .ok();
    assert_eq!(
        sized.run(&["capacity"]).ok().json(),
        serde_json::json!({ "capacity": 12345 })
    );
}

#[test]
fn bad_ids_and_references_fail_with_one_line() {
    let s = TestStore::new();
    for (args, want) in [
        (
            &["create", "oci:///x", "a/b"][..],
            "id `a/b` contains invalid characters: `/`",
        ),
        (&["create", "oci:///x", ".."], "contains invalid characters"),
        (&["create", "not a reference at all", "ok-id"], ""),
    ] {
        let r = s.run(args);
        assert_eq!(r.code, 1, "{args:?}: {r:#?}");
        assert_eq!(
            r.stdout.trim().lines().count(),
            1,
            "one line on stdout: {r:#?}"
        );
        assert!(r.stdout.contains(want), "{args:?}: {r:#?}");
    }
    assert!(
        !s.root().join("images/ok-id").exists(),
        "a failed create leaves no image"
    );
}

#[test]
fn lager_logs_every_line_with_data() {
    let s = TestStore::new();
    let r = s
        .run(&["--log-level", "debug", "delete", "nothing-here"])
        .ok();
    assert!(!r.stderr.is_empty(), "debug logs expected");
    for line in r.stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["data"].is_object(), "no data object: {line}");
        assert_eq!(v["source"], "nestfs");
        assert!(
            v["message"].as_str().unwrap().starts_with("nestfs.delete."),
            "{line}"
        );
        assert!(
            ["debug", "info", "error", "fatal"].contains(&v["level"].as_str().unwrap()),
            "{line}"
        );
        assert_rfc3339(v["timestamp"].as_str().unwrap());
    }
    let r = s.run(&["--log-level", "loud", "list"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("invalid log level"), "{r:#?}");
}

/// lager's timestamp as GrootFS writes it: `2026-12-06T05:01:34.123456789Z`.
fn assert_rfc3339(t: &str) {
    let shape: String = t
        .chars()
        .map(|c| if c.is_ascii_digit() { 'd' } else { c })
        .collect();
    assert_eq!(shape, "dddd-dd-ddTdd:dd:dd.dddddddddZ", "{t}");
}

/// Garden re-logs the plugin's stderr write by write: each write(2) must be one whole line.
/// A datagram socket as stderr keeps the writes apart.
#[test]
fn every_log_line_leaves_in_one_write() {
    use std::os::fd::OwnedFd;
    let s = TestStore::new();
    let (theirs, ours) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let child = s
        .cmd()
        .args(["--log-level", "debug", "create", "/no/such/rootfs.tar", "x"])
        .stdout(std::process::Stdio::null())
        .stderr(OwnedFd::from(theirs))
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    ours.set_nonblocking(true).unwrap();
    let mut writes = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = ours.recv(&mut buf) {
        writes.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(writes.len() >= 2, "debug logs expected: {writes:?}");
    for w in &writes {
        assert!(
            w.ends_with('\n') && w.matches('\n').count() == 1,
            "a write that is not one line: {w:?}"
        );
        let v: serde_json::Value = serde_json::from_str(w).unwrap_or_else(|e| panic!("{e}: {w}"));
        assert!(v["data"].is_object(), "{w}");
    }
    assert!(
        writes
            .iter()
            .any(|w| w.contains("no such file or directory")),
        "the failure is logged: {writes:?}"
    );
}

/// `--log-file` without a level logs at info (GrootFS's rule); a config that only sets the
/// store size answers `capacity` without a store, as GrootFS's does.
#[test]
fn a_log_file_alone_logs_at_info_and_capacity_reads_the_config() {
    let s = TestStore::uninitialised();
    let log = s.dir.path().join("log.json");
    let r = s.run(&[
        "--log-file",
        log.to_str().unwrap(),
        "create",
        "/no/such.tar",
        "x",
    ]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr, "");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(r#""level":"error""#), "{text}");
    assert!(!text.contains(r#""level":"debug""#), "{text}");
    let cfg = s.dir.path().join("config.yml");
    std::fs::write(&cfg, "store: \"\"\nlog_level: \"\"\nlog_file: \"\"\nmetron_endpoint: \"\"\ninit:\n  store_size_bytes: 190092\n").unwrap();
    let r = s.run(&["--config", cfg.to_str().unwrap(), "capacity"]).ok();
    assert_eq!(r.json(), serde_json::json!({ "capacity": 190092 }));
    assert_eq!(r.stderr, "", "empty log_level and log_file mean unset");
    std::fs::write(&cfg, "create:\n  disk_limit_size_bytes: -1\n").unwrap();
    let r = s.run(&["--config", cfg.to_str().unwrap(), "capacity"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stdout.trim(),
        "invalid argument: disk limit cannot be negative"
    );
}

#[test]
fn config_file_keys_apply_and_flags_win() {
    let s = TestStore::uninitialised();
    let cfg = s.dir.path().join("config.yml");
    let log = s.dir.path().join("log.json");
    std::fs::write(
        &cfg,
        format!(
            "store: {}\nlog_level: debug\nlog_file: {}\ntardis_bin: /ignored\ninit:\n  store_size_bytes: 777\n",
            s.root().display(),
            log.display()
        ),
    )
    .unwrap();
    let r = std::process::Command::new(common::bin())
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--tardis-bin",
            "/x",
            "init-store",
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{r:?}");
    assert!(
        s.root().join("store.json").exists(),
        "store taken from the config file"
    );
    let r = std::process::Command::new(common::bin())
        .args(["--config", cfg.to_str().unwrap(), "capacity"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        r#"{"capacity":777}"#
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("nestfs.capacity.starting")
    );
    let r = std::process::Command::new(common::bin())
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--log-level",
            "fatal",
            "--log-file",
            "/dev/null",
            "list",
        ])
        .output()
        .unwrap();
    assert!(r.status.success());
}

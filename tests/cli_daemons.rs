//! The life of per-image daemons through the real binary: state reported by `list`, the
//! control socket, `remount` after a daemon died or its mount vanished, deletes of busy, dead
//! and concurrent images, a daemon that cannot mount, and many images at once.

#[allow(dead_code)]
mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestStore, daemons_for, mounts_under, oci};

fn state(s: &TestStore, id: &str) -> String {
    let list = s.run(&["list", "--json"]).ok().json();
    list.as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed: {list}"))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn kill_daemons(s: &TestStore) {
    assert!(!daemons_for(s.dir.path()).is_empty(), "no daemon to kill");
    common::kill_image_daemons(s.dir.path());
}

/// Runs nestfs with `args` in a mount namespace where /dev/fuse is /dev/null, so that the mount(2)
/// of any daemon it starts fails.
fn without_fuse(s: &TestStore, args: &[&str]) -> common::Run {
    let script = format!(
        "mount --bind /dev/null /dev/fuse && exec {} --store {} {}",
        common::bin(),
        s.root().display(),
        args.join(" ")
    );
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap()
        .into()
}

fn assert_nothing_left(s: &TestStore) {
    assert!(
        mounts_under(s.dir.path()).is_empty(),
        "mounts left: {:?}",
        mounts_under(s.dir.path())
    );
    assert!(
        daemons_for(s.dir.path()).is_empty(),
        "daemons left: {:?}",
        daemons_for(s.dir.path())
    );
    assert!(
        common::keepers_for(s.dir.path()).is_empty(),
        "keepers left: {:?}",
        common::keepers_for(s.dir.path())
    );
    let images: Vec<_> = std::fs::read_dir(s.root().join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(images.is_empty(), "image dirs left: {images:?}");
}

#[test]
fn killed_daemon_is_reported_remounted_with_its_data_and_deleted() {
    require_root_fuse!();
    let s = TestStore::new();
    let rootfs = s.create(&oci("busybox"), "k");
    assert_eq!(state(&s, "k"), "mounted");
    std::fs::write(rootfs.join("kept"), vec![5u8; 100_000]).unwrap();
    let live = s.run(&["stats", "k"]).ok().json();
    kill_daemons(&s);
    assert_eq!(state(&s, "k"), "daemon-dead");
    let err = std::fs::read_dir(&rootfs).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    // Without a daemon, stats scans the upper dir and agrees with the live counter.
    assert_eq!(s.run(&["stats", "k"]).ok().json(), live);

    let r = s.run(&["remount"]).ok();
    assert_eq!(r.stdout.trim(), rootfs.display().to_string());
    assert_eq!(state(&s, "k"), "mounted");
    assert_eq!(
        std::fs::read(rootfs.join("kept")).unwrap(),
        vec![5u8; 100_000]
    );
    assert_eq!(s.run(&["stats", "k"]).ok().json(), live);
    // Serving what is already served is a no-op, by id or for all.
    assert_eq!(s.run(&["remount", "k"]).ok().stdout.trim(), "");
    assert_eq!(daemons_for(s.dir.path()).len(), 1);
    s.run(&["delete", "k"]).ok();
    assert_nothing_left(&s);
}

#[test]
fn after_a_reboot_images_are_not_mounted_and_remount_serves_them() {
    require_root_fuse!();
    let s = TestStore::new();
    let a = s.create(&oci("busybox"), "a");
    let b = s.create(&oci("busybox"), "b");
    std::fs::write(a.join("note"), "from before the reboot").unwrap();
    // A reboot: daemons gone and no mounts at all.
    kill_daemons(&s);
    for m in mounts_under(s.dir.path()) {
        common::detach(Path::new(&m)).unwrap();
    }
    assert_eq!(state(&s, "a"), "not-mounted");
    assert_eq!(
        s.run(&["list", "--json"])
            .ok()
            .stdout
            .matches("not-mounted")
            .count(),
        2
    );
    s.run(&["stats", "b"]).ok();
    let r = s.run(&["remount"]).ok();
    assert_eq!(r.stdout.lines().count(), 2, "{r:?}");
    assert_eq!(
        std::fs::read_to_string(a.join("note")).unwrap(),
        "from before the reboot"
    );
    assert!(b.join("bin/busybox").exists());
    // An image whose daemon never came back is deleted just as well.
    kill_daemons(&s);
    let _ = common::detach(&b);
    s.run(&["delete", "a"]).ok();
    s.run(&["delete", "b"]).ok();
    assert_nothing_left(&s);
    let r = s.run(&["remount", "nope"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout.trim(), "Image `nope` not found.");
}

#[test]
fn delete_of_a_busy_rootfs_detaches_it_and_its_daemon_serves_the_last_user() {
    require_root_fuse!();
    let s = TestStore::new();
    let rootfs = s.create(&oci("busybox"), "busy");
    std::fs::write(rootfs.join("open-me"), "still readable").unwrap();
    // A process with its cwd in the rootfs and a file open there.
    let mut user = Command::new("sh")
        .args([
            "-c",
            "exec 3<open-me; read -r line; cat <&3; echo ' and writable' > late; cat late",
        ])
        .current_dir(&rootfs)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    s.run(&["delete", "busy"]).ok();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "delete waited for the busy rootfs"
    );
    assert!(mounts_under(s.dir.path()).is_empty(), "still mounted");
    assert!(!s.root().join("images/busy").exists());
    assert_eq!(
        daemons_for(s.dir.path()).len(),
        1,
        "the daemon must keep serving the detached rootfs's last user"
    );
    drop(user.stdin.take()); // let it read its open file and exit
    let mut out = String::new();
    user.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(user.wait().unwrap().success());
    assert_eq!(
        out, "still readable and writable\n",
        "the upper dir stays while its last user works in it"
    );
    let start = Instant::now();
    while !daemons_for(s.dir.path()).is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_nothing_left(&s);
}

/// A container in its own mount namespace keeps a mount of the rootfs after `delete` unmounts
/// the host's: the daemon serves it on (never killed), its writes land in the kept upper dir,
/// and once the container is gone the daemon exits and the retired image goes with it.
#[test]
fn delete_while_a_container_in_another_mount_namespace_uses_the_rootfs() {
    require_root_fuse!();
    let s = TestStore::new();
    let rootfs = s.create(&oci("busybox"), "ns");
    let mut container = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(
            "cd \"$1\" && read -r go && ls bin/busybox && echo written > after-delete \
             && cat after-delete && sync",
        )
        .args(["sh", rootfs.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    s.run(&["delete", "ns"]).ok();
    assert!(start.elapsed() < Duration::from_secs(5), "delete hung");
    assert!(!s.root().join("images/ns").exists(), "the id is free");
    assert!(mounts_under(s.dir.path()).is_empty(), "unmounted here");
    assert_eq!(
        daemons_for(s.dir.path()).len(),
        1,
        "the daemon must not be killed"
    );
    // The id can be used again at once.
    s.create(&oci("busybox"), "ns");
    container.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = container.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text, "bin/busybox\nwritten\n");
    s.run(&["delete", "ns"]).ok();
    let start = Instant::now();
    while !daemons_for(s.dir.path()).is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_nothing_left(&s);
}

#[test]
fn twenty_concurrent_creates_and_deletes_and_double_deletes() {
    require_root_fuse!();
    let s = TestStore::new();
    let image = oci("busybox");
    s.create(&image, "warm"); // layers cached: the race is about daemons, not pulls
    let spawn = |args: &[&str]| s.cmd().args(args).stdout(Stdio::piped()).spawn().unwrap();
    let creates: Vec<_> = (0..20)
        .map(|i| spawn(&["create", &image, &format!("c{i}")]))
        .collect();
    for c in creates {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    assert_eq!(daemons_for(s.dir.path()).len(), 21);
    // Each image deleted twice at once, plus creates of new ids meanwhile.
    let mut jobs: Vec<_> = (0..20)
        .flat_map(|i| {
            let id = format!("c{i}");
            [spawn(&["delete", &id]), spawn(&["delete", &id])]
        })
        .collect();
    jobs.extend((0..5).map(|i| spawn(&["create", &image, &format!("n{i}")])));
    for j in jobs {
        let out = j.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    assert_eq!(mounts_under(s.dir.path()).len(), 6, "warm + n0..n4 remain");
    for id in ["warm", "n0", "n1", "n2", "n3", "n4"] {
        assert_eq!(state(&s, id), "mounted");
        s.run(&["delete", id]).ok();
    }
    assert_nothing_left(&s);
}

#[test]
fn a_dev_fuse_that_cannot_mount_fails_create_before_pulling_and_leaves_nothing() {
    require_root_fuse!();
    let s = TestStore::new();
    let r = without_fuse(&s, &["create", &oci("busybox"), "broken"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains("/dev/fuse is not the FUSE device"),
        "the trial mount before the pull says what is wrong: {r:?}"
    );
    assert_eq!(r.stdout.trim().lines().count(), 1);
    assert_nothing_left(&s);
    let volumes = std::fs::read_dir(s.root().join("volumes")).unwrap().count();
    assert_eq!(volumes, 0, "nothing pulled");
    // The id is free again.
    s.create(&oci("busybox"), "broken");
    s.run(&["delete", "broken"]).ok();
}

#[test]
fn a_remount_whose_daemon_cannot_mount_fails_and_keeps_the_image() {
    require_root_fuse!();
    let s = TestStore::new();
    let rootfs = s.create(&oci("busybox"), "r");
    std::fs::write(rootfs.join("kept"), "upper data").unwrap();
    kill_daemons(&s);
    common::detach(&rootfs).unwrap();
    let r = without_fuse(&s, &["remount", "r"]);
    assert_eq!(r.code, 1, "{r:?}");
    // The daemon's own words on why, from its readiness pipe: its mount failed.
    let rootfs_path = rootfs.display().to_string();
    assert!(
        r.stdout.contains("image daemon exited")
            && r.stdout
                .contains(&format!("before mounting: mount {rootfs_path}")),
        "{r:?}"
    );
    // Nothing mounted, no daemon, and no control socket to mistake for a dead daemon's.
    assert_eq!(state(&s, "r"), "not-mounted");
    assert!(daemons_for(s.dir.path()).is_empty());
    assert!(!s.root().join("images/r/control.sock").exists());
    // The upper dir is intact: a remount that can mount serves it again.
    s.run(&["remount", "r"]).ok();
    assert_eq!(
        std::fs::read_to_string(rootfs.join("kept")).unwrap(),
        "upper data"
    );
    s.run(&["delete", "r"]).ok();
    assert_nothing_left(&s);
}

#[test]
fn without_mount_still_returns_a_mounted_rootfs_and_no_mounts() {
    require_root_fuse!();
    let s = TestStore::new();
    let r = s
        .run(&["create", "--without-mount", &oci("busybox"), "wm"])
        .ok();
    let spec = r.json();
    assert!(spec.get("mounts").is_none(), "{spec}");
    let rootfs = Path::new(spec["root"]["path"].as_str().unwrap());
    assert!(rootfs.join("bin/busybox").exists());
    s.run(&["delete", "wm"]).ok();
    assert_nothing_left(&s);
}

#[test]
fn a_hundred_images_mounted_at_once() {
    require_root_fuse!();
    let s = TestStore::new();
    let image = oci("busybox");
    let roots: Vec<_> = (0..100)
        .map(|i| s.create(&image, &format!("h{i}")))
        .collect();
    assert_eq!(daemons_for(s.dir.path()).len(), 100);
    for (i, r) in roots.iter().enumerate() {
        std::fs::write(r.join("id"), i.to_string()).unwrap();
    }
    for (i, r) in roots.iter().enumerate() {
        assert_eq!(
            std::fs::read_to_string(r.join("id")).unwrap(),
            i.to_string()
        );
        assert!(r.join("bin/busybox").exists());
    }
    let list = s.run(&["list", "--json"]).ok().stdout;
    assert_eq!(list.matches(r#""state":"mounted""#).count(), 100, "{list}");
    s.run(&["delete-store"]).ok();
    assert!(mounts_under(s.dir.path()).is_empty());
    assert!(daemons_for(s.dir.path()).is_empty());
}

#[test]
fn a_relative_store_path_works() {
    require_root_fuse!();
    let s = TestStore::uninitialised();
    let run = |args: &[&str]| -> common::Run {
        Command::new(common::bin())
            .args(["--store", "store"])
            .args(args)
            .current_dir(s.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .into()
    };
    assert_eq!(run(&["init-store"]).code, 0);
    let r = run(&["create", &oci("busybox"), "rel"]);
    assert_eq!(r.code, 0, "{r:#?}");
    let rootfs = s.root().join("images/rel/rootfs");
    assert_eq!(
        r.json()["root"]["path"],
        rootfs.to_str().unwrap(),
        "an absolute path"
    );
    assert!(rootfs.join("bin/busybox").exists());
    assert_eq!(run(&["delete", "rel"]).code, 0);
    assert_nothing_left(&s);
}

#[test]
fn a_daemon_answers_its_control_socket_from_the_moment_its_rootfs_is_mounted() {
    require_root_fuse!();
    let s = TestStore::new();
    let rootfs = s.create(&oci("busybox"), "r");
    let sock = s.root().join("images/r/control.sock");
    for round in 0..10 {
        // As after a reboot: no daemon, no mount, a stale socket file.
        kill_daemons(&s);
        common::detach(&rootfs).unwrap();
        let remount = s
            .cmd()
            .arg("remount")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while mounts_under(s.dir.path()).is_empty() {
            assert!(start.elapsed() < Duration::from_secs(10), "never mounted");
        }
        // Connecting is all `list` needs to tell a live daemon from a dead one.
        let conn = std::os::unix::net::UnixStream::connect(&sock);
        assert!(conn.is_ok(), "round {round}: mounted but {conn:?}");
        drop(conn);
        assert!(remount.wait_with_output().unwrap().status.success());
    }
    s.run(&["delete", "r"]).ok();
    assert_nothing_left(&s);
}

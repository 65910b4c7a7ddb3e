//! Rootless and nested operation through the real binary: a non-root user created by the
//! harness runs init-store, create, a container (`unshare -Ur`), stats and delete with a store
//! in their home; the image's owners, modes, setuid bits and device nodes show as the tar
//! headers say although the user could neither chown nor mknod; mapped stores show layer ids
//! through the mapping and store the container's writes with host ids; stores on tmpfs and on
//! overlayfs, with /dev/loop* hidden, work for root and non-root alike; a user pulls an
//! eStargz image lazily.
//!
//! Each scenario runs in its own mount namespace (`unshare -m`): there /dev/fuse is a
//! world-usable copy of the device (this machine's is root-only; Debian's is 0666) and the
//! store's filesystem is mounted, so nothing outside changes and every mount ends with it.

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
#[path = "support/registry.rs"]
mod registry;
#[path = "support/users.rs"]
mod users;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Run, daemons_for, oci};
use users::{USER, test_user};

/// Concurrent first uses make the user once: one uid, its own home, one subordinate range.
#[test]
fn the_test_user_is_made_once() {
    require_root_fuse!();
    let users: Vec<_> = (0..4).map(|_| std::thread::spawn(test_user)).collect();
    let ids: Vec<_> = users.into_iter().map(|t| t.join().unwrap()).collect();
    let Some((uid, _)) = ids[0] else {
        eprintln!("SKIP the_test_user_is_made_once: cannot create users here");
        return;
    };
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let home = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(format!("/home/{USER}")).expect("home"),
    );
    assert_eq!(home, uid, "the home dir belongs to the user");
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let ranges = text
            .lines()
            .filter(|l| l.starts_with(&format!("{USER}:")))
            .count();
        assert_eq!(ranges, 1, "{file}: {text}");
    }
}

/// A scratch dir that the test user can use, removed (daemons killed first) on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(owner: (u32, u32)) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("nestfs-rootless-")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let fuse = dir.join("fuse");
        let mode = rustix::fs::Mode::from_raw_mode(0o666);
        let dev = rustix::fs::makedev(10, 229);
        let kind = rustix::fs::FileType::CharacterDevice;
        rustix::fs::mknodat(rustix::fs::CWD, &fuse, kind, mode, dev).expect("mknod");
        rustix::fs::chmod(&fuse, mode).expect("chmod");
        std::os::unix::fs::chown(&dir, Some(owner.0), Some(owner.1)).unwrap();
        Scratch { dir }
    }

    /// Runs `root_setup` as root, then `user_script` as the test user (or as root), in one
    /// private mount namespace where /dev/fuse is usable by everyone and /dev/loop* is hidden.
    fn run(&self, root_setup: &str, user_script: &str, as_user: bool) -> Run {
        let user_part = if as_user {
            format!("exec runuser -u {USER} -- sh -ec {}", quote(user_script))
        } else {
            format!("exec sh -ec {}", quote(user_script))
        };
        let script = format!(
            "set -e; mount --bind {fuse} /dev/fuse; \
             for l in /dev/loop*; do [ -e \"$l\" ] && mount --bind /dev/null \"$l\"; done; \
             cd {dir}; {root_setup}\n{user_part}",
            fuse = self.dir.join("fuse").display(),
            dir = self.dir.display(),
        );
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-ec", &script])
            .env("NESTFS", common::bin())
            .env("DIR", &self.dir)
            .output()
            .unwrap()
            .into()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for pid in daemons_for(&self.dir) {
            common::kill(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

macro_rules! require_user {
    () => {{
        require_root_fuse!();
        match test_user() {
            Some(ids) => ids,
            None => {
                eprintln!("SKIP {}: cannot create the user {USER}", module_path!());
                return;
            }
        }
    }};
}

/// A rootfs tarball with what an unprivileged unpack cannot make for real.
fn hard_image(dir: &Path) -> PathBuf {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, uid: u64, gid: u64, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        if kind == tar::EntryType::Char {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        b.append_data(&mut h, path, data).unwrap();
    };
    use tar::EntryType::{Char, Directory, Fifo, Regular};
    add("etc", Directory, 0o755, 0, 0, b"");
    add(
        "etc/passwd",
        Regular,
        0o644,
        0,
        0,
        b"root:x:0:0::/root:/bin/sh\n",
    );
    add("etc/shadow", Regular, 0o640, 0, 42, b"root:*:1::::::\n");
    add("bin", Directory, 0o755, 0, 0, b"");
    add("bin/su", Regular, 0o4755, 0, 0, b"#!/bin/sh\n");
    add("dev", Directory, 0o755, 0, 0, b"");
    add("dev/null", Char, 0o666, 0, 0, b"");
    add("dev/pipe", Fifo, 0o600, 0, 0, b"");
    add("locked", Directory, 0o555, 0, 0, b"");
    add("locked/inner", Regular, 0o400, 0, 0, b"secret");
    add("home", Directory, 0o755, 0, 0, b"");
    add("home/alice", Directory, 0o2750, 1000, 1000, b"");
    add("home/alice/notes", Regular, 0o600, 1000, 1000, b"mine");
    let path = dir.join("hard.tar");
    std::fs::write(&path, b.into_inner().unwrap()).unwrap();
    path
}

/// `stat` of the hard image's entries: "uid gid mode(octal incl. type) rdev(major,minor) name".
/// Entries the viewer may not search (alice's 2750 dir) print "denied NAME".
const STAT_ENTRIES: &str = "for p in etc/passwd etc/shadow bin/su dev/null dev/pipe locked locked/inner \
    home/alice home/alice/notes; do stat -c \"%u %g %f %t,%T $p\" \"$ROOTFS/$p\" 2>/dev/null \
    || echo \"denied $p\"; done";

/// What `STAT_ENTRIES` prints for the hard image with ids through `map`; `alice_hidden` when
/// the viewer is neither alice nor in her group (as the kernel checks with the shown ids).
fn expected(map: impl Fn(u32) -> u32, alice_hidden: bool) -> String {
    let rows: [(u32, u32, u32, &str, &str); 9] = [
        (0, 0, libc::S_IFREG | 0o644, "0,0", "etc/passwd"),
        (0, 42, libc::S_IFREG | 0o640, "0,0", "etc/shadow"),
        (0, 0, libc::S_IFREG | 0o4755, "0,0", "bin/su"),
        (0, 0, libc::S_IFCHR | 0o666, "1,3", "dev/null"),
        (0, 0, libc::S_IFIFO | 0o600, "0,0", "dev/pipe"),
        (0, 0, libc::S_IFDIR | 0o555, "0,0", "locked"),
        (0, 0, libc::S_IFREG | 0o400, "0,0", "locked/inner"),
        (1000, 1000, libc::S_IFDIR | 0o2750, "0,0", "home/alice"),
        (1000, 1000, libc::S_IFREG | 0o600, "0,0", "home/alice/notes"),
    ];
    rows.iter()
        .map(|(u, g, m, dev, p)| {
            if alice_hidden && *p == "home/alice/notes" {
                format!("denied {p}\n")
            } else {
                format!("{} {} {m:x} {dev} {p}\n", map(*u), map(*g))
            }
        })
        .collect()
}

fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let start = out
        .find(&format!("=={name}==\n"))
        .unwrap_or_else(|| panic!("no section {name} in {out}"))
        + name.len()
        + 5;
    let end = out[start..].find("==").map_or(out.len(), |i| start + i);
    &out[start..end]
}

#[test]
fn a_user_without_privileges_runs_the_whole_lifecycle() {
    let (uid, gid) = require_user!();
    let s = Scratch::new((uid, gid));
    let image = hard_image(&s.dir);
    let script = format!(
        r#"
        S=$DIR/store
        $NESTFS --store $S init-store
        $NESTFS --store $S create {image} hard > /dev/null
        ROOTFS=$S/images/hard/rootfs
        echo ==outside==; {STAT_ENTRIES}
        echo ==inside==
        unshare -Ur sh -ec 'export ROOTFS='$ROOTFS'; {STAT_ENTRIES}; id -u; echo written > $ROOTFS/etc/motd; mkdir $ROOTFS/newdir; cat $ROOTFS/locked/inner; echo'
        echo ==upper==; stat -c "%u %g %n" $S/images/hard/upper/etc/motd $S/images/hard/upper/newdir
        echo ==stats==; $NESTFS --store $S stats hard
        echo ==list==; $NESTFS --store $S list
        $NESTFS --store $S delete hard
        echo ==after==; ls $S/images; grep -c $S /proc/self/mounts || true
        "#,
        image = image.display(),
    );
    let r = s.run("", &script, true);
    assert_eq!(r.code, 0, "{r:#?}");
    let out = &r.stdout;
    // Outside, the layers' ids show through the store's default mapping (0 -> the user).
    let to_user = |id: u32| if id == 0 { uid } else { 65534 };
    let to_user_g = |id: u32| if id == 0 { gid } else { 65534 };
    let outside_expected: String = expected(|x| x, true)
        .lines()
        .map(|l| {
            if l.starts_with("denied") {
                return format!("{l}\n");
            }
            let mut f = l.splitn(3, ' ');
            let (u, g, rest) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            format!(
                "{} {} {rest}\n",
                to_user(u.parse().unwrap()),
                to_user_g(g.parse().unwrap())
            )
        })
        .collect();
    assert_eq!(section(out, "outside"), outside_expected);
    // Inside the user namespace the image's root owns its files, modes are the headers'.
    let inside = section(out, "inside");
    let inside_expected: String = expected(|id| if id == 0 { 0 } else { 65534 }, true);
    assert!(
        inside.starts_with(&inside_expected),
        "{inside}\nvs\n{inside_expected}"
    );
    assert!(
        inside.contains("\n0\n") && inside.contains("secret"),
        "{inside}"
    );
    assert_eq!(
        section(out, "upper"),
        format!(
            "{uid} {gid} {up}/etc/motd\n{uid} {gid} {up}/newdir\n",
            up = s.dir.join("store/images/hard/upper").display()
        )
    );
    assert!(section(out, "stats").contains("exclusive_bytes_used"));
    assert_eq!(
        section(out, "list"),
        format!("{}\n", s.dir.join("store/images/hard").display()),
        "list prints image paths, as GrootFS"
    );
    assert_eq!(section(out, "after"), "0\n", "no image, no mount");
    assert!(daemons_for(&s.dir).is_empty());
}

#[test]
fn mapped_stores_show_layer_ids_as_host_ids_and_keep_host_ids_in_the_upper_dir() {
    let (uid, gid) = require_user!();
    let s = Scratch::new((uid, gid));
    let image = hard_image(&s.dir);
    // Garden's unprivileged mapping and a small one as root, and a user's own (with subids).
    type Map = Box<dyn Fn(u32) -> u32>;
    let cases: Vec<(String, bool, Map)> = vec![
        (
            "--uid-mapping 0:4294967294:1 --uid-mapping 1:1:4294967293 \
             --gid-mapping 0:4294967294:1 --gid-mapping 1:1:4294967293"
                .into(),
            false,
            Box::new(|id| if id == 0 { 4294967294 } else { id }),
        ),
        (
            "--uid-mapping 0:100000:65536 --gid-mapping 0:100000:65536".into(),
            false,
            Box::new(|id| 100000 + id),
        ),
        (
            format!(
                "--uid-mapping 0:{uid}:1 --uid-mapping 1:100000:65536 \
                 --gid-mapping 0:{gid}:1 --gid-mapping 1:100000:65536"
            ),
            true,
            Box::new(move |id| if id == 0 { uid } else { 100000 + id - 1 }),
        ),
    ];
    for (i, (flags, as_user, map)) in cases.into_iter().enumerate() {
        let writer = map(0);
        let script = format!(
            r#"
            S=$DIR/store{i}
            $NESTFS --store $S init-store {flags}
            $NESTFS --store $S create {image} m > /dev/null
            ROOTFS=$S/images/m/rootfs
            echo ==shown==; {STAT_ENTRIES}
            echo ==root==; stat -c "%u %g" $ROOTFS
            {write}
            echo ==upper==; stat -c "%u %g" $S/images/m/upper/etc/made $S/images/m/upper/etc
            $NESTFS --store $S delete m
            "#,
            image = image.display(),
            write = if as_user {
                "echo x > $ROOTFS/etc/made".to_string()
            } else {
                format!(
                    "setpriv --reuid {writer} --regid {writer} --clear-groups sh -c 'echo x > '$ROOTFS/etc/made"
                )
            },
        );
        let r = s.run("", &script, as_user);
        assert_eq!(r.code, 0, "case {i}: {r:#?}");
        // Root reads everything; the user is not alice (host uid 100999) in the last case.
        assert_eq!(
            section(&r.stdout, "shown"),
            expected(&map, as_user),
            "case {i}"
        );
        assert_eq!(
            section(&r.stdout, "root"),
            format!("{} {}\n", map(0), map(0)),
            "the rootfs root is the mapped root's (case {i})"
        );
        assert_eq!(
            section(&r.stdout, "upper"),
            format!("{writer} {writer}\n{} {}\n", map(0), map(0)),
            "case {i}: written with host ids; the copied-up dir keeps its mapped owner"
        );
    }
    assert!(daemons_for(&s.dir).is_empty());
}

#[test]
fn stores_on_tmpfs_and_overlayfs_without_loop_devices_for_root_and_users() {
    let (uid, gid) = require_user!();
    let s = Scratch::new((uid, gid));
    let fixture = oci("busybox");
    for (fs, setup) in [
        ("tmpfs", "mkdir -p fs && mount -t tmpfs -o size=256m tmpfs fs".to_string()),
        (
            "overlay",
            "mkdir -p lo up wk fs && mount -t overlay overlay -o lowerdir=lo,upperdir=up,workdir=wk fs"
                .to_string(),
        ),
    ] {
        for as_user in [false, true] {
            let script = format!(
                r#"
                S=$DIR/fs/store
                stat -f -c ==fstype==%T $DIR/fs; echo
                for l in /dev/loop*; do if [ -b "$l" ] && head -c1 "$l" >/dev/null 2>&1; then echo LOOP-USABLE; fi; done
                $NESTFS --store $S init-store
                $NESTFS --store $S create --disk-limit-size-bytes 8000000 --exclude-image-from-quota {fixture} n > /dev/null
                ROOTFS=$S/images/n/rootfs
                dd if=/dev/zero of=$ROOTFS/fill bs=1M count=20 2>/dev/null && echo NO-LIMIT || echo limit-hit
                rm $ROOTFS/fill
                echo hello > $ROOTFS/hello
                echo ==read==; cat $ROOTFS/hello; $ROOTFS/bin/busybox true && echo exec-ok
                echo ==stats==; $NESTFS --store $S stats n
                $NESTFS --store $S delete n
                $NESTFS --store $S delete-store
                echo ==done==
                "#
            );
            let chown = format!("{setup} && chown {uid}:{gid} fs");
            let r = s.run(&chown, &script, as_user);
            let who = if as_user { "user" } else { "root" };
            assert_eq!(r.code, 0, "{fs} as {who}: {r:#?}");
            let out = &r.stdout;
            assert!(out.contains(&format!("==fstype=={}", if fs == "tmpfs" { "tmpfs" } else { "overlayfs" })), "{out}");
            assert!(!out.contains("LOOP-USABLE"), "loop devices must be hidden: {out}");
            assert!(out.contains("limit-hit"), "{fs} as {who}: {out}");
            assert_eq!(section(out, "read"), "hello\nexec-ok\n", "{fs} as {who}");
            assert!(out.contains("==done=="));
        }
    }
    assert!(daemons_for(&s.dir).is_empty());
}

#[test]
fn missing_pieces_are_named() {
    let (uid, gid) = require_user!();
    let s = Scratch::new((uid, gid));
    // /dev/fuse unusable by the user (mode 0600 here, as on this machine by default).
    let r = s.run(
        "chmod 600 fuse",
        "S=$DIR/store; $NESTFS --store $S init-store; $NESTFS --store $S create /nonexistent.tar x || true",
        true,
    );
    assert!(
        r.stdout
            .contains("/dev/fuse is not readable and writable by uid"),
        "{r:#?}"
    );
    // No fusermount3 on PATH for an unprivileged user.
    let r = s.run(
        "chmod 666 fuse",
        "export PATH=/nonexistent; S=$DIR/store2; $NESTFS --store $S init-store; $NESTFS --store $S create /nonexistent.tar x || true",
        true,
    );
    assert!(r.stdout.contains("fusermount3 is not installed"), "{r:#?}");
    // no_new_privs (docker's no-new-privileges): the setuid fusermount3 cannot help.
    let r = s.run(
        "",
        "S=$DIR/store3; $NESTFS --store $S init-store; setpriv --no-new-privs $NESTFS --store $S create /nonexistent.tar x || true",
        true,
    );
    assert!(
        r.stdout.contains("no_new_privs") && r.stdout.contains("no-new-privileges"),
        "{r:#?}"
    );
}

#[test]
fn fixture_images_look_the_same_rootless_as_with_root() {
    let (uid, gid) = require_user!();
    let s = Scratch::new((uid, gid));
    // Modes of every entry, and which entries belong to the image's root, as a root store
    // shows them (real chown and mknod)...
    let listing = "find \"$ROOTFS\" -mindepth 1 -printf '%m %U:%G %y %P\\n' 2>/dev/null | sort";
    for fixture in ["busybox", "generated", "garden-rootfs"] {
        let root_script = format!(
            r#"
            S=$DIR/rootstore
            $NESTFS --store $S init-store
            $NESTFS --store $S create {image} f > /dev/null
            ROOTFS=$S/images/f/rootfs; {listing}
            $NESTFS --store $S delete-store
            "#,
            image = oci(fixture)
        );
        let as_root = s.run("", &root_script, false);
        assert_eq!(as_root.code, 0, "{as_root:#?}");
        // ...and as the user inside `unshare -Ur`, with a store in their home (default path).
        let user_script = format!(
            r#"
            export HOME=$DIR/home XDG_DATA_HOME=
            $NESTFS init-store
            $NESTFS create {image} f > /dev/null
            ROOTFS=$HOME/.local/share/nestfs/images/f/rootfs
            unshare -Ur sh -c "ROOTFS=$ROOTFS; {listing_q}"
            $NESTFS delete-store
            "#,
            image = oci(fixture),
            listing_q = listing.replace('"', "\\\""),
        );
        let as_user = s.run(
            &format!("mkdir -p home && chown {uid}:{gid} home"),
            &user_script,
            true,
        );
        assert_eq!(as_user.code, 0, "{as_user:#?}");
        // With one id mapped, the image's root shows as root and every other owner as 65534;
        // entries under directories only their owner may search are not listed by either view
        // the same way, so compare what both could see.
        let expect: std::collections::BTreeMap<String, String> = as_root
            .stdout
            .lines()
            .map(|l| {
                let (mode, rest) = l.split_once(' ').unwrap();
                let (owner, rest) = rest.split_once(' ').unwrap();
                let shown = if owner == "0:0" {
                    "0:0".to_string()
                } else {
                    "*".into()
                };
                (rest.to_string(), format!("{mode} {shown}"))
            })
            .collect();
        let mut compared = 0;
        for l in as_user.stdout.lines() {
            let (mode, rest) = l.split_once(' ').unwrap();
            let (owner, rest) = rest.split_once(' ').unwrap();
            let Some(want) = expect.get(rest) else {
                panic!("{fixture}: {rest} is not in the root view");
            };
            let (want_mode, want_owner) = want.split_once(' ').unwrap();
            assert_eq!(mode, want_mode, "{fixture}: mode of {rest}");
            if want_owner == "0:0" {
                assert_eq!(owner, "0:0", "{fixture}: owner of {rest}");
            } else {
                assert!(
                    owner.contains("65534"),
                    "{fixture}: {rest} owned by {owner}"
                );
            }
            compared += 1;
        }
        assert!(
            compared * 10 >= expect.len() * 9,
            "{fixture}: compared only {compared} of {} entries",
            expect.len()
        );
    }
    assert!(daemons_for(&s.dir).is_empty());
}

/// Stores are 0700 as GrootFS makes them: another host user cannot look into a root store's
/// images, a mapped store belongs to the container's root, a rootless store to its user.
#[test]
fn other_users_cannot_read_a_store() {
    let (uid, gid) = require_user!();
    let s = Scratch::new((uid, gid));
    let root_setup = format!(
        r#"
        $NESTFS --store $DIR/plain init-store
        $NESTFS --store $DIR/plain create {image} c > /dev/null
        echo secret > $DIR/plain/images/c/rootfs/secret
        $NESTFS --store $DIR/mapped init-store --uid-mapping 0:100000:65536 --gid-mapping 0:100001:65536
        "#,
        image = oci("busybox"),
    );
    let user_script = r#"
        stat -c 'plain %a %u:%g' $DIR/plain
        stat -c 'mapped %a %u:%g' $DIR/mapped
        ls $DIR/plain/images 2>/dev/null && echo listed-images || echo no-listing
        cat $DIR/plain/images/c/upper/secret 2>/dev/null || echo no-secret
        $NESTFS --store $DIR/mine init-store
        stat -c 'mine %a %u' $DIR/mine
    "#;
    let r = s.run(&root_setup, user_script, true);
    assert_eq!(r.code, 0, "{r:#?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "plain 700 0:0",
            "mapped 700 100000:100001",
            "no-listing",
            "no-secret",
            &format!("mine 700 {uid}"),
        ],
        "{r:#?}"
    );
}

#[test]
fn a_user_pulls_an_estargz_image_lazily() {
    let (uid, gid) = require_user!();
    let s = Scratch::new((uid, gid));
    let reg = registry::Registry::start(false);
    let data = nestfs_testimages::noise(7, 3 << 20);
    let layer = nestfs_testimages::busybox_layer().file("big", 0o644, data.clone());
    let src = s.dir.join("src");
    nestfs_testimages::write_layout(
        &src,
        &nestfs_testimages::Image {
            layers: vec![layer],
            env: None,
            tag: None,
        },
    )
    .unwrap();
    let esgz = s.dir.join("esgz");
    let out = Command::new(common::bin())
        .arg("convert")
        .arg(format!("oci://{}", src.display()))
        .arg(&esgz)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let image = reg.push(&esgz, "esgz", "v1");
    let script = format!(
        "export NESTFS_LAZY_COMPLETE_DELAY_MS=600000; S=$DIR/store; \
         $NESTFS --store $S init-store; \
         $NESTFS --store $S create --insecure-registry {addr} {image} lazy > /dev/null; \
         echo ==marked==; getfattr --absolute-names -n user.nestfs.lazy --only-values $S/volumes/*/big; echo; \
         echo ==sum==; sha256sum < $S/images/lazy/rootfs/big; \
         $NESTFS --store $S delete lazy",
        addr = reg.addr
    );
    let r = s.run("", &script, true);
    assert_eq!(r.code, 0, "{r:#?}");
    // The mark: the volume key's first 16 characters and the file's TOC entry.
    let mark = section(&r.stdout, "marked");
    let (tag, index) = mark.trim_end().split_once(':').unwrap_or_default();
    assert!(
        tag.len() == 16
            && tag.bytes().all(|b| b.is_ascii_hexdigit())
            && index.parse::<usize>().is_ok(),
        "{r:#?}"
    );
    let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
    assert!(section(&r.stdout, "sum").starts_with(&want), "{r:#?}");
    let served = reg.bytes_served(&lazy_digest(&esgz));
    assert!(
        served > 3 << 20,
        "the file came from the registry: {served}"
    );
}

/// The digest of the only layer of the layout at `dir`.
fn lazy_digest(dir: &Path) -> String {
    let read = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let index = read(dir.join("index.json"));
    let blob = |d: &serde_json::Value| {
        dir.join("blobs/sha256")
            .join(d.as_str().unwrap().trim_start_matches("sha256:"))
    };
    let m = read(blob(&index["manifests"][0]["digest"]));
    m["layers"][0]["digest"].as_str().unwrap().to_string()
}

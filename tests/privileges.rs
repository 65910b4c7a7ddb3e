//! Missing privileges are found before anything is pulled and named with what to add; root in a
//! user namespace that maps one uid (`unshare -Urm`) gets a store that records owners in xattrs.

#[allow(dead_code)]
mod common;

use std::process::Command;

use common::{Run, TestStore, oci};

fn sh(script: &str) -> Run {
    Command::new("sh")
        .args(["-c", script])
        .env("NESTFS", common::bin())
        .output()
        .expect("run sh")
        .into()
}

fn entries(p: &std::path::Path) -> usize {
    std::fs::read_dir(p).map_or(0, |d| d.count())
}

#[test]
fn without_cap_sys_admin_create_says_what_to_add_before_pulling() {
    require_root_fuse!();
    let s = TestStore::new();
    let r = sh(&format!(
        "setpriv --bounding-set=-sys_admin --inh-caps=-sys_admin -- \
         $NESTFS --store {} create {} x",
        s.root().display(),
        oci("busybox")
    ));
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stdout.contains("cannot mount FUSE filesystems here")
            && r.stdout.contains("--cap-add SYS_ADMIN")
            && r.stdout.contains("--device /dev/fuse"),
        "{r:#?}"
    );
    assert_eq!(entries(&s.root().join("volumes")), 0, "nothing pulled");
    assert_eq!(entries(&s.root().join("images")), 0);
    assert_eq!(entries(&s.root().join("tmp")), 0, "the probe left nothing");
}

#[test]
fn a_user_namespace_that_does_not_own_the_mounts_is_named() {
    require_root_fuse!();
    let s = TestStore::new();
    let r = sh(&format!(
        "unshare -Ur $NESTFS --store {} create {} x",
        s.root().display(),
        oci("busybox")
    ));
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stdout.contains("unshare -Urm"), "{r:#?}");
}

#[test]
fn root_in_a_one_uid_namespace_gets_a_store_that_records_owners() {
    require_root_fuse!();
    let s = TestStore::uninitialised();
    let script = format!(
        r#"set -e
        S={store}
        $NESTFS --store $S init-store
        grep -q '"rootless": true' $S/store.json && echo rootless-store
        R=$($NESTFS --store $S create {image} c | sed 's/.*"path":"\([^"]*\)".*/\1/')
        stat -c '%u:%g %a %n' $R/etc/passwd $R/tmp
        echo appended >> $R/etc/passwd && tail -1 $R/etc/passwd
        rm -r $R/etc && mkdir $R/etc && ls -A $R/etc | wc -l
        $NESTFS --store $S delete c
        echo deleted"#,
        store = s.root().display(),
        image = oci("busybox"),
    );
    let r = Command::new("unshare")
        .args(["-Urm", "sh", "-c", &script])
        .env("NESTFS", common::bin())
        .output()
        .expect("unshare")
        .into();
    let r: Run = r;
    assert_eq!(r.code, 0, "{r:#?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "rootless-store",
            &format!("0:0 644 {}/images/c/rootfs/etc/passwd", s.root().display()),
            &format!("0:0 1777 {}/images/c/rootfs/tmp", s.root().display()),
            "appended",
            "0",
            "deleted",
        ],
        "{r:#?}"
    );
}

#[test]
fn a_host_store_in_a_one_uid_namespace_says_why_it_cannot_set_owners() {
    require_root_fuse!();
    let s = TestStore::new();
    let r = sh(&format!(
        "unshare -Urm $NESTFS --store {} create {} x",
        s.root().display(),
        oci("busybox")
    ));
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stdout.contains("maps 1 uid(s)") && r.stdout.contains("--userns=auto"),
        "{r:#?}"
    );
    assert_eq!(entries(&s.root().join("volumes")), 0, "nothing pulled");
}

//! nestfs nested, as it runs in CI jobs and container platforms: inside rootful podman with the
//! store on the container's root filesystem (kernel overlayfs below nestfs's upper dirs) and on a
//! tmpfs, inside rootless podman (nestfs is root only in a user namespace), and inside another
//! nestfs image's rootfs (its upper dirs on a nestfs mount). Each runs one scenario: init-store,
//! create with a disk limit, a new file, a copy-up, an rm, an mv, an rm -r and a mkdir of the
//! same name, a write past the limit, stats, delete; its output must be exactly `expected`.
//!
//! The container image is made here from local files: busybox, the nestfs binary and its shared
//! libraries, the busybox fixture's OCI layout as the image the inner nestfs creates.

#[allow(dead_code)]
mod common;
#[path = "support/podman.rs"]
#[allow(dead_code)] // shared by both crates' tests, each using a part
mod podman;
#[path = "support/scrub.rs"]
mod scrub;
#[path = "support/users.rs"]
mod users;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use common::{Run, TestStore};
use podman::{Podman, test_user};

/// What every podman setup here needs, and all it needs: the device, and CAP_SYS_ADMIN for
/// mount(2), which podman's default seccomp profile then allows. Where AppArmor is enabled (not
/// on the machine these tests were written on) podman's default profile denies mount.
fn podman_flags() -> String {
    let mut flags = String::from("--device /dev/fuse --cap-add SYS_ADMIN");
    let apparmor = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled");
    if apparmor.is_ok_and(|a| a.trim() == "Y") {
        flags.push_str(" --security-opt apparmor=unconfined");
    }
    flags
}

const IMAGE: &str = "localhost/nestfs-nested";

/// The disk limit `create` gets (exclusive: the image's layers do not count).
const LIMIT: u64 = 1 << 20;

/// The scenario, for `sh -c SCENARIO sh STORE IMAGE` with `$NESTFS` the binary and `$LIMIT`.
/// Numbers that depend on the filesystem (block counts) go to stderr, for failure messages.
const SCENARIO: &str = r#"
set -eu
S=$1
R=$S/images/t/rootfs
n() { "$NESTFS" --store "$S" "$@"; }
used() { n stats t | sed 's/.*"exclusive_bytes_used":\([0-9]*\).*/\1/'; }
daemons() {
    d=0
    for c in /proc/[0-9]*/cmdline; do
        case "$(tr '\0' ' ' < "$c" 2> /dev/null)" in
            *nestfs-keeper*) ;;
            *"--store $S serve-image"*) d=$((d + 1)) ;;
        esac
    done
    echo $d
}
mkdir -p "${S%/*}"
case $(stat -f -c %t "${S%/*}") in
    794c7630) echo "store on overlayfs" ;;
    1021994) echo "store on tmpfs" ;;
    65735546) echo "store on fuse" ;;
    *) echo "store on a filesystem of magic $(stat -f -c %t "${S%/*}")" ;;
esac
n init-store
n create --disk-limit-size-bytes "$LIMIT" --exclude-image-from-quota "$2" t > "$S.json"
echo "create: $(sed 's/.*"root":{"path":"\([^"]*\)".*/\1/' "$S.json"), $(daemons) daemon"
before=$(used)
echo new > "$R/new"
echo "new file: $(cat "$R/new")"
echo more >> "$R/etc/passwd"
echo "copy-up: $(wc -l < "$R/etc/passwd") lines, last: $(tail -n 1 "$R/etc/passwd")"
rm "$R/bin/vi"
echo "rm: /bin/vi $([ -e "$R/bin/vi" ] && echo present || echo gone)"
mv "$R/etc/group" "$R/etc/group.old"
echo "mv: /etc has $(echo $(ls "$R/etc")), group.old starts $(head -n 1 "$R/etc/group.old")"
rm -r "$R/var/spool"
mkdir "$R/var/spool"
echo "rm -r, mkdir: /var/spool has $(ls -A "$R/var/spool" | wc -l) entries"
if dd if=/dev/zero of="$R/fill" bs=65536 count=$((2 * LIMIT / 65536)) 2> "$S.err"; then
    echo "past the limit: written"
else
    echo "past the limit: $(grep -o 'Disk quota exceeded' "$S.err")"
fi
after=$(used)
echo "exclusive_bytes_used: $before, then $after" >&2
if [ "$after" -gt "$before" ] && [ "$after" -le "$LIMIT" ]; then
    echo "stats: exclusive_bytes_used grew, within the limit"
fi
n delete t
echo "delete: $(grep -c " $R " /proc/mounts) mounts, $(ls "$S/images" | wc -l) images, $(daemons) daemons"
"#;

/// What `SCENARIO` prints for a store at `store` on a filesystem `fs`.
fn expected(store: &Path, fs: &str) -> String {
    let s = store.display();
    format!(
        "store on {fs}
create: {s}/images/t/rootfs, 1 daemon
new file: new
copy-up: 3 lines, last: more
rm: /bin/vi gone
mv: /etc has group.old passwd, group.old starts root:x:0:
rm -r, mkdir: /var/spool has 0 entries
past the limit: Disk quota exceeded
stats: exclusive_bytes_used grew, within the limit
delete: 0 mounts, 0 images, 0 daemons
"
    )
}

/// The container image as a rootfs tarball: scripts/make-busybox-image.sh's busybox, the nestfs
/// binary at /usr/local/bin (stripped: debug info is most of its size, and podman import copies
/// every byte), the shared libraries `ldd` names at their paths, and the busybox fixture at
/// /images/busybox.
fn container_image() -> &'static [u8] {
    static TAR: OnceLock<Vec<u8>> = OnceLock::new();
    TAR.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("temp dir");
        let tar = tmp.path().join("image.tar");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/make-busybox-image.sh");
        run(Command::new("bash").arg(script).arg(&tar));
        let stage = tmp.path().join("stage");
        std::fs::create_dir_all(stage.join("usr/local/bin")).unwrap();
        run(Command::new("strip")
            .arg("-o")
            .arg(stage.join("usr/local/bin/nestfs"))
            .arg(common::bin()));
        let ldd = run(Command::new("ldd").arg(common::bin()));
        for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
            let to = stage.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(lib, &to).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
        }
        std::fs::create_dir(stage.join("images")).unwrap();
        run(Command::new("cp")
            .arg("-r")
            .arg(common::fixture("busybox"))
            .arg(stage.join("images/busybox")));
        // Appended entry by entry: "." again would duplicate the tarball's root entry.
        let mut append = Command::new("tar");
        append
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&stage)
            .arg("-rf")
            .arg(&tar);
        for entry in std::fs::read_dir(&stage).unwrap() {
            append.arg(Path::new(".").join(entry.unwrap().file_name()));
        }
        run(&mut append);
        std::fs::read(&tar).unwrap()
    })
}

/// Runs `cmd`, panicking with its output unless it succeeds; returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the scenario in a container of `podman` with `podman_flags()` and `extra` flags, the
/// store at /store/nestfs.
fn in_container(podman: &Podman, extra: &str) -> Run {
    podman.import(container_image(), IMAGE);
    let script = format!(
        "podman run --rm --pull=never {flags} {extra} -e NESTFS=/usr/local/bin/nestfs \
         -e LIMIT={LIMIT} {IMAGE} sh -c \"$SCENARIO\" sh /store/nestfs oci:///images/busybox",
        flags = podman_flags(),
    );
    podman.sh(&script, &[("SCENARIO", SCENARIO)]).into()
}

#[test]
fn rootful_podman_with_the_store_on_the_containers_overlayfs() {
    require_podman!();
    let r = in_container(&Podman::rootful(), "");
    assert_eq!(
        r.stdout,
        expected(Path::new("/store/nestfs"), "overlayfs"),
        "{r:#?}"
    );
}

#[test]
fn rootful_podman_with_the_store_on_a_tmpfs() {
    require_podman!();
    let r = in_container(&Podman::rootful(), "--tmpfs /store");
    assert_eq!(
        r.stdout,
        expected(Path::new("/store/nestfs"), "tmpfs"),
        "{r:#?}"
    );
}

#[test]
fn rootless_podman() {
    require_podman!();
    let Some(user) = test_user() else {
        eprintln!(
            "SKIP rootless_podman: cannot create the user {}",
            podman::USER
        );
        return;
    };
    let r = in_container(&Podman::rootless(user), "");
    assert_eq!(
        r.stdout,
        expected(Path::new("/store/nestfs"), "overlayfs"),
        "{r:#?}"
    );
}

#[test]
fn nestfs_inside_nestfs() {
    require_root_fuse!();
    let outer = TestStore::new();
    let rootfs = outer.create(&common::oci("busybox"), "outer");
    // Declared after `outer`, so dropped (deleted, unmounted) before it.
    let inner = TestStore {
        dir: tempfile::Builder::new()
            .prefix("nestfs-inner-")
            .tempdir_in(&rootfs)
            .expect("temp dir in the outer rootfs"),
    };
    let r: Run = Command::new("sh")
        .args(["-c", SCENARIO, "sh"])
        .arg(inner.root())
        .arg(common::oci("busybox"))
        .env("NESTFS", common::bin())
        .env("LIMIT", LIMIT.to_string())
        .output()
        .expect("run sh")
        .into();
    assert_eq!(r.stdout, expected(&inner.root(), "fuse"), "{r:#?}");
}

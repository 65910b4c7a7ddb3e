//! What this process may do where it runs (a host, a container, a user namespace), found out
//! before anything is pulled, so a missing privilege is named with what to add, not met as a
//! mount failure after minutes of unpacking.

use std::path::Path;

use nestfs_fuse::caps::{self, CAP_SYS_ADMIN, mapped_uids};

/// Whether an image's owners can be set here: the uids images use (0-65535) must all be
/// mapped. A namespace made by `unshare -Ur` maps one.
pub fn maps_image_ids() -> bool {
    mapped_uids() >= 65536
}

/// What to do about a user namespace that maps too few ids, for messages.
pub fn narrow_namespace_advice() -> String {
    format!(
        "this user namespace maps {} uid(s) (/proc/self/uid_map), not the 65536 an image's \
         owners need: run with a wider mapping (e.g. subordinate ids from /etc/subuid through \
         newuidmap, podman's --userns=auto, unshare --map-auto), or use a store made by \
         init-store inside this namespace, which then records owners without chown",
        mapped_uids()
    )
}

/// Fails with what to add when FUSE filesystems cannot be mounted here. As root that is a
/// trial mount on the new directory `probe` (no server needed: the mount succeeds before
/// FUSE's INIT is answered); otherwise the conditions under which the setuid fusermount3 can
/// mount.
pub fn check_mountable(probe: &Path) -> Result<(), String> {
    if rustix::process::geteuid().is_root() {
        return trial_mount(probe).map_err(|e| cannot_mount(&e));
    }
    let fusermount = ["/usr/bin/fusermount3", "/bin/fusermount3"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    if let Some(p) = fusermount {
        use std::os::unix::fs::PermissionsExt;
        let setuid = std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o4000 != 0);
        if !setuid {
            return Err(format!(
                "{p} is not setuid root, so it cannot mount for an ordinary user: \
                 chmod u+s {p} (as Debian's fuse3 package installs it)"
            ));
        }
    }
    if caps::status_field("NoNewPrivs").as_deref() == Some("1") {
        return Err(
            "this process runs with no_new_privs, so the setuid fusermount3 cannot \
             mount: in a container drop --security-opt no-new-privileges (or \
             allowPrivilegeEscalation: false), or run nestfs as root"
                .into(),
        );
    }
    if !caps::has("CapBnd", CAP_SYS_ADMIN) {
        return Err(cannot_mount(&std::io::Error::from_raw_os_error(
            libc::EPERM,
        )));
    }
    Ok(())
}

fn cannot_mount(e: &std::io::Error) -> String {
    if !matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
        return format!(
            "cannot mount FUSE filesystems here: a trial mount failed ({e}){}",
            if is_fuse_device() {
                ""
            } else {
                ": /dev/fuse is not the FUSE device (character device 10:229)"
            }
        );
    }
    let why = if !caps::has("CapBnd", CAP_SYS_ADMIN) {
        "CAP_SYS_ADMIN is not in this process's capability bounding set"
    } else if !caps::has("CapEff", CAP_SYS_ADMIN) {
        "this process lacks CAP_SYS_ADMIN"
    } else if !caps::in_initial_user_ns() {
        "in a user namespace, mounts need a mount namespace of its own (e.g. unshare -Urm)"
    } else {
        "the mount was refused (an AppArmor or SELinux profile, or a seccomp filter)"
    };
    format!(
        "cannot mount FUSE filesystems here ({e}): {why}. In a container add \
         --cap-add SYS_ADMIN and --device /dev/fuse (docker/podman; Kubernetes: \
         capabilities.add: [SYS_ADMIN]), and where AppArmor confines containers \
         --security-opt apparmor=unconfined; or use --privileged"
    )
}

fn is_fuse_device() -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    std::fs::metadata("/dev/fuse")
        .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == libc::makedev(10, 229))
}

/// Mounts an unserved FUSE filesystem on the new directory `dir` and takes it away.
fn trial_mount(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    std::fs::create_dir_all(dir)?;
    let data = std::ffi::CString::new(format!(
        "fd={},rootmode=40000,user_id=0,group_id=0",
        dev.as_raw_fd()
    ))
    .expect("no NUL in mount options");
    let mounted = rustix::mount::mount(
        "nestfs-probe",
        dir,
        "fuse.nestfs-probe",
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
        data.as_c_str(),
    );
    if mounted.is_ok() {
        let _ = rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH);
    }
    let _ = std::fs::remove_dir(dir);
    mounted.map_err(Into::into)
}

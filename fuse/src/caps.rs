//! What this process may do where it runs: its capability sets and its user namespace's uid
//! map, read from /proc. The overlay decides its privileges by them, and `nestfs` its checks
//! before pulling.

/// CAP_SYS_ADMIN's bit: mounts, `trusted.*` xattrs, FUSE passthrough.
pub const CAP_SYS_ADMIN: u32 = 21;

/// Whether `cap` is in the capability set `set` of /proc/self/status (`CapEff`, `CapBnd`, ...).
pub fn has(set: &str, cap: u32) -> bool {
    status_field(set)
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .is_some_and(|bits| bits & (1 << cap) != 0)
}

/// One `Name:\tvalue` field of /proc/self/status.
pub fn status_field(name: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

fn uid_map() -> String {
    std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default()
}

/// How many uids this user namespace maps (4294967295 in the initial one).
pub fn mapped_uids() -> u64 {
    uid_map()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum()
}

/// Whether this process is in the initial user namespace: every id maps to itself.
pub fn in_initial_user_ns() -> bool {
    is_identity_map(&uid_map())
}

/// Whether this process has CAP_SYS_ADMIN in the initial user namespace, which `trusted.*`
/// xattrs and FUSE passthrough need. Root in a user namespace (rootless podman's mount
/// program, `unshare -Ur`) has its capabilities only there.
pub fn admin_in_initial_ns() -> bool {
    has("CapEff", CAP_SYS_ADMIN) && in_initial_user_ns()
}

fn is_identity_map(map: &str) -> bool {
    map.split_whitespace().eq(["0", "0", "4294967295"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_initial_namespace_maps_every_id_to_itself() {
        assert!(is_identity_map("         0          0 4294967295\n"));
        assert!(!is_identity_map("         0          0          1\n"));
        assert!(!is_identity_map("0 1000 1\n1 100000 65536\n"));
        assert!(!is_identity_map(""));
    }

    #[test]
    fn this_process_is_read_from_proc() {
        assert!(mapped_uids() >= 1);
        assert!(status_field("Name").is_some());
        assert_eq!(status_field("NoSuchField"), None);
    }
}

//! Which xattr names the overlay keeps for itself, and how users' names of those forms are
//! stored: escaped one level deeper, as overlayfs escapes `*.overlay.*`, so an overlay (or a
//! nestfs) whose upper dir lives on this mount keeps its own markers.

/// Xattr namespaces the overlay keeps for itself (overlayfs's markers, then nestfs's origins
/// and recorded owners), each with the tag a user's name of that form is escaped with.
const PRIVATE_XATTRS: [(&[u8], &[u8]); 4] = [
    (b"trusted.overlay.", b"overlay."),
    (b"user.overlay.", b"overlay."),
    (b"trusted.nestfs.", b"nestfs."),
    (b"user.nestfs.", b"nestfs."),
];

/// Whether a real xattr belongs to the overlay itself (opaque markers, origins); users never
/// see those. Users' own names of those forms (an overlay's or a nestfs's markers, when the
/// upper dir of another one lives on this mount) are stored escaped, `*.overlay.overlay.*` and
/// `*.nestfs.nestfs.*`, as overlayfs does, so any number of levels stack.
pub fn is_private_xattr(real: &[u8]) -> bool {
    PRIVATE_XATTRS
        .iter()
        .any(|(p, tag)| real.starts_with(p) && !real[p.len()..].starts_with(tag))
}

/// The real name a user's xattr is stored under.
pub fn real_xattr(user: &[u8]) -> Vec<u8> {
    for (p, tag) in PRIVATE_XATTRS {
        if let Some(rest) = user.strip_prefix(p) {
            return [p, tag, rest].concat();
        }
    }
    user.to_vec()
}

/// The name a user sees for a real xattr, or `None` if it is private.
pub fn user_xattr(real: &[u8]) -> Option<Vec<u8>> {
    if is_private_xattr(real) {
        return None;
    }
    for (p, tag) in PRIVATE_XATTRS {
        if let Some(rest) = real.strip_prefix(p) {
            return Some([p, &rest[tag.len()..]].concat());
        }
    }
    Some(real.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_xattrs_are_recognised() {
        assert!(is_private_xattr(b"trusted.overlay.opaque"));
        assert!(is_private_xattr(b"user.nestfs.origin"));
        assert!(!is_private_xattr(b"trusted.overlay.overlay.x"));
        assert!(!is_private_xattr(b"user.mime_type"));
        assert!(!is_private_xattr(b"security.capability"));
    }

    #[test]
    fn users_overlay_xattrs_are_escaped() {
        assert_eq!(
            real_xattr(b"trusted.overlay.x"),
            b"trusted.overlay.overlay.x"
        );
        assert_eq!(real_xattr(b"user.foo"), b"user.foo");
        assert_eq!(
            user_xattr(b"trusted.overlay.overlay.x").unwrap(),
            b"trusted.overlay.x"
        );
        assert_eq!(user_xattr(b"trusted.overlay.opaque"), None);
        assert_eq!(user_xattr(b"user.foo").unwrap(), b"user.foo");
    }

    /// The origins and recorded owners of a nestfs whose upper dir is on this mount are the
    /// user's: stored one level deeper, read back and listed as they were written.
    #[test]
    fn nested_nestfs_xattrs_are_escaped_at_every_level() {
        for inner in [&b"trusted.nestfs.origin"[..], b"user.nestfs.stat"] {
            let once = real_xattr(inner);
            let twice = real_xattr(&once);
            assert!(!is_private_xattr(&once) && !is_private_xattr(&twice));
            assert_eq!(user_xattr(&twice).unwrap(), once);
            assert_eq!(user_xattr(&once).unwrap(), inner);
            assert!(is_private_xattr(inner), "the outer's own name stays hidden");
        }
        assert_eq!(
            real_xattr(b"user.nestfs.origin"),
            b"user.nestfs.nestfs.origin"
        );
        assert_eq!(
            user_xattr(b"trusted.nestfs.nestfs.x").unwrap(),
            b"trusted.nestfs.x"
        );
        assert_eq!(user_xattr(b"user.nestfs.stat"), None);
    }
}

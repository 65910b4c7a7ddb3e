//! fuse-overlayfs's `-o` option list, turned into an [`OverlayConfig`].

use std::path::PathBuf;

use crate::OverlayConfig;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("no lowerdir= given")]
    NoLowerdir,
    #[error("empty path in lowerdir=")]
    EmptyLower,
    #[error("upperdir= needs workdir= too")]
    UpperWithoutWork,
    #[error("workdir= needs upperdir= too")]
    WorkWithoutUpper,
    #[error("bad id mapping {0}")]
    BadMapping(String),
    #[error("max_threads= needs a whole number from 1 up, not {0:?}")]
    BadThreads(String),
}

/// Options that only make sense to the kernel or to fuse-overlayfs's own tuning; accepted so
/// existing command lines keep working.
const IGNORED: &[&str] = &[
    "rw",
    "default_permissions",
    "allow_other",
    "allow_root",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "async",
    "sync",
    "dirsync",
    "auto_unmount",
    "noacl",
    "fast_ino",
    "static_nlink",
    "volatile",
    "debug",
    "threaded",
    "xattr_permissions",
    "squash_to_root",
    "squash_to_uid",
    "squash_to_gid",
    "plugins",
    "timeout",
    "noxattrs",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
];

/// Applies one comma-separated `-o` list to `cfg`. Unknown options come back as warnings.
pub fn apply(cfg: &mut OverlayConfig, list: &str) -> Result<Vec<String>, OptionError> {
    let mut warnings = Vec::new();
    for opt in split(list) {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt.as_str(), None),
        };
        match (key, value) {
            ("lowerdir", Some(v)) => {
                let mut dirs = Vec::new();
                for p in v.split(':') {
                    if p.is_empty() {
                        return Err(OptionError::EmptyLower);
                    }
                    dirs.push(PathBuf::from(p));
                }
                cfg.lowerdirs = dirs;
            }
            ("upperdir", Some(v)) => cfg.upperdir = Some(PathBuf::from(v)),
            ("workdir", Some(v)) => cfg.workdir = Some(PathBuf::from(v)),
            ("fsname", Some(v)) => cfg.fsname = v.to_string(),
            ("subtype", Some(_)) => {}
            ("ro", None) => cfg.read_only = true,
            ("passthrough", None) => cfg.no_passthrough = false,
            ("nopassthrough", None) => cfg.no_passthrough = true,
            ("max_threads", Some(v)) => {
                cfg.threads = match v.parse() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(OptionError::BadThreads(v.to_string())),
                }
            }
            ("uidmapping" | "gidmapping", Some(v)) => {
                let ranges = crate::ids::parse(v).map_err(OptionError::BadMapping)?;
                let m = cfg.ids.get_or_insert_with(|| crate::ids::IdMap {
                    map_upper: true,
                    ..Default::default()
                });
                if key == "uidmapping" {
                    m.uids = ranges;
                } else {
                    m.gids = ranges;
                }
            }
            (k, _) if IGNORED.contains(&k) => {}
            _ => warnings.push(format!("unknown option {opt} ignored")),
        }
    }
    Ok(warnings)
}

/// Checks the combination once every `-o` list has been applied.
pub fn validate(cfg: &OverlayConfig) -> Result<(), OptionError> {
    if cfg.lowerdirs.is_empty() {
        return Err(OptionError::NoLowerdir);
    }
    match (&cfg.upperdir, &cfg.workdir) {
        (Some(_), None) => Err(OptionError::UpperWithoutWork),
        (None, Some(_)) => Err(OptionError::WorkWithoutUpper),
        _ => Ok(()),
    }
}

/// Splits on commas, honouring `\,` escapes as mount(8) and fuse-overlayfs do.
fn split(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = list.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fuse_overlayfs_options() {
        let mut cfg = OverlayConfig::default();
        let w = apply(
            &mut cfg,
            "lowerdir=/a:/b,upperdir=/u,workdir=/w,allow_other,fsname=x,bogus",
        )
        .unwrap();
        assert_eq!(
            cfg.lowerdirs,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(cfg.upperdir, Some(PathBuf::from("/u")));
        assert_eq!(cfg.workdir, Some(PathBuf::from("/w")));
        assert_eq!(cfg.fsname, "x");
        assert_eq!(w, vec!["unknown option bogus ignored".to_string()]);
        validate(&cfg).unwrap();
    }

    #[test]
    fn escaped_commas_stay_in_paths() {
        let mut cfg = OverlayConfig::default();
        apply(&mut cfg, r"lowerdir=/a\,b").unwrap();
        assert_eq!(cfg.lowerdirs, vec![PathBuf::from("/a,b")]);
    }

    #[test]
    fn rejects_bad_combinations() {
        let mut cfg = OverlayConfig::default();
        assert_eq!(validate(&cfg), Err(OptionError::NoLowerdir));
        assert_eq!(
            apply(&mut cfg, "lowerdir=/a::/b"),
            Err(OptionError::EmptyLower)
        );
        apply(&mut cfg, "lowerdir=/a,upperdir=/u").unwrap();
        assert_eq!(validate(&cfg), Err(OptionError::UpperWithoutWork));
        let mut cfg = OverlayConfig::default();
        apply(&mut cfg, "lowerdir=/a,workdir=/w").unwrap();
        assert_eq!(validate(&cfg), Err(OptionError::WorkWithoutUpper));
        assert!(matches!(
            apply(&mut cfg, "uidmapping=0:1000"),
            Err(OptionError::BadMapping(_))
        ));
        for bad in ["max_threads=0", "max_threads=two", "max_threads=-1"] {
            assert!(matches!(
                apply(&mut cfg, bad),
                Err(OptionError::BadThreads(_))
            ));
        }
        apply(&mut cfg, "max_threads=3").unwrap();
        assert_eq!(cfg.threads, 3);
    }

    #[test]
    fn id_mappings_use_fuse_overlayfs_semantics() {
        let mut cfg = OverlayConfig::default();
        apply(
            &mut cfg,
            "uidmapping=0:1000:1:1:100000:65536,gidmapping=0:1000:1",
        )
        .unwrap();
        let m = cfg.ids.unwrap();
        assert!(m.map_upper);
        assert_eq!(m.uids.len(), 2);
        assert_eq!(m.shown(1, 0), (100000, 1000));
    }
}

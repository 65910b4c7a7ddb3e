//! IMAGE arguments in GrootFS's forms.

use std::path::PathBuf;

use super::ImageError;

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `docker://[HOST[:PORT]]/NAME[:TAG|@DIGEST]`; no host means Docker Hub.
    Registry {
        registry: String,
        repository: String,
        reference: String,
    },
    /// `oci:///ABS/PATH[:TAG|:@INDEX]`.
    Layout { path: PathBuf, select: Select },
    /// A rootfs tarball (plain, gzip or zstd): a one-layer image.
    Tarball(PathBuf),
}

/// Which manifest of an OCI layout's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    /// The only one (an error if there are several).
    Only,
    /// The one whose `org.opencontainers.image.ref.name` is this.
    Tag(String),
    /// The n-th entry.
    Index(usize),
}

fn bad(s: &str, reason: &str) -> ImageError {
    ImageError::BadReference {
        reference: s.to_string(),
        reason: reason.to_string(),
    }
}

fn valid_repo(r: &str) -> bool {
    !r.is_empty()
        && r.split('/').all(|c| {
            !c.is_empty()
                && c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
        })
}

pub fn parse(s: &str) -> Result<Source, ImageError> {
    if let Some(rest) = s.strip_prefix("docker://") {
        return parse_docker(s, rest);
    }
    if let Some(rest) = s.strip_prefix("oci://") {
        return parse_oci(s, rest);
    }
    if s.contains("://") {
        return Err(bad(
            s,
            "unknown scheme (use docker://, oci:// or a tarball path)",
        ));
    }
    let path = PathBuf::from(s);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Err(ImageError::BaseImage(
            "directory provided instead of a tar file".into(),
        )),
        Ok(_) => Ok(Source::Tarball(path)),
        // What nestfs tried, then GrootFS's words (Go's), which end the message as in GrootFS.
        Err(e) => Err(bad(
            s,
            &format!(
                "not a docker:// or oci:// reference, nor a tarball: stat {s}: {}",
                crate::image::os_error_text(&e)
            ),
        )),
    }
}

fn parse_docker(s: &str, rest: &str) -> Result<Source, ImageError> {
    // `docker:///name` has an empty host: Docker Hub.
    let (host, path) = rest
        .split_once('/')
        .ok_or_else(|| bad(s, "missing image name"))?;
    let (registry, mut path) = if host.is_empty() {
        ("docker.io".to_string(), path.to_string())
    } else {
        (host.to_string(), path.to_string())
    };
    let reference = if let Some((name, digest)) = path.split_once('@') {
        let ok = digest
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()));
        if !ok {
            return Err(bad(s, "digest must be sha256: followed by 64 hex digits"));
        }
        let d = digest.to_string();
        path = name.to_string();
        d
    } else {
        // A tag is after the last ':' that follows the last '/'.
        let slash = path.rfind('/').map_or(0, |i| i + 1);
        match path[slash..].rfind(':') {
            Some(i) => {
                let tag = path[slash + i + 1..].to_string();
                if tag.is_empty()
                    || tag.len() > 128
                    || !tag
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                {
                    return Err(bad(s, "invalid tag"));
                }
                path.truncate(slash + i);
                tag
            }
            None => "latest".to_string(),
        }
    };
    if !valid_repo(&path) {
        return Err(bad(
            s,
            "invalid repository name (lowercase letters, digits, '.', '_', '-' and '/')",
        ));
    }
    if registry == "docker.io" && !path.contains('/') {
        path = format!("library/{path}");
    }
    Ok(Source::Registry {
        registry,
        repository: path,
        reference,
    })
}

fn parse_oci(s: &str, rest: &str) -> Result<Source, ImageError> {
    if !rest.starts_with('/') {
        return Err(bad(
            s,
            "an oci:// layout needs an absolute path (oci:///path/to/layout)",
        ));
    }
    // The selector follows the last ':' if what is before it is an existing layout.
    let (path, select) = match rest.rsplit_once(':') {
        Some((p, sel)) if std::path::Path::new(p).join("index.json").is_file() => {
            let select = if let Some(n) = sel.strip_prefix('@') {
                Select::Index(
                    n.parse()
                        .map_err(|_| bad(s, "manifest index after ':@' must be a number"))?,
                )
            } else if sel.is_empty() {
                return Err(bad(s, "empty tag after ':'"));
            } else {
                Select::Tag(sel.to_string())
            };
            (p, select)
        }
        _ => (rest, Select::Only),
    };
    let path = PathBuf::from(path);
    if !path.join("index.json").is_file() {
        return Err(ImageError::NotFound(format!(
            "Image source doesn't exist: no OCI layout (index.json) at {}",
            path.display()
        )));
    }
    Ok(Source::Layout { path, select })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> (String, String, String) {
        match parse(s).unwrap() {
            Source::Registry {
                registry,
                repository,
                reference,
            } => (registry, repository, reference),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn docker_forms() {
        let t = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(
            reg("docker:///busybox"),
            t("docker.io", "library/busybox", "latest")
        );
        assert_eq!(
            reg("docker:///cfgarden/empty:v0.1.1"),
            t("docker.io", "cfgarden/empty", "v0.1.1")
        );
        assert_eq!(
            reg("docker://127.0.0.1:5000/a/b:1.0"),
            t("127.0.0.1:5000", "a/b", "1.0")
        );
        assert_eq!(
            reg("docker://localhost:5000/x"),
            t("localhost:5000", "x", "latest")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(reg(&format!("docker://r:1/x@{d}")), t("r:1", "x", &d));
    }

    #[test]
    fn malformed() {
        for s in [
            "docker://",
            "docker:///",
            "docker:///UPPER",
            "docker:///a:",
            "docker:///a@sha256:12",
            "docker:///a//b",
            "http://x/y",
            "oci://relative/path",
            "",
            "/no/such/tarball.tar",
        ] {
            assert!(parse(s).is_err(), "{s:?} accepted");
        }
    }
}

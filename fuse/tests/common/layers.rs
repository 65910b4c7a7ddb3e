//! Declarative layer contents, written to disk in either whiteout format.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Time given to every built entry unless set otherwise; anything a test changes gets "now",
/// which lets snapshots tell preserved times from fresh ones.
pub const LAYER_TIME: i64 = 1_600_000_000;

/// How whiteouts and opaque dirs are written into a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// overlayfs: char 0/0 whiteouts, `trusted.overlay.opaque=y` dirs (the kernel's format).
    Overlay,
    /// OCI image layers: `.wh.NAME` files and `.wh..wh..opq` markers.
    Oci,
}

#[derive(Clone, Debug)]
enum Kind {
    File(Vec<u8>),
    /// A sparse file: `len` bytes with `data` written at each offset.
    Sparse(u64, Vec<(u64, Vec<u8>)>),
    Dir,
    Symlink(String),
    Hardlink(String),
    Fifo,
    CharDev(u32, u32),
    Whiteout,
    Opaque,
}

#[derive(Clone, Debug)]
struct Entry {
    path: String,
    kind: Kind,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// One layer's contents; parents of every path are created as 0755 dirs.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    entries: Vec<Entry>,
}

impl Layer {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(mut self, path: &str, kind: Kind) -> Self {
        self.entries.push(Entry {
            path: path.trim_matches('/').to_string(),
            kind,
            mode: None,
            owner: None,
            mtime: LAYER_TIME,
            xattrs: Vec::new(),
        });
        self
    }

    pub fn file(self, path: &str, content: impl AsRef<[u8]>) -> Self {
        self.push(path, Kind::File(content.as_ref().to_vec()))
    }
    pub fn sparse(self, path: &str, len: u64, chunks: &[(u64, &[u8])]) -> Self {
        let chunks = chunks.iter().map(|(o, d)| (*o, d.to_vec())).collect();
        self.push(path, Kind::Sparse(len, chunks))
    }
    pub fn dir(self, path: &str) -> Self {
        self.push(path, Kind::Dir)
    }
    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.push(path, Kind::Symlink(target.to_string()))
    }
    /// A hardlink at `path` to the earlier entry `target` of the same layer.
    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.push(path, Kind::Hardlink(target.to_string()))
    }
    pub fn fifo(self, path: &str) -> Self {
        self.push(path, Kind::Fifo)
    }
    pub fn chardev(self, path: &str, major: u32, minor: u32) -> Self {
        self.push(path, Kind::CharDev(major, minor))
    }
    pub fn whiteout(self, path: &str) -> Self {
        self.push(path, Kind::Whiteout)
    }
    /// An opaque directory: hides everything below it in lower layers.
    pub fn opaque(self, path: &str) -> Self {
        self.push(path, Kind::Opaque)
    }

    fn last(&mut self) -> &mut Entry {
        self.entries.last_mut().expect("modifier before any entry")
    }
    pub fn mode(mut self, mode: u32) -> Self {
        self.last().mode = Some(mode);
        self
    }
    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.last().owner = Some((uid, gid));
        self
    }
    pub fn mtime(mut self, secs: i64) -> Self {
        self.last().mtime = secs;
        self
    }
    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        let v = value.as_ref().to_vec();
        self.last().xattrs.push((name.to_string(), v));
        self
    }

    /// Writes the layer into the existing empty dir `root`.
    pub fn write(&self, root: &Path, format: Format) {
        let mut timed: Vec<(String, i64)> = Vec::new();
        for e in &self.entries {
            ensure_parents(root, &e.path, &mut timed);
            let full = root.join(&e.path);
            let path = full.as_path();
            match &e.kind {
                Kind::File(data) => std::fs::write(path, data).expect("write layer file"),
                Kind::Sparse(len, chunks) => write_sparse(path, *len, chunks),
                Kind::Dir => create_dir(path),
                Kind::Symlink(t) => std::os::unix::fs::symlink(t, path).expect("layer symlink"),
                Kind::Hardlink(t) => std::fs::hard_link(root.join(t), path).expect("layer link"),
                Kind::Fifo => mknod(path, libc::S_IFIFO | 0o644, 0),
                Kind::CharDev(ma, mi) => {
                    mknod(path, libc::S_IFCHR | 0o600, libc::makedev(*ma, *mi));
                }
                Kind::Whiteout => match format {
                    Format::Overlay => mknod(path, libc::S_IFCHR, 0),
                    Format::Oci => {
                        let name = full.file_name().unwrap().to_string_lossy().into_owned();
                        std::fs::write(full.with_file_name(format!(".wh.{name}")), b"")
                            .expect("write .wh. file");
                    }
                },
                Kind::Opaque => {
                    create_dir(path);
                    match format {
                        Format::Overlay => set_xattr(path, "trusted.overlay.opaque", b"y"),
                        Format::Oci => {
                            std::fs::write(full.join(".wh..wh..opq"), b"").expect("write opq")
                        }
                    }
                }
            }
            if matches!(e.kind, Kind::Whiteout) {
                continue;
            }
            if let Some(mode) = e.mode {
                let c = cpath(path);
                assert_eq!(
                    unsafe { libc::chmod(c.as_ptr(), mode) },
                    0,
                    "chmod {path:?}"
                );
            }
            if let Some((u, g)) = e.owner {
                let c = cpath(path);
                assert_eq!(
                    unsafe { libc::lchown(c.as_ptr(), u, g) },
                    0,
                    "chown {path:?}"
                );
            }
            for (k, v) in &e.xattrs {
                set_xattr(path, k, v);
            }
            timed.push((e.path.clone(), e.mtime));
        }
        // Deepest first so setting a child's time does not disturb its parent's afterwards.
        timed.sort_by_key(|(p, _)| std::cmp::Reverse(p.matches('/').count()));
        for (p, t) in timed {
            set_times(&root.join(p), t);
        }
        set_times(root, LAYER_TIME);
    }
}

fn ensure_parents(root: &Path, path: &str, timed: &mut Vec<(String, i64)>) {
    let mut acc = String::new();
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts[..parts.len() - 1] {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(part);
        let p = root.join(&acc);
        if std::fs::symlink_metadata(&p).is_err() {
            create_dir(&p);
            timed.push((acc.clone(), LAYER_TIME));
        }
    }
}

fn create_dir(path: &Path) {
    if !path.is_dir() {
        std::fs::create_dir(path).unwrap_or_else(|e| panic!("mkdir {path:?}: {e}"));
    }
}

fn write_sparse(path: &Path, len: u64, chunks: &[(u64, Vec<u8>)]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).expect("create sparse");
    f.set_len(len).expect("size sparse");
    for (off, data) in chunks {
        f.write_all_at(data, *off).expect("write sparse chunk");
    }
}

pub fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path without NUL")
}

fn mknod(path: &Path, mode: u32, dev: u64) {
    let c = cpath(path);
    let rc = unsafe { libc::mknod(c.as_ptr(), mode, dev) };
    assert_eq!(rc, 0, "mknod {path:?}: {}", std::io::Error::last_os_error());
}

pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let c = cpath(path);
    let n = CString::new(name).unwrap();
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name} on {path:?}: {}",
        std::io::Error::last_os_error()
    );
}

fn set_times(path: &Path, secs: i64) {
    let c = cpath(path);
    let ts = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let times = [ts, ts];
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        rc,
        0,
        "utimensat {path:?}: {}",
        std::io::Error::last_os_error()
    );
}

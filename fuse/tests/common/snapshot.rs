//! Tree snapshots (one line of facts per path, symlinks never followed) and readable diffs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::layers::cpath;

/// Times at or after this are "fresh" (set by the test run), older ones came from a layer.
const FRESH_AFTER: i64 = 1_700_000_000;

/// What a snapshot records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// The user-visible view of a merged mount: no inode numbers, times as "layer time" or "fresh".
    Merged,
    /// Everything, for proving a directory was not touched at all.
    Exact,
}

/// path (relative, "" = root) -> description.
pub type Snapshot = BTreeMap<String, String>;

/// Per-walk state: which paths share an inode, and each inode's content hash (images hardlink
/// big files hundreds of times; hashing them once keeps debug-build tests fast).
#[derive(Default)]
struct Inodes {
    links: BTreeMap<(u64, u64), Vec<String>>,
    hashes: BTreeMap<(u64, u64), String>,
}

pub fn snapshot(root: &Path, detail: Detail) -> Snapshot {
    let mut out = Snapshot::new();
    let mut inodes = Inodes::default();
    walk(root, "", detail, &mut out, &mut inodes);
    let inodes = inodes.links;
    for paths in inodes.values().filter(|p| p.len() > 1) {
        for p in paths {
            let line = out.get_mut(p).expect("linked path recorded");
            write!(line, " links={paths:?}").unwrap();
        }
    }
    out
}

fn walk(root: &Path, rel: &str, detail: Detail, out: &mut Snapshot, inodes: &mut Inodes) {
    let path = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let md = std::fs::symlink_metadata(&path)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let ft = md.file_type();
    let mut line = format!(
        "{} mode={:o} uid={} gid={} nlink={}",
        kind(&ft),
        md.mode() & 0o7777,
        md.uid(),
        md.gid(),
        md.nlink()
    );
    match detail {
        Detail::Merged => write!(line, " mtime={}", time_class(md.mtime())).unwrap(),
        Detail::Exact => write!(
            line,
            " ino={} mtime={}.{} ctime={}.{} size={}",
            md.ino(),
            md.mtime(),
            md.mtime_nsec(),
            md.ctime(),
            md.ctime_nsec(),
            md.size()
        )
        .unwrap(),
    }
    if ft.is_file() {
        let key = (md.dev(), md.ino());
        let hash = if md.nlink() > 1 {
            inodes.links.entry(key).or_default().push(rel.to_string());
            inodes
                .hashes
                .entry(key)
                .or_insert_with(|| file_hash(&path))
                .clone()
        } else {
            file_hash(&path)
        };
        write!(line, " size={} sha256={hash}", md.size()).unwrap();
    } else if ft.is_symlink() {
        let t = std::fs::read_link(&path).expect("readlink");
        write!(line, " -> {}", t.display()).unwrap();
    } else if ft.is_char_device() || ft.is_block_device() {
        let r = md.rdev();
        write!(line, " rdev={}:{}", libc::major(r), libc::minor(r)).unwrap();
    }
    let xattrs = xattrs(&path);
    if !xattrs.is_empty() {
        write!(line, " xattrs={xattrs:?}").unwrap();
    }
    let mut children = Vec::new();
    if ft.is_dir() {
        for e in std::fs::read_dir(&path).unwrap_or_else(|e| panic!("readdir {path:?}: {e}")) {
            let name = e
                .expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            children.push(name);
        }
        children.sort();
        write!(line, " entries={children:?}").unwrap();
    }
    out.insert(rel.to_string(), line);
    for c in children {
        let child = if rel.is_empty() {
            c
        } else {
            format!("{rel}/{c}")
        };
        walk(root, &child, detail, out, inodes);
    }
}

fn kind(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "chardev"
    } else {
        "blockdev"
    }
}

pub fn time_class(secs: i64) -> String {
    if secs >= FRESH_AFTER {
        "fresh".into()
    } else {
        secs.to_string()
    }
}

pub fn file_hash(path: &Path) -> String {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// All xattrs the caller can list, sorted, values shown lossily.
pub fn xattrs(path: &Path) -> Vec<(String, String)> {
    let c = cpath(path);
    let mut buf = vec![0u8; 64 * 1024];
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENOTSUP),
            "listxattr {path:?}: {e}"
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let cname = std::ffi::CString::new(name).unwrap();
        let mut val = vec![0u8; 64 * 1024];
        let m = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                val.as_mut_ptr().cast(),
                val.len(),
            )
        };
        let v = if m < 0 {
            format!("<{}>", std::io::Error::last_os_error())
        } else {
            String::from_utf8_lossy(&val[..m as usize]).into_owned()
        };
        out.push((String::from_utf8_lossy(name).into_owned(), v));
    }
    out.sort();
    out
}

/// What an upper dir holds, in implementation-neutral terms: whiteouts in either format become
/// `whiteout`, opaque markers become ` opaque`; everything else is just its type.
pub fn upper_shape(upper: &Path) -> BTreeMap<String, String> {
    let snap = snapshot(upper, Detail::Merged);
    let mut out = BTreeMap::new();
    for (path, line) in snap {
        let name = path.rsplit('/').next().unwrap_or("");
        let parent = path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        if name == ".wh..wh..opq" {
            let e: &mut String = out.entry(parent.to_string()).or_default();
            e.push_str(" opaque");
            continue;
        }
        let (key, mut what) = if let Some(hidden) = name.strip_prefix(".wh.") {
            let key = if parent.is_empty() {
                hidden.into()
            } else {
                format!("{parent}/{hidden}")
            };
            (key, "whiteout".to_string())
        } else if line.starts_with("chardev") && line.contains(" rdev=0:0") {
            (path.clone(), "whiteout".to_string())
        } else {
            (path.clone(), line.split(' ').next().unwrap().to_string())
        };
        if line.contains("overlay.opaque\", \"y\"") {
            what.push_str(" opaque");
        }
        let e = out.entry(key).or_default();
        *e = format!("{what}{e}");
    }
    out
}

/// A readable diff of two snapshots, or None when equal.
pub fn diff<V: PartialEq + std::fmt::Display>(
    a_name: &str,
    a: &BTreeMap<String, V>,
    b_name: &str,
    b: &BTreeMap<String, V>,
) -> Option<String> {
    let mut out = String::new();
    for (p, va) in a {
        match b.get(p) {
            None => writeln!(out, "  only in {a_name}: /{p}: {va}").unwrap(),
            Some(vb) if vb != va => {
                writeln!(out, "  /{p}:\n    {a_name}: {va}\n    {b_name}: {vb}").unwrap()
            }
            _ => {}
        }
    }
    for (p, vb) in b {
        if !a.contains_key(p) {
            writeln!(out, "  only in {b_name}: /{p}: {vb}").unwrap();
        }
    }
    (!out.is_empty()).then_some(out)
}

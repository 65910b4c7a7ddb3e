//! Differential tests: every case runs the same calls on kernel overlayfs (the reference, mounted
//! with `redirect_dir=off,index=off,metacopy=off,xino=off`) and on the binary under test over
//! identical layers, and proves that every call's outcome, the merged tree, the set of copied-up
//! paths and the state after a remount agree, and that no lower layer changed. Each case runs
//! twice: the tested overlay over overlay-format layers and over OCI-format (`.wh.`) layers.

// Tests call libc directly, for setup and for the raw results they check.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

#[allow(dead_code)]
mod common;

use std::path::Path;

use common::layers::{Format, Layer};
use common::ops::{self, Fd, Log, Res};
use common::pair::{Pair, assert_logs_equal, case_with};

/// Layers most cases start from (top first).
fn base() -> Vec<Layer> {
    let top = Layer::new()
        .whiteout("dir/b")
        .whiteout("gone")
        .whiteout("dir2/x")
        .opaque("opq")
        .file("opq/new", "new in top")
        .file("etc/hosts", "127.0.0.1 top\n")
        .mode(0o600)
        .xattr("user.layer", "top")
        .dir("dir/sub2");
    let bottom = Layer::new()
        .file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
        .file("etc/hosts", "127.0.0.1 bottom\n")
        .file("data/exec", "#!/bin/sh\necho hi\n")
        .mode(0o751)
        .owner(1000, 1001)
        .mtime(1_500_000_000)
        .xattr("user.foo", "bar")
        .xattr("trusted.keep", "t")
        .sparse(
            "data/big",
            1 << 20,
            &[(0, b"head"), (512 * 1024, b"middle")],
        )
        .file("dir/a", "a")
        .file("dir/b", "b")
        .file("dir/sub/c", "c")
        .dir("dir")
        .mode(0o750)
        .owner(5, 6)
        .file("dir2/x", "x")
        .file("gone/x", "gx")
        .file("opq/old1", "o1")
        .file("opq/old2", "o2")
        .file("links/h1", "hardlinked")
        .hardlink("links/h2", "links/h1")
        .symlink("sym", "etc/passwd")
        .symlink("abs", "/etc/passwd")
        .symlink("dangling", "nowhere")
        .fifo("fifo")
        .chardev("null", 1, 3)
        .dir("emptydir");
    vec![top, bottom]
}

/// Declares a case run over overlay-format and OCI-format layers.
macro_rules! diff_case {
    ($(#[$m:meta])* $name:ident, $layers:expr, $script:expr) => {
        diff_case!($(#[$m])* $name, options = "", $layers, $script);
    };
    ($(#[$m:meta])* $name:ident, options = $opts:expr, $layers:expr, $script:expr) => {
        mod $name {
            use super::*;
            #[test]
            $(#[$m])*
            fn overlay_format() {
                require_env!();
                case_with(&$layers, Format::Overlay, $opts, $script);
            }
            #[test]
            $(#[$m])*
            fn oci_format() {
                require_env!();
                case_with(&$layers, Format::Oci, $opts, $script);
            }
        }
    };
}

const MERGED_PATHS: &[&str] = &[
    "",
    "etc",
    "etc/passwd",
    "etc/hosts",
    "data",
    "data/exec",
    "data/big",
    "dir",
    "dir/a",
    "dir/b",
    "dir/.wh.b",
    "dir/sub",
    "dir/sub2",
    "dir2",
    "dir2/x",
    "gone",
    "gone/x",
    "opq",
    "opq/new",
    "opq/old1",
    "opq/.wh..wh..opq",
    "links/h1",
    "links/h2",
    "sym",
    "abs",
    "dangling",
    "fifo",
    "null",
    "emptydir",
    ".wh.gone",
];

fn stat_all(r: &Path, log: &mut Log) {
    for p in MERGED_PATHS {
        log.rec(format!("stat {p}"), ops::stat(r, p));
    }
}

/// For each entry of `d`: whether readdir's d_type and d_ino agree with lstat.
fn dirent_consistency(r: &Path, d: &str) -> Res {
    use std::os::unix::fs::{DirEntryExt, MetadataExt};
    let mut out = Vec::new();
    for e in std::fs::read_dir(r.join(d))? {
        let e = e?;
        let md = std::fs::symlink_metadata(e.path())?;
        let same_type = e.file_type()? == md.file_type();
        let same_ino = e.ino() == md.ino();
        out.push(format!(
            "{}:{same_type}:{same_ino}",
            e.file_name().to_string_lossy()
        ));
    }
    out.sort();
    Ok(out.join(","))
}

/// Reads `p` with reads of `chunk` bytes; the outcome is the total and a short hash.
fn read_in_chunks(r: &Path, p: &str, chunk: usize) -> Res {
    let fd = ops::open(r, p, libc::O_RDONLY, 0)?;
    let (mut data, mut buf) = (Vec::new(), vec![0u8; chunk]);
    loop {
        let n = unsafe { libc::read(fd.0, buf.as_mut_ptr().cast(), chunk) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n as usize]);
    }
    Ok(format!("{} bytes {}", data.len(), ops::short_hash(&data)))
}

// Requests bigger than one FUSE message, odd sizes and offsets, across copy-up.
diff_case!(large_and_odd_sized_io, base(), |r: &Path, log: &mut Log| {
    for chunk in [1, 4095, 65_537, 1 << 20] {
        log.rec(
            format!("read data/big by {chunk}"),
            read_in_chunks(r, "data/big", chunk),
        );
    }
    let pattern: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|i| (i % 251) as u8).collect();
    log.rec(
        "3 MiB write at odd offset",
        ops::write_at(r, "data/big", 12_345, &pattern),
    );
    log.rec(
        "read back by 128 KiB",
        read_in_chunks(r, "data/big", 128 * 1024),
    );
    log.rec("stat data/big", ops::stat(r, "data/big"));
    log.rec(
        "write past EOF",
        ops::write_at(r, "etc/passwd", 10 << 20, b"tail"),
    );
    log.rec("read sparse tail", read_in_chunks(r, "etc/passwd", 1 << 20));
    holes(r, "etc/passwd", log);
});

diff_case!(lookup_and_readdir, base(), |r: &Path, log: &mut Log| {
    stat_all(r, log);
    for d in [
        "", "etc", "dir", "dir2", "opq", "gone", "links", "emptydir", "dir/sub",
    ] {
        log.rec(format!("readdir {d}"), ops::readdir(r, d));
        log.rec(format!("d_type/d_ino {d}"), dirent_consistency(r, d));
    }
    for f in [
        "etc/passwd",
        "etc/hosts",
        "data/exec",
        "data/big",
        "dir/a",
        "opq/new",
        "sym",
    ] {
        log.rec(format!("read {f}"), ops::read(r, f));
    }
    log.rec("readlink abs", ops::readlink(r, "abs"));
    log.rec("xattrs data/exec", ops::listxattr(r, "data/exec"));
    log.rec("xattrs opq", ops::listxattr(r, "opq"));
    log.rec(
        "opaque xattr hidden",
        ops::getxattr(r, "opq", "trusted.overlay.opaque"),
    );
});

diff_case!(
    write_append_truncate_copy_up,
    base(),
    |r: &Path, log: &mut Log| {
        log.rec("write data/exec", ops::write_at(r, "data/exec", 0, b"#"));
        log.rec("stat data/exec", ops::stat(r, "data/exec"));
        log.rec("xattrs data/exec", ops::listxattr(r, "data/exec"));
        log.rec(
            "user.foo data/exec",
            ops::getxattr(r, "data/exec", "user.foo"),
        );
        log.rec(
            "append etc/passwd",
            ops::append(r, "etc/passwd", b"new:x:1:1::/:/bin/false\n"),
        );
        log.rec("read etc/passwd", ops::read(r, "etc/passwd"));
        log.rec("truncate etc/hosts", ops::truncate(r, "etc/hosts", 3));
        log.rec("read etc/hosts", ops::read(r, "etc/hosts"));
        log.rec("stat etc/hosts", ops::stat(r, "etc/hosts"));
        log.rec("stat etc", ops::stat(r, "etc"));
        log.rec("stat dir (parent of untouched)", ops::stat(r, "dir"));
        log.rec("write dir/sub/c", ops::write_at(r, "dir/sub/c", 1, b"cc"));
        log.rec("stat dir after child copy-up", ops::stat(r, "dir"));
        log.rec("stat dir/sub after child copy-up", ops::stat(r, "dir/sub"));
        log.rec("truncate dir (EISDIR)", ops::truncate(r, "dir", 0));
        log.rec("read untouched dir/a", ops::read(r, "dir/a"));
    }
);

/// Outcome of lseek(SEEK_DATA/SEEK_HOLE) at `off`.
fn seek(r: &Path, p: &str, off: i64, whence: libc::c_int) -> Res {
    let fd = ops::open(r, p, libc::O_RDONLY, 0)?;
    let rc = unsafe { libc::lseek(fd.0, off, whence) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc.to_string())
    }
}

fn holes(r: &Path, p: &str, log: &mut Log) {
    for off in [0, 4096, 600 * 1024] {
        log.rec(
            format!("SEEK_DATA {p} {off}"),
            seek(r, p, off, libc::SEEK_DATA),
        );
        log.rec(
            format!("SEEK_HOLE {p} {off}"),
            seek(r, p, off, libc::SEEK_HOLE),
        );
    }
}

diff_case!(
    sparse_copy_up_keeps_holes,
    base(),
    |r: &Path, log: &mut Log| {
        holes(r, "data/big", log);
        log.rec("write data/big", ops::write_at(r, "data/big", 4, b"!"));
        holes(r, "data/big", log);
        log.rec("read data/big", ops::read(r, "data/big"));
        log.rec("stat data/big", ops::stat(r, "data/big"));
    }
);

diff_case!(create_flags, base(), |r: &Path, log: &mut Log| {
    let excl = libc::O_WRONLY | libc::O_EXCL;
    log.rec(
        "O_EXCL lower file",
        ops::create(r, "etc/passwd", excl, 0o644),
    );
    log.rec(
        "O_EXCL whited-out name",
        ops::create(r, "dir/b", excl, 0o640),
    );
    log.rec("O_EXCL new", ops::create(r, "etc/new", excl, 0o640));
    log.rec(
        "O_EXCL dangling symlink",
        ops::create(r, "dangling", excl, 0o644),
    );
    log.rec(
        "O_TRUNC lower",
        ops::create(r, "etc/hosts", libc::O_WRONLY | libc::O_TRUNC, 0),
    );
    log.rec("stat etc/hosts", ops::stat(r, "etc/hosts"));
    log.rec(
        "xattr kept on O_TRUNC",
        ops::getxattr(r, "etc/hosts", "user.layer"),
    );
    log.rec("O_APPEND", ops::append(r, "dir/a", b"appended"));
    log.rec("read dir/a", ops::read(r, "dir/a"));
    log.rec("create in opaque", ops::create(r, "opq/old1", excl, 0o600));
    log.rec("readdir opq", ops::readdir(r, "opq"));
    log.rec(
        "create under file",
        ops::create(r, "etc/passwd/x", excl, 0o600),
    );
    log.rec("create in gone", ops::create(r, "gone/x", excl, 0o600));
    log.rec(
        "O_WRONLY on a lower dir",
        ops::create(r, "dir", libc::O_WRONLY, 0),
    );
    log.rec("stat etc/new", ops::stat(r, "etc/new"));
});

fn tmpfile_and_link(r: &Path, dir: &str, name: &str) -> Res {
    let fd = ops::open(r, dir, libc::O_TMPFILE | libc::O_RDWR, 0o640)?;
    let data = b"from a tmpfile";
    let n = unsafe { libc::write(fd.0, data.as_ptr().cast(), data.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let src = common::layers::cpath(Path::new(&format!("/proc/self/fd/{}", fd.0)));
    let dst = common::layers::cpath(&r.join(name));
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            src.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            0x400,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(String::new())
    }
}

diff_case!(
    #[ignore = "O_TMPFILE: fuser 0.18 has no FUSE_TMPFILE request, nestfs answers EOPNOTSUPP (documented)"]
    o_tmpfile_linkat,
    base(),
    |r: &Path, log: &mut Log| {
        log.rec(
            "tmpfile in lower dir",
            tmpfile_and_link(r, "dir", "dir/linked"),
        );
        log.rec("read dir/linked", ops::read(r, "dir/linked"));
        log.rec("stat dir/linked", ops::stat(r, "dir/linked"));
        log.rec("tmpfile over whiteout", tmpfile_and_link(r, "dir", "dir/b"));
        log.rec(
            "tmpfile onto existing",
            tmpfile_and_link(r, "etc", "etc/passwd"),
        );
        log.rec("readdir dir", ops::readdir(r, "dir"));
    }
);

diff_case!(
    mkdir_over_whiteout_is_opaque,
    base(),
    |r: &Path, log: &mut Log| {
        log.rec("mkdir gone", ops::mkdir(r, "gone", 0o700));
        log.rec("readdir gone", ops::readdir(r, "gone"));
        log.rec("stat gone/x", ops::stat(r, "gone/x"));
        log.rec("stat gone", ops::stat(r, "gone"));
        for p in ["dir/a", "dir/sub/c"] {
            log.rec(format!("unlink {p}"), ops::unlink(r, p));
        }
        log.rec("rmdir dir/sub", ops::rmdir(r, "dir/sub"));
        log.rec("rmdir dir/sub2", ops::rmdir(r, "dir/sub2"));
        log.rec("rmdir dir", ops::rmdir(r, "dir"));
        log.rec("mkdir dir", ops::mkdir(r, "dir", 0o755));
        log.rec("readdir dir", ops::readdir(r, "dir"));
        log.rec("stat dir/sub/c", ops::stat(r, "dir/sub/c"));
        log.rec("mkdir existing", ops::mkdir(r, "etc", 0o755));
        log.rec("mkdir over file", ops::mkdir(r, "etc/passwd", 0o755));
        log.rec(
            "mkdir over whiteout file name",
            ops::mkdir(r, "dir2/x", 0o755),
        );
        log.rec("readdir dir2/x", ops::readdir(r, "dir2/x"));
    }
);

diff_case!(unlink_and_rmdir, base(), |r: &Path, log: &mut Log| {
    log.rec("unlink lower", ops::unlink(r, "etc/passwd"));
    log.rec("unlink again", ops::unlink(r, "etc/passwd"));
    log.rec(
        "create upper",
        ops::create(r, "etc/up", libc::O_WRONLY, 0o644),
    );
    log.rec("unlink upper", ops::unlink(r, "etc/up"));
    log.rec("unlink whited-out", ops::unlink(r, "dir/b"));
    log.rec("unlink dir", ops::unlink(r, "dir"));
    log.rec("rmdir file", ops::rmdir(r, "dir/a"));
    log.rec("rmdir nonempty", ops::rmdir(r, "dir"));
    log.rec("rmdir all-whited-out", ops::rmdir(r, "dir2"));
    log.rec("rmdir emptydir", ops::rmdir(r, "emptydir"));
    log.rec("unlink opq/new", ops::unlink(r, "opq/new"));
    log.rec("rmdir opq", ops::rmdir(r, "opq"));
    log.rec("unlink symlink", ops::unlink(r, "sym"));
    log.rec("unlink fifo", ops::unlink(r, "fifo"));
    log.rec("unlink chardev", ops::unlink(r, "null"));
    log.rec("unlink h1", ops::unlink(r, "links/h1"));
    log.rec("stat h2", ops::stat(r, "links/h2"));
    log.rec("readdir root", ops::readdir(r, ""));
    log.rec(
        "recreate etc/passwd",
        ops::create(r, "etc/passwd", libc::O_WRONLY, 0o600),
    );
    log.rec("stat etc/passwd", ops::stat(r, "etc/passwd"));
});

diff_case!(rename_files, base(), |r: &Path, log: &mut Log| {
    log.rec(
        "lower -> new",
        ops::rename(r, "etc/passwd", "etc/passwd.moved", 0),
    );
    log.rec("read moved", ops::read(r, "etc/passwd.moved"));
    log.rec("old gone", ops::stat(r, "etc/passwd"));
    log.rec("over existing", ops::rename(r, "dir/a", "etc/hosts", 0));
    log.rec("read etc/hosts", ops::read(r, "etc/hosts"));
    log.rec("xattrs etc/hosts", ops::listxattr(r, "etc/hosts"));
    let noreplace = libc::RENAME_NOREPLACE;
    log.rec(
        "NOREPLACE existing",
        ops::rename(r, "data/exec", "etc/hosts", noreplace),
    );
    log.rec(
        "NOREPLACE onto whiteout",
        ops::rename(r, "data/exec", "dir/b", noreplace),
    );
    log.rec("stat dir/b", ops::stat(r, "dir/b"));
    let exchange = libc::RENAME_EXCHANGE;
    log.rec(
        "EXCHANGE lower files",
        ops::rename(r, "links/h1", "sym", exchange),
    );
    log.rec("readlink links/h1", ops::readlink(r, "links/h1"));
    log.rec("read sym", ops::read(r, "sym"));
    log.rec(
        "EXCHANGE with missing",
        ops::rename(r, "opq/new", "opq/none", exchange),
    );
    log.rec(
        "rename onto dir",
        ops::rename(r, "etc/hosts", "emptydir", 0),
    );
    log.rec("rename missing", ops::rename(r, "nope", "nope2", 0));
    log.rec("rename fifo", ops::rename(r, "fifo", "dir/fifo", 0));
    log.rec(
        "rename into whited-out dir",
        ops::rename(r, "abs", "gone/abs", 0),
    );
    log.rec("readdir root", ops::readdir(r, ""));
    log.rec("readdir dir", ops::readdir(r, "dir"));
});

diff_case!(rename_dirs, base(), |r: &Path, log: &mut Log| {
    log.rec("mkdir new", ops::mkdir(r, "newdir", 0o755));
    log.rec(
        "populate",
        ops::create(r, "newdir/f", libc::O_WRONLY, 0o644),
    );
    log.rec(
        "rename pure-upper dir",
        ops::rename(r, "newdir", "newdir2", 0),
    );
    log.rec("readdir newdir2", ops::readdir(r, "newdir2"));
    log.rec(
        "rename lower dir (EXDEV)",
        ops::rename(r, "dir", "dir.moved", 0),
    );
    log.rec(
        "rename lower empty dir",
        ops::rename(r, "emptydir", "emptydir2", 0),
    );
    log.rec("rename opaque dir", ops::rename(r, "opq", "opq2", 0));
    log.rec(
        "rename upper dir over lower empty dir",
        ops::rename(r, "newdir2", "emptydir", 0),
    );
    log.rec("mkdir e2", ops::mkdir(r, "e2", 0o755));
    log.rec(
        "rename upper empty over all-whited-out",
        ops::rename(r, "e2", "dir2", 0),
    );
    log.rec("readdir dir2", ops::readdir(r, "dir2"));
    log.rec(
        "rename dir into itself",
        ops::rename(r, "dir2", "dir2/in", 0),
    );
    log.rec("readdir root", ops::readdir(r, ""));
});

diff_case!(hardlinks, base(), |r: &Path, log: &mut Log| {
    log.rec("stat h1", ops::stat(r, "links/h1"));
    log.rec("link lower", ops::link(r, "etc/passwd", "etc/passwd2"));
    log.rec("stat passwd", ops::stat(r, "etc/passwd"));
    log.rec("stat passwd2", ops::stat(r, "etc/passwd2"));
    log.rec("append via link", ops::append(r, "etc/passwd2", b"x"));
    log.rec("read passwd", ops::read(r, "etc/passwd"));
    log.rec("write h1", ops::write_at(r, "links/h1", 0, b"H"));
    log.rec("read h2", ops::read(r, "links/h2"));
    log.rec("stat h1 after", ops::stat(r, "links/h1"));
    log.rec("link onto existing", ops::link(r, "dir/a", "etc/hosts"));
    log.rec("link dir", ops::link(r, "dir", "dir.l"));
    log.rec("link onto whiteout", ops::link(r, "dir/a", "dir/b"));
    log.rec("link symlink", ops::link(r, "sym", "sym2"));
    log.rec("readlink sym2", ops::readlink(r, "sym2"));
});

// Each name of a lower file with two links shows its own attributes once a change through one
// name copies it up (and breaks the link), whichever name was looked up last: the kernel caches
// their shared inode's attributes, and the lookup of each path walk refreshes them.
diff_case!(
    hardlink_attrs_per_name,
    base(),
    |r: &Path, log: &mut Log| {
        for (what, change) in [
            ("chmod h1", ops::chmod as fn(&Path, &str, u32) -> Res),
            ("truncate h2", |r: &Path, p: &str, _| ops::truncate(r, p, 3)),
        ] {
            let p = if what.ends_with("h1") {
                "links/h1"
            } else {
                "links/h2"
            };
            log.rec("stat h1", ops::stat(r, "links/h1"));
            log.rec("stat h2", ops::stat(r, "links/h2"));
            log.rec(what, change(r, p, 0o600));
            for _ in 0..2 {
                log.rec("stat h2", ops::stat(r, "links/h2"));
                log.rec("stat h1", ops::stat(r, "links/h1"));
            }
        }
        log.rec("utimes h2", ops::utimes(r, "links/h2", 1_000_000));
        log.rec("stat h1", ops::stat(r, "links/h1"));
        log.rec("stat h2", ops::stat(r, "links/h2"));
    }
);

fn new_file(r: &Path, p: &str, data: &[u8]) -> Res {
    ops::create(r, p, libc::O_WRONLY, 0o644).and_then(|_| ops::append(r, p, data))
}

// The first name of a file keeps working when its later names go: the kernel cached it while
// the file had one link, and it stays the same file when another name is removed or replaced.
diff_case!(
    a_name_outlives_the_others,
    base(),
    |r: &Path, log: &mut Log| {
        log.rec("create n1", new_file(r, "n1", b"one"));
        log.rec("link n2", ops::link(r, "n1", "n2"));
        log.rec("unlink n2", ops::unlink(r, "n2"));
        log.rec("read n1", ops::read(r, "n1"));
        log.rec("append n1", ops::append(r, "n1", b"+"));
        log.rec("stat n1", ops::stat(r, "n1"));
        log.rec("create m1", new_file(r, "m1", b"m"));
        log.rec("link m2", ops::link(r, "m1", "m2"));
        log.rec("create y", new_file(r, "y", b"yy"));
        log.rec("rename onto m2", ops::rename(r, "y", "m2", 0));
        log.rec("read m1", ops::read(r, "m1"));
        log.rec("read m2", ops::read(r, "m2"));
        log.rec("link lower", ops::link(r, "dir/a", "dir/a2"));
        log.rec("move it", ops::rename(r, "dir/a2", "a3", 0));
        log.rec("unlink moved", ops::unlink(r, "a3"));
        log.rec("read dir/a", ops::read(r, "dir/a"));
        log.rec("create e1", new_file(r, "e1", b"e"));
        log.rec("link e2", ops::link(r, "e1", "e2"));
        log.rec("create f", new_file(r, "f", b"ff"));
        let exchange = libc::RENAME_EXCHANGE;
        log.rec("exchange f e2", ops::rename(r, "f", "e2", exchange));
        log.rec("unlink f", ops::unlink(r, "f"));
        log.rec("read e1", ops::read(r, "e1"));
        log.rec("read e2", ops::read(r, "e2"));
        log.rec("stat e1", ops::stat(r, "e1"));
    }
);

diff_case!(
    symlinks_and_special_files,
    base(),
    |r: &Path, log: &mut Log| {
        log.rec("readlink sym", ops::readlink(r, "sym"));
        log.rec("readlink dangling", ops::readlink(r, "dangling"));
        log.rec("readlink file", ops::readlink(r, "etc/passwd"));
        log.rec("symlink new", ops::symlink(r, "../etc/hosts", "dir/s"));
        log.rec("read through", ops::read(r, "dir/s"));
        log.rec("symlink over existing", ops::symlink(r, "x", "etc/passwd"));
        log.rec("symlink over whiteout", ops::symlink(r, "x", "gone"));
        log.rec("stat gone", ops::stat(r, "gone"));
        log.rec("mknod fifo", ops::mknod(r, "p", libc::S_IFIFO | 0o640, 0));
        log.rec(
            "mknod socket",
            ops::mknod(r, "s", libc::S_IFSOCK | 0o600, 0),
        );
        log.rec(
            "mknod chardev",
            ops::mknod(r, "zero", libc::S_IFCHR | 0o666, libc::makedev(1, 5)),
        );
        log.rec(
            "mknod whiteout-like",
            ops::mknod(r, "w", libc::S_IFCHR | 0o600, 0),
        );
        for p in ["p", "s", "zero", "w", "dir/s", "null", "fifo"] {
            log.rec(format!("stat {p}"), ops::stat(r, p));
        }
        log.rec("readdir root", ops::readdir(r, ""));
    }
);

diff_case!(chmod_chown_utimes, base(), |r: &Path, log: &mut Log| {
    log.rec("chmod lower", ops::chmod(r, "etc/passwd", 0o4711));
    log.rec("chown lower", ops::lchown(r, "data/exec", 7, 8));
    log.rec("stat exec", ops::stat(r, "data/exec"));
    log.rec(
        "xattr after chown",
        ops::getxattr(r, "data/exec", "user.foo"),
    );
    log.rec("utimes lower", ops::utimes(r, "dir/a", 1_234_567_890));
    log.rec("stat dir/a", ops::stat(r, "dir/a"));
    log.rec("chmod lower dir", ops::chmod(r, "dir", 0o700));
    log.rec("chown lower dir", ops::lchown(r, "dir", 0, 0));
    log.rec("stat dir", ops::stat(r, "dir"));
    log.rec("readdir dir after copy-up", ops::readdir(r, "dir"));
    log.rec("lchown symlink", ops::lchown(r, "sym", 3, 3));
    log.rec("stat sym", ops::stat(r, "sym"));
    log.rec("stat sym target", ops::stat(r, "etc/passwd"));
    log.rec("utimes symlink", ops::utimes(r, "abs", 1_111_111_111));
    log.rec("stat abs", ops::stat(r, "abs"));
    log.rec("chmod fifo", ops::chmod(r, "fifo", 0o600));
    log.rec("stat fifo", ops::stat(r, "fifo"));
    log.rec("chmod missing", ops::chmod(r, "dir/b", 0o600));
    log.rec("truncate up", ops::truncate(r, "dir/sub/c", 10_000));
    log.rec("stat c", ops::stat(r, "dir/sub/c"));
});

// Linux truncates on O_TRUNC even when the file is opened read-only.
diff_case!(
    read_only_open_with_o_trunc,
    base(),
    |r: &Path, log: &mut Log| {
        let open =
            |p: &str| ops::open(r, p, libc::O_RDONLY | libc::O_TRUNC, 0).map(|_| String::new());
        log.rec("lower file", open("etc/passwd"));
        log.rec("stat it", ops::stat(r, "etc/passwd"));
        log.rec("copy up hosts", ops::append(r, "etc/hosts", b"x"));
        log.rec("upper file", open("etc/hosts"));
        log.rec("read it", ops::read(r, "etc/hosts"));
        log.rec("hard link", open("links/h1"));
        log.rec("stat h2", ops::stat(r, "links/h2"));
    }
);

/// Whether `change` moves the change time of `p` (after a pause longer than the clock's tick).
fn moves_ctime(r: &Path, p: &str, change: impl Fn() -> Res) -> Res {
    use std::os::unix::fs::MetadataExt;
    let ctime = || std::fs::symlink_metadata(r.join(p)).map(|m| (m.ctime(), m.ctime_nsec()));
    let before = ctime()?;
    std::thread::sleep(std::time::Duration::from_millis(20));
    change()?;
    Ok(if ctime()? == before {
        "ctime kept"
    } else {
        "ctime moved"
    }
    .into())
}

// chown(-1, -1) changes nothing but the change time, of lower and upper files alike.
diff_case!(chown_to_the_same_ids, base(), |r: &Path, log: &mut Log| {
    let keep = |p: &'static str| move || ops::lchown(r, p, u32::MAX, u32::MAX);
    log.rec(
        "lower file",
        moves_ctime(r, "etc/passwd", keep("etc/passwd")),
    );
    log.rec(
        "upper file",
        moves_ctime(r, "etc/passwd", keep("etc/passwd")),
    );
    log.rec("lower dir", moves_ctime(r, "dir", keep("dir")));
    log.rec("stat passwd", ops::stat(r, "etc/passwd"));
});

// Removing an attribute the lower file lacks copies nothing up (so a lower hard link stays one).
diff_case!(remove_missing_xattr, base(), |r: &Path, log: &mut Log| {
    log.rec(
        "remove missing",
        ops::removexattr(r, "links/h1", "user.none"),
    );
    log.rec("stat h1", ops::stat(r, "links/h1"));
    log.rec("stat h2", ops::stat(r, "links/h2"));
    log.rec(
        "remove missing on a dir",
        ops::removexattr(r, "dir", "user.none"),
    );
});

// Directories moved or swapped into merged parents are made opaque, from either side of an
// exchange, also when the parent gets its upper copy only for the move.
diff_case!(
    moved_dirs_become_opaque,
    base(),
    |r: &Path, log: &mut Log| {
        log.rec("mkdir new", ops::mkdir(r, "new", 0o755));
        log.rec("mkdir new2", ops::mkdir(r, "new2", 0o755));
        let exchange = libc::RENAME_EXCHANGE;
        log.rec(
            "dir for a lower file",
            ops::rename(r, "new", "dir/a", exchange),
        );
        log.rec(
            "lower file for a dir",
            ops::rename(r, "etc/passwd", "new2", exchange),
        );
        log.rec("readdir dir/a", ops::readdir(r, "dir/a"));
        log.rec("readdir etc/passwd", ops::readdir(r, "etc/passwd"));
        log.rec("read new", ops::read(r, "new"));
        log.rec("read new2", ops::read(r, "new2"));
        log.rec("mkdir new3", ops::mkdir(r, "new3", 0o755));
        log.rec(
            "into a lower-only dir",
            ops::rename(r, "new3", "dir/sub/c", exchange),
        );
        log.rec("mkdir new4", ops::mkdir(r, "new4", 0o755));
        log.rec(
            "move into a lower-only dir",
            ops::rename(r, "new4", "data/d", 0),
        );
        log.rec("readdir data", ops::readdir(r, "data"));
    }
);

diff_case!(xattrs, base(), |r: &Path, log: &mut Log| {
    log.rec("list exec", ops::listxattr(r, "data/exec"));
    log.rec("set on lower", ops::setxattr(r, "dir/a", "user.a", b"1", 0));
    log.rec("get", ops::getxattr(r, "dir/a", "user.a"));
    log.rec(
        "CREATE existing",
        ops::setxattr(r, "dir/a", "user.a", b"2", libc::XATTR_CREATE),
    );
    log.rec(
        "REPLACE missing",
        ops::setxattr(r, "dir/a", "user.b", b"2", libc::XATTR_REPLACE),
    );
    log.rec(
        "remove copied",
        ops::removexattr(r, "data/exec", "user.foo"),
    );
    log.rec(
        "remove missing",
        ops::removexattr(r, "data/exec", "user.foo"),
    );
    log.rec("list exec after", ops::listxattr(r, "data/exec"));
    log.rec("get missing", ops::getxattr(r, "etc/passwd", "user.none"));
    log.rec(
        "set on lower dir",
        ops::setxattr(r, "dir", "user.d", b"dir", 0),
    );
    log.rec("list dir", ops::listxattr(r, "dir"));
    log.rec(
        "set overlay xattr",
        ops::setxattr(r, "etc/passwd", "trusted.overlay.x", b"1", 0),
    );
    log.rec(
        "get overlay opaque",
        ops::getxattr(r, "opq", "trusted.overlay.opaque"),
    );
    log.rec("list opq", ops::listxattr(r, "opq"));
    log.rec(
        "set trusted",
        ops::setxattr(r, "etc/passwd", "trusted.mine", b"t", 0),
    );
    log.rec("list passwd", ops::listxattr(r, "etc/passwd"));
    log.rec("set on symlink", ops::setxattr(r, "sym", "user.s", b"s", 0));
    log.rec(
        "set on fifo",
        ops::setxattr(r, "fifo", "trusted.f", b"f", 0),
    );
    log.rec("list fifo", ops::listxattr(r, "fifo"));
    log.rec(
        "empty value",
        ops::setxattr(r, "dir/a", "user.empty", b"", 0),
    );
    log.rec("get empty", ops::getxattr(r, "dir/a", "user.empty"));
});

fn statfs(r: &Path) -> Res {
    let c = common::layers::cpath(r);
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(format!(
        "bsize={} blocks={} namemax={}",
        s.f_bsize, s.f_blocks, s.f_namemax
    ))
}

// Names that look like OCI whiteout markers are plain names once created through the mount:
// they must stay ordinary entries (also after the remount in `finish`).
diff_case!(
    whiteout_lookalike_names_are_plain,
    base(),
    |r: &Path, log: &mut Log| {
        log.rec(
            "create .wh.etc",
            ops::create(r, ".wh.etc", libc::O_WRONLY, 0o644),
        );
        log.rec(
            "create opq marker",
            ops::create(r, "dir/.wh..wh..opq", libc::O_WRONLY, 0o644),
        );
        log.rec("mkdir dir/.wh.sub", ops::mkdir(r, "dir/.wh.sub", 0o755));
        log.rec("readdir root", ops::readdir(r, ""));
        log.rec("readdir dir", ops::readdir(r, "dir"));
        log.rec("stat etc", ops::stat(r, "etc"));
        log.rec("stat dir/sub", ops::stat(r, "dir/sub"));
        log.rec("unlink .wh.etc", ops::unlink(r, ".wh.etc"));
        log.rec("stat etc after", ops::stat(r, "etc"));
    }
);

fn long_layers() -> Vec<Layer> {
    let name = format!("long/{}", "n".repeat(255));
    vec![
        Layer::new().file("long/short", "s"),
        Layer::new().file(&name, "long"),
    ]
}

// 255-byte names: whiting one out must work although a `.wh.` form of it cannot exist.
diff_case!(longest_names, long_layers(), |r: &Path, log: &mut Log| {
    let longest = format!("long/{}", "n".repeat(255));
    let too_long = format!("long/{}", "m".repeat(256));
    log.rec(
        "readdir",
        ops::readdir(r, "long").map(|s| s.len().to_string()),
    );
    log.rec("read longest", ops::read(r, &longest));
    log.rec(
        "create too long",
        ops::create(r, &too_long, libc::O_WRONLY, 0o644),
    );
    log.rec("unlink longest (whiteout)", ops::unlink(r, &longest));
    log.rec("readdir after", ops::readdir(r, "long"));
    log.rec(
        "recreate longest",
        ops::create(r, &longest, libc::O_WRONLY, 0o600),
    );
    log.rec("rename longest", ops::rename(r, &longest, "long/short", 0));
    log.rec("readdir end", ops::readdir(r, "long"));
});

/// A merged directory too big for one getdents or one FUSE read.
fn many_layers() -> Vec<Layer> {
    let (mut top, mut bottom) = (Layer::new(), Layer::new());
    for i in 0..1500 {
        bottom = bottom.file(&format!("many/a-rather-long-entry-name-{i:04}"), "x");
    }
    for i in (0..1500).step_by(7) {
        top = top.whiteout(&format!("many/a-rather-long-entry-name-{i:04}"));
    }
    for i in 0..50 {
        top = top.file(&format!("many/top-{i:02}"), "t");
    }
    vec![top, bottom]
}

/// The names of one open directory stream of `d`, read to the end, `.` and `..` left out.
fn stream_names(dir: *mut libc::DIR) -> Vec<String> {
    let mut names = Vec::new();
    loop {
        let e = unsafe { libc::readdir(dir) };
        if e.is_null() {
            return names;
        }
        let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
        let name = name.to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
}

fn open_stream(r: &Path, d: &str) -> std::io::Result<*mut libc::DIR> {
    let path = common::layers::cpath(&r.join(d));
    let dir = unsafe { libc::opendir(path.as_ptr()) };
    if dir.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    Ok(dir)
}

/// Removes every name of `d` as one stream reads it (as `rm -r` may): each name that was
/// there must come exactly once although the listing changes between the reads.
fn remove_while_listing(r: &Path, d: &str) -> Res {
    let dir = open_stream(r, d)?;
    let mut seen = Vec::new();
    loop {
        let e = unsafe { libc::readdir(dir) };
        if e.is_null() {
            break;
        }
        let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
        let name = name.to_string_lossy().into_owned();
        if name != "." && name != ".." {
            std::fs::remove_file(r.join(d).join(&name))?;
            seen.push(name);
        }
    }
    unsafe { libc::closedir(dir) };
    let n = seen.len();
    seen.sort();
    seen.dedup();
    Ok(format!("{n} removed, {} distinct", seen.len()))
}

/// A stream rewound after changes through the mount lists them.
fn rewind_after_changes(r: &Path, d: &str) -> Res {
    let dir = open_stream(r, d)?;
    let before = stream_names(dir).len();
    let p = |n: &str| format!("{d}/{n}");
    let changed = ops::create(r, &p("created"), libc::O_WRONLY, 0o644)
        .and_then(|_| ops::unlink(r, &p("top-00")))
        .and_then(|_| ops::rename(r, &p("top-01"), &p("renamed"), 0));
    unsafe { libc::rewinddir(dir) };
    let mut after = stream_names(dir);
    unsafe { libc::closedir(dir) };
    changed?;
    after.sort();
    let kept: Vec<_> = after.iter().filter(|n| !n.starts_with("a-")).collect();
    Ok(format!("{before} then {}: {kept:?}", after.len()))
}

// Listings the kernel caches and the daemon snapshots per directory (no directory handles)
// stay exact across changes made through the mount.
diff_case!(
    listings_across_changes,
    many_layers(),
    |r: &Path, log: &mut Log| {
        log.rec(
            "readdir many",
            ops::readdir(r, "many").map(|s| s.len().to_string()),
        );
        log.rec("rewind after changes", rewind_after_changes(r, "many"));
        log.rec(
            "readdir again",
            ops::readdir(r, "many").map(|s| s.len().to_string()),
        );
        // A change makes the kernel drop its cached listing: the stream reads from the daemon.
        log.rec(
            "create",
            ops::create(r, "many/fresh", libc::O_WRONLY, 0o644),
        );
        log.rec("remove while listing", remove_while_listing(r, "many"));
        log.rec("readdir emptied", ops::readdir(r, "many"));
        log.rec("rmdir emptied", ops::rmdir(r, "many"));
    }
);

/// A read-only fd opened before another fd's write copies the file up.
fn read_fd_across_copy_up(r: &Path) -> Res {
    let ro = ops::open(r, "etc/passwd", libc::O_RDONLY, 0)?;
    ops::write_at(r, "etc/passwd", 0, b"ROOT")?;
    let mut buf = [0u8; 8];
    let n = unsafe { libc::pread(ro.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

// Passthrough reads keep the lower copy for fds opened before (tests/passthrough.rs); without
// it nestfs behaves as overlayfs does.
diff_case!(
    fd_opened_before_copy_up,
    options = "nopassthrough",
    base(),
    |r: &Path, log: &mut Log| {
        log.rec("pread old fd after copy-up", read_fd_across_copy_up(r));
    }
);

/// Runs `f` on a thread whose filesystem uid/gid are `uid`/`gid`: the kernel drops the
/// filesystem capabilities of that thread, so permission checks apply as for that user.
fn as_user(uid: u32, gid: u32, f: impl FnOnce() + Send) {
    std::thread::scope(|s| {
        s.spawn(|| {
            // setfsuid/setfsgid return the previous id; the change is checked through stat below.
            unsafe {
                libc::setfsgid(gid);
                libc::setfsuid(uid);
            }
            assert_eq!(unsafe { libc::setfsuid(u32::MAX) } as u32, uid, "setfsuid");
            f();
        });
    });
}

fn user_layers() -> Vec<Layer> {
    let mut l = base();
    l.push(
        Layer::new()
            .dir("home/user")
            .mode(0o700)
            .owner(1000, 1000)
            .file("home/user/notes", "mine")
            .owner(1000, 1000)
            .dir("tmp")
            .mode(0o1777)
            .file("tmp/roots", "root's")
            .mode(0o666)
            .dir("private")
            .mode(0o700)
            .file("private/f", "secret")
            .mode(0o644),
    );
    l
}

// Permission checks for an unprivileged caller must match the kernel's (the daemon runs as root,
// so a missing check would let anyone read or change anything).
diff_case!(
    unprivileged_caller_permissions,
    user_layers(),
    |r: &Path, log: &mut Log| {
        as_user(1000, 1000, || {
            log.rec("read 0600 root file", ops::read(r, "etc/hosts"));
            log.rec("read 0751 own file", ops::read(r, "data/exec"));
            log.rec("write 0644 root file", ops::append(r, "etc/passwd", b"x"));
            log.rec(
                "create in root-owned dir",
                ops::create(r, "etc/mine", libc::O_WRONLY, 0o644),
            );
            log.rec(
                "create in own dir",
                ops::create(r, "home/user/new", libc::O_WRONLY, 0o600),
            );
            log.rec(
                "write own lower file",
                ops::append(r, "home/user/notes", b"!"),
            );
            log.rec("readdir 0700 root dir", ops::readdir(r, "private"));
            log.rec("stat through 0700 root dir", ops::stat(r, "private/f"));
            log.rec(
                "unlink other's file in sticky dir",
                ops::unlink(r, "tmp/roots"),
            );
            log.rec(
                "write 0666 in sticky dir",
                ops::append(r, "tmp/roots", b"w"),
            );
            log.rec(
                "create in sticky dir",
                ops::create(r, "tmp/u", libc::O_WRONLY, 0o644),
            );
            log.rec("chmod other's file", ops::chmod(r, "etc/passwd", 0o777));
            log.rec("chown own file", ops::lchown(r, "home/user/notes", 0, 0));
            log.rec(
                "chmod own file setgid",
                ops::chmod(r, "home/user/notes", 0o2755),
            );
            log.rec("utimes other's file", ops::utimes(r, "etc/passwd", 5));
            log.rec(
                "xattr other's file",
                ops::setxattr(r, "tmp/roots", "user.u", b"1", 0),
            );
            log.rec(
                "xattr own file",
                ops::setxattr(r, "home/user/notes", "user.u", b"1", 0),
            );
            log.rec(
                "trusted xattr own file",
                ops::setxattr(r, "home/user/notes", "trusted.u", b"1", 0),
            );
            log.rec(
                "mknod fifo in own dir",
                ops::mknod(r, "home/user/p", libc::S_IFIFO | 0o600, 0),
            );
            log.rec(
                "mknod dev in own dir",
                ops::mknod(r, "home/user/d", libc::S_IFCHR | 0o600, libc::makedev(1, 3)),
            );
            log.rec(
                "rename other's into own dir",
                ops::rename(r, "etc/hosts", "home/user/h", 0),
            );
            log.rec("link other's file", ops::link(r, "tmp/roots", "tmp/l"));
            log.rec("truncate other's 0666", ops::truncate(r, "tmp/roots", 1));
            log.rec("stat new", ops::stat(r, "home/user/new"));
        });
    }
);

diff_case!(statfs_sanity, base(), |r: &Path, log: &mut Log| {
    log.rec("statvfs", statfs(r));
    log.rec("statvfs subdir", statfs(&r.join("dir")));
});

fn fd_call(r: &Path, p: &str, f: impl Fn(&Fd) -> libc::c_int) -> Res {
    let fd = ops::open(r, p, libc::O_RDWR, 0)?;
    if f(&fd) < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(String::new())
    }
}

diff_case!(
    fsync_fallocate_punch_hole,
    base(),
    |r: &Path, log: &mut Log| {
        log.rec(
            "fsync lower",
            fd_call(r, "etc/passwd", |fd| unsafe { libc::fsync(fd.0) }),
        );
        log.rec(
            "fdatasync",
            fd_call(r, "dir/a", |fd| unsafe { libc::fdatasync(fd.0) }),
        );
        log.rec(
            "fallocate grow",
            fd_call(r, "dir/a", |fd| unsafe {
                libc::fallocate(fd.0, 0, 0, 65536)
            }),
        );
        log.rec("stat dir/a", ops::stat(r, "dir/a"));
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        log.rec(
            "fallocate keep size",
            fd_call(r, "etc/hosts", |fd| unsafe {
                libc::fallocate(fd.0, keep, 0, 1 << 20)
            }),
        );
        log.rec("stat etc/hosts", ops::stat(r, "etc/hosts"));
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        log.rec(
            "punch hole",
            fd_call(r, "data/big", |fd| unsafe {
                libc::fallocate(fd.0, punch, 0, 8192)
            }),
        );
        holes(r, "data/big", log);
        log.rec("read data/big", ops::read(r, "data/big"));
        let dir_fsync = || -> Res {
            let fd = ops::open(r, "etc", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            if unsafe { libc::fsync(fd.0) } < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(String::new())
            }
        };
        log.rec("fsync dir", dir_fsync());
    }
);

fn copy_range(r: &Path, from: &str, to: &str, len: usize) -> Res {
    let src = ops::open(r, from, libc::O_RDONLY, 0)?;
    let dst = ops::open(r, to, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644)?;
    let mut copied = 0usize;
    while copied < len {
        let n = unsafe {
            libc::copy_file_range(
                src.0,
                std::ptr::null_mut(),
                dst.0,
                std::ptr::null_mut(),
                len - copied,
                0,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            break;
        }
        copied += n as usize;
    }
    Ok(copied.to_string())
}

diff_case!(
    copy_file_range_lower_to_new,
    base(),
    |r: &Path, log: &mut Log| {
        log.rec(
            "copy passwd",
            copy_range(r, "etc/passwd", "etc/passwd.copy", 1 << 20),
        );
        log.rec("read copy", ops::read(r, "etc/passwd.copy"));
        log.rec("copy big", copy_range(r, "data/big", "big.copy", 1 << 20));
        log.rec("read big.copy", ops::read(r, "big.copy"));
        log.rec("copy onto lower", copy_range(r, "dir/a", "etc/hosts", 16));
        log.rec("read hosts", ops::read(r, "etc/hosts"));
    }
);

/// Writes through a MAP_SHARED mapping, msyncs and unmaps, returning what read() then sees.
fn mmap_write(r: &Path, p: &str) -> Res {
    let fd = ops::open(r, p, libc::O_RDWR, 0)?;
    let len = 4096;
    if unsafe { libc::ftruncate(fd.0, len as i64) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let m = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd.0, 0) };
    if m == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let msg = b"written through mmap";
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), m.cast::<u8>().add(100), msg.len());
        let synced = libc::msync(m, len, libc::MS_SYNC);
        libc::munmap(m, len);
        if synced < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    drop(fd);
    ops::read(r, p)
}

diff_case!(shared_mmap_write, base(), |r: &Path, log: &mut Log| {
    log.rec("mmap lower file", mmap_write(r, "etc/passwd"));
    log.rec(
        "mmap new file",
        ops::create(r, "m", libc::O_WRONLY, 0o644).and_then(|_| mmap_write(r, "m")),
    );
    log.rec("stat passwd", ops::stat(r, "etc/passwd"));
});

diff_case!(dir_nlink_and_mtime, base(), |r: &Path, log: &mut Log| {
    for d in [
        "", "etc", "dir", "dir2", "opq", "emptydir", "links", "dir/sub",
    ] {
        log.rec(format!("stat {d}"), ops::stat(r, d));
    }
    log.rec("mkdir dir/n", ops::mkdir(r, "dir/n", 0o755));
    log.rec("mkdir new", ops::mkdir(r, "new", 0o755));
    log.rec("mkdir new/a", ops::mkdir(r, "new/a", 0o755));
    log.rec("write etc/passwd", ops::append(r, "etc/passwd", b"x"));
    for d in ["", "etc", "dir", "new", "dir/sub"] {
        log.rec(format!("stat {d} after"), ops::stat(r, d));
    }
    log.rec("rmdir dir/sub2", ops::rmdir(r, "dir/sub2"));
    log.rec("stat dir after rmdir", ops::stat(r, "dir"));
});

/// The read-only mount (lowerdir only) must refuse every change with EROFS, like the kernel.
#[test]
fn read_only_mount() {
    require_env!();
    let scratch = common::Scratch::new();
    let layers = base();
    let k = common::mounts::Side::build(
        &scratch.sub("k"),
        common::mounts::Impl::Kernel,
        &layers,
        Format::Overlay,
    );
    let n = common::mounts::Side::build(
        &scratch.sub("n"),
        common::mounts::Impl::Nestfs,
        &layers,
        Format::Oci,
    );
    let script = |r: &Path, log: &mut Log| {
        log.rec("readdir", ops::readdir(r, ""));
        log.rec("read", ops::read(r, "etc/hosts"));
        log.rec("write", ops::write_at(r, "etc/passwd", 0, b"x"));
        log.rec("create", ops::create(r, "new", libc::O_WRONLY, 0o644));
        log.rec("mkdir", ops::mkdir(r, "d", 0o755));
        log.rec("unlink", ops::unlink(r, "dir/a"));
        log.rec("chmod", ops::chmod(r, "dir/a", 0o777));
        log.rec("setxattr", ops::setxattr(r, "dir/a", "user.x", b"1", 0));
        log.rec("rename", ops::rename(r, "dir/a", "dir/z", 0));
    };
    let (mut kl, mut nl) = (Log::default(), Log::default());
    {
        let km = k.mount_with(false);
        let nm = n.mount_with(false);
        script(km.root(), &mut kl);
        script(nm.root(), &mut nl);
        let ks = common::snapshot::snapshot(km.root(), common::snapshot::Detail::Merged);
        let ns = common::snapshot::snapshot(nm.root(), common::snapshot::Detail::Merged);
        if let Some(d) = common::snapshot::diff("kernel", &ks, "nestfs", &ns) {
            panic!("read-only merged trees differ:\n{d}");
        }
    }
    assert_logs_equal(&kl, &nl);
}

/// Inode numbers: for each path, whether st_ino survives an unmount/remount and whether it stays
/// the same across copy-up; both implementations must behave alike. The root's number is left
/// out on purpose: a FUSE root is always inode 1, the kernel's is the upper dir's.
fn inode_stability(format: Format) {
    let paths = [
        "etc",
        "etc/passwd",
        "etc/hosts",
        "dir/a",
        "links/h1",
        "links/h2",
        "sym",
        "newf",
        "newd",
    ];
    let mut pair = Pair::new(&base(), format);
    let before_copy_up = |r: &Path| -> Vec<u64> {
        paths
            .iter()
            .map(|p| {
                std::fs::symlink_metadata(r.join(p)).map_or(0, |m| {
                    use std::os::unix::fs::MetadataExt;
                    m.ino()
                })
            })
            .collect()
    };
    let k0 = before_copy_up(pair.kroot());
    let n0 = before_copy_up(pair.nroot());
    pair.run(|r: &Path, log: &mut Log| {
        log.rec("copy-up passwd", ops::append(r, "etc/passwd", b"x"));
        log.rec("copy-up h1", ops::append(r, "links/h1", b"x"));
        log.rec("chmod etc", ops::chmod(r, "etc", 0o700));
        log.rec("create newf", ops::create(r, "newf", libc::O_WRONLY, 0o644));
        log.rec("mkdir newd", ops::mkdir(r, "newd", 0o755));
    });
    let k1: Vec<u64> = paths.iter().map(|p| ops::ino(pair.kroot(), p)).collect();
    let n1: Vec<u64> = paths.iter().map(|p| ops::ino(pair.nroot(), p)).collect();
    pair.remount();
    let k2: Vec<u64> = paths.iter().map(|p| ops::ino(pair.kroot(), p)).collect();
    let n2: Vec<u64> = paths.iter().map(|p| ops::ino(pair.nroot(), p)).collect();
    let describe = |i0: &[u64], i1: &[u64], i2: &[u64]| -> Log {
        let mut log = Log::default();
        for (i, p) in paths.iter().enumerate() {
            let copy_up = if i0[i] == 0 {
                "new".to_string()
            } else {
                (i0[i] == i1[i]).to_string()
            };
            log.note(format!(
                "{p}: same after copy-up={copy_up} same after remount={}",
                i1[i] == i2[i]
            ));
        }
        log.note(format!("h1/h2 share an inode: {}", i2[4] == i2[5]));
        log
    };
    assert_logs_equal(&describe(&k0, &k1, &k2), &describe(&n0, &n1, &n2));
    pair.finish();
}

#[test]
fn inode_numbers_stable_root_excluded_overlay_format() {
    require_env!();
    inode_stability(Format::Overlay);
}

#[test]
fn inode_numbers_stable_root_excluded_oci_format() {
    require_env!();
    inode_stability(Format::Oci);
}

/// Every change must survive a remount, including whiteouts and opaque dirs the overlay created.
fn state_survives_remount(format: Format) {
    let mut pair = Pair::new(&base(), format);
    let script = |r: &Path, log: &mut Log| {
        log.rec("unlink", ops::unlink(r, "dir/a"));
        log.rec(
            "rmdir tree",
            ops::unlink(r, "dir/sub/c").and_then(|_| ops::rmdir(r, "dir/sub")),
        );
        log.rec(
            "mkdir opaque",
            ops::rmdir(r, "emptydir").and_then(|_| ops::mkdir(r, "emptydir", 0o700)),
        );
        log.rec("write", ops::write_at(r, "data/big", 300_000, b"mid"));
        log.rec("xattr", ops::setxattr(r, "etc/passwd", "user.x", b"y", 0));
        log.rec("rename", ops::rename(r, "etc/hosts", "hosts", 0));
        log.rec("symlink", ops::symlink(r, "/x", "etc/l"));
    };
    pair.run(script);
    pair.compare_trees("before remount");
    pair.remount();
    pair.run(|r: &Path, log: &mut Log| {
        stat_all(r, log);
        log.rec("readdir dir", ops::readdir(r, "dir"));
        log.rec("xattr", ops::getxattr(r, "etc/passwd", "user.x"));
        log.rec("read big", ops::read(r, "data/big"));
    });
    pair.finish();
}

#[test]
fn state_survives_remount_overlay_format() {
    require_env!();
    state_survives_remount(Format::Overlay);
}

#[test]
fn state_survives_remount_oci_format() {
    require_env!();
    state_survives_remount(Format::Oci);
}

// New entries in a setgid directory take its group (and directories its setgid bit), whoever
// creates them; elsewhere they take the creator's ids, set-id bits asked for kept.
diff_case!(
    setgid_directories_and_new_owners,
    base_with_setgid_dir(),
    |r: &Path, log: &mut Log| {
        log.rec(
            "root creates in setgid dir",
            ops::create(r, "shared/by-root", libc::O_WRONLY, 0o644),
        );
        log.rec("stat", ops::stat(r, "shared/by-root"));
        log.rec(
            "root mkdir in setgid dir",
            ops::mkdir(r, "shared/sub", 0o755),
        );
        log.rec("stat", ops::stat(r, "shared/sub"));
        log.rec(
            "root creates setuid file",
            ops::create(r, "suid", libc::O_WRONLY, 0o4755),
        );
        log.rec("stat", ops::stat(r, "suid"));
        as_user(1000, 1000, || {
            log.rec(
                "user creates in setgid dir",
                ops::create(r, "shared/by-user", libc::O_WRONLY, 0o644),
            );
            log.rec(
                "user creates setgid file in setgid dir",
                ops::create(r, "shared/sgid", libc::O_WRONLY, 0o2755),
            );
        });
        log.rec("stat", ops::stat(r, "shared/by-user"));
        log.rec("stat", ops::stat(r, "shared/sgid"));
    }
);

fn base_with_setgid_dir() -> Vec<Layer> {
    let mut l = base();
    l.push(Layer::new().dir("shared").mode(0o2777).owner(0, 50));
    l
}

// Set-id bits a change must clear, as the kernel clears them: a chown of anything but a
// directory (whoever makes it), and a write, truncate, O_TRUNC open or fallocate by a caller
// without CAP_FSETID; set-group-id without group execute only for callers outside the group.
// The daemon does this itself (FUSE_HANDLE_KILLPRIV_V2), on lower and upper files alike.
diff_case!(setid_bits_cleared_by_changes, setid_layers(), setid_changes);
// The same with every write going through the daemon (as nestfs's image daemons write).
diff_case!(
    setid_bits_cleared_by_daemon_writes,
    options = "nopassthrough",
    setid_layers(),
    setid_changes
);

fn setid_changes(r: &Path, log: &mut Log) {
    log.rec(
        "root creates setuid file",
        ops::create(r, "sid/new", libc::O_WRONLY, 0o4777),
    );
    log.rec("root writes setuid file", ops::append(r, "sid/root", b"r"));
    log.rec(
        "root truncates setuid file",
        ops::truncate(r, "sid/root", 2),
    );
    log.rec("root chowns setuid file", ops::lchown(r, "sid/chown", 5, 5));
    log.rec("root chowns setid dir", ops::lchown(r, "sid/dir", 5, 5));
    log.rec(
        "root chowns sgid file without group exec",
        ops::lchown(r, "sid/nogx-root", 5, 5),
    );
    as_user(1000, 1000, || {
        log.rec("user writes lower file", ops::append(r, "sid/write", b"u"));
        log.rec("user writes upper file", ops::append(r, "sid/new", b"u"));
        log.rec("user truncates", ops::truncate(r, "sid/trunc", 1));
        log.rec(
            "user opens O_TRUNC",
            ops::open(r, "sid/otrunc", libc::O_WRONLY | libc::O_TRUNC, 0).map(|_| String::new()),
        );
        log.rec(
            "user fallocates",
            fd_call(r, "sid/falloc", |fd| unsafe {
                libc::fallocate(fd.0, 0, 0, 8192)
            }),
        );
        log.rec(
            "user writes sgid file of another group",
            ops::append(r, "sid/nogx", b"u"),
        );
        log.rec(
            "user writes sgid file of own group",
            ops::append(r, "sid/nogx-own", b"u"),
        );
        log.rec("user sets times of setid dir", ops::utimes(r, "sid/dir", 7));
        log.rec(
            "user chowns own setid file to itself",
            ops::lchown(r, "sid/own", 1000, 1000),
        );
    });
    for p in [
        "new",
        "root",
        "chown",
        "dir",
        "nogx-root",
        "write",
        "trunc",
        "otrunc",
        "falloc",
        "nogx",
        "nogx-own",
        "own",
    ] {
        log.rec(format!("stat {p}"), ops::stat(r, &format!("sid/{p}")));
    }
}

fn setid_layers() -> Vec<Layer> {
    let mut l = base();
    let mut top = Layer::new()
        .dir("sid")
        .mode(0o777)
        .dir("sid/dir")
        .mode(0o6777);
    for (name, mode, gid) in [
        ("root", 0o6777, 0),
        ("chown", 0o6755, 0),
        ("nogx-root", 0o2767, 0),
        ("write", 0o6777, 0),
        ("trunc", 0o6777, 0),
        ("otrunc", 0o6777, 0),
        ("falloc", 0o6777, 0),
        ("nogx", 0o2767, 0),
        ("nogx-own", 0o2767, 1000),
    ] {
        top = top
            .file(&format!("sid/{name}"), "data")
            .mode(mode)
            .owner(0, gid);
    }
    top = top.file("sid/own", "data").mode(0o6755).owner(1000, 1000);
    l.insert(0, top);
    l
}

//! Changes to the namespace: create, mkdir, mknod, symlink, link, unlink, rmdir, rename,
//! exchange, and the whiteouts they leave. Each copies up what it touches and runs under the
//! change lock ([`Changes`]). (Attribute changes are in [`crate::attrs`].)

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use fuser::FileAttr;

use crate::dir;
use crate::meta::{self, Meta};
use crate::overlay::{Changes, Found, Overlay, Target, UPPER};
use crate::quota::{blocks_of, charged_at};
use crate::sys;
use crate::whiteout::{self, Style};

/// The work dir's whiteout that whiteouts link to (its prefix gets it cleaned at mount).
const SHARED_WHITEOUT: &CStr = c"#nestfs-whiteout";

/// One side of an exchange: parent, name, the entry, and the parent's layer dirs.
type ExchangeSide<'a> = (u64, &'a CStr, &'a Found, &'a [crate::node::LayerDir]);

/// Who asked for a new file: it is created with their ids when the daemon may chown.
#[derive(Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// What a new object is.
pub enum NewKind<'a> {
    Dir(u32),
    Node { mode: u32, rdev: u64 },
    Symlink(&'a CStr),
}

fn check_name(style: Style, name: &CStr) -> io::Result<()> {
    // Where whiteouts are written as OCI markers, such a name would become one.
    if style == Style::Oci && whiteout::is_oci_name(name.to_bytes()) {
        return Err(sys::err(libc::EINVAL));
    }
    Ok(())
}

impl Overlay {
    /// Makes room for a new `name` in `parent`: EEXIST if it is visible, otherwise the
    /// parent's upper copy, with any whiteout for the name removed (reported in the bool).
    fn prepare_new(
        &self,
        ch: &Changes,
        parent: u64,
        name: &CStr,
    ) -> io::Result<(Arc<OwnedFd>, bool)> {
        self.writable()?;
        check_name(self.style, name)?;
        let dirs = self.dirs_of(parent)?;
        match self.resolve(&dirs, name) {
            Ok(_) => return Err(sys::err(libc::EEXIST)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let upper = self.upper_dir(ch, parent)?;
        let had = whiteout::remove_whiteout(upper.as_raw_fd(), name, self.oci_markers(UPPER))?;
        Ok((upper, had))
    }

    /// Whether owners and modes this daemon cannot set for real are recorded in xattrs.
    pub(crate) fn records_meta(&self) -> bool {
        self.meta_xattrs && !self.privileged
    }

    fn fake_device(
        &self,
        dir: i32,
        name: &CStr,
        mode: u32,
        rdev: u64,
        who: Caller,
    ) -> io::Result<()> {
        sys::open_at(
            dir,
            name,
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
            0o600,
        )?;
        let real = sys::stat_at(dir, name)?;
        let (uid, gid) = self.stored_ids(who.uid, who.gid)?;
        let want = Meta {
            uid,
            gid,
            mode,
            rdev,
        };
        meta::record(&sys::xattr_path(dir, Some(name)), &real, &want)
    }

    /// The ids to write into the upper dir for ids the kernel asked for.
    pub(crate) fn stored_ids(&self, uid: u32, gid: u32) -> io::Result<(u32, u32)> {
        match &self.ids {
            Some(m) => m.stored(uid, gid),
            None => Ok((uid, gid)),
        }
    }

    /// Gives a new object its caller's ids (the group stays the directory's under setgid).
    fn own(&self, dir: &OwnedFd, name: &CStr, who: Caller, mode: Option<u32>) -> io::Result<()> {
        if self.records_meta() {
            let real = sys::stat_at(dir.as_raw_fd(), name)?;
            if !meta::can_carry(real.st_mode) {
                return Ok(());
            }
            let (uid, gid) = self.stored_ids(who.uid, who.gid)?;
            let want = Meta {
                uid,
                gid,
                mode: (real.st_mode & libc::S_IFMT) | mode.unwrap_or(real.st_mode) & 0o7777,
                rdev: 0,
            };
            return meta::record(&sys::xattr_path(dir.as_raw_fd(), Some(name)), &real, &want);
        }
        if !self.privileged {
            return Ok(());
        }
        // Made by this daemon (root, its group or the setgid directory's): owned as asked.
        if self.stored_ids(who.uid, who.gid)? == (0, rustix::process::getegid().as_raw()) {
            return Ok(());
        }
        let pst = sys::fstat(dir.as_raw_fd())?;
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            u32::MAX
        } else {
            who.gid
        };
        let (uid, gid) = self.stored_ids(who.uid, gid)?;
        sys::chown_at(dir.as_raw_fd(), name, uid, gid)?;
        // chown clears set-id bits; put back what the caller asked for.
        if let Some(m) = mode
            && m & 0o6000 != 0
        {
            sys::chmod_at(dir.as_raw_fd(), name, m)?;
        }
        Ok(())
    }

    fn found_new(&self, parent: u64, name: &CStr) -> io::Result<FileAttr> {
        let dirs = self.dirs_of(parent)?;
        let f: Found = self.resolve(&dirs, name)?;
        Ok(self.remember(parent, name, f))
    }

    /// mkdir, mknod and symlink. `mode` already has the umask applied.
    pub fn make(
        &self,
        parent: u64,
        name: &CStr,
        kind: NewKind,
        who: Caller,
    ) -> io::Result<FileAttr> {
        let ch = self.lock_changes();
        // Any new entry may grow its directory by a block (XFS refuses an entry that would
        // take its directory past the limit); a directory takes a block of its own too.
        self.need(match kind {
            NewKind::Dir(_) => 2 * self.block,
            _ => self.block,
        })?;
        let (upper, had_whiteout) = self.prepare_new(&ch, parent, name)?;
        let fd = upper.as_raw_fd();
        let measure = || blocks_of(fd) + charged_at(fd, name);
        let made = self
            .charged(&ch, measure, || match kind {
                NewKind::Dir(mode) => sys::mkdir_at(fd, name, mode & 0o7777).and_then(|()| {
                    self.own(&upper, name, who, Some(mode & 0o7777))?;
                    // A directory made where a lower one was deleted must not show its old entries.
                    if had_whiteout {
                        self.style.mark_opaque(fd, name)?;
                    }
                    Ok(())
                }),
                // A 0/0 character device is how overlayfs spells a whiteout.
                NewKind::Node { mode, rdev: 0 } if mode & libc::S_IFMT == libc::S_IFCHR => {
                    Err(sys::err(libc::EPERM))
                }
                // Without privileges a device is an empty file that says what it is.
                NewKind::Node { mode, rdev }
                    if self.records_meta()
                        && matches!(mode & libc::S_IFMT, libc::S_IFCHR | libc::S_IFBLK) =>
                {
                    self.fake_device(fd, name, mode, rdev, who)
                }
                NewKind::Node { mode, rdev } => sys::mknod_at(fd, name, mode, rdev)
                    .and_then(|()| self.own(&upper, name, who, Some(mode & 0o7777))),
                NewKind::Symlink(target) => sys::symlink_at(target, fd, name)
                    .and_then(|()| self.own(&upper, name, who, None)),
            })
            .inspect_err(|_| {
                let _ = crate::overlay::remove_tree(fd, name);
                if had_whiteout {
                    let _ = self.write_whiteout(&ch, fd, name);
                }
            });
        made?;
        self.found_new(parent, name)
    }

    /// Creates and opens a regular file; returns its attributes and the open fd.
    pub fn create(
        &self,
        parent: u64,
        name: &CStr,
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> io::Result<(FileAttr, OwnedFd)> {
        let ch = self.lock_changes();
        // Room for the directory to grow by a block, as `make` says.
        self.need(self.block)?;
        let (upper, had_whiteout) = self.prepare_new(&ch, parent, name)?;
        let dfd = upper.as_raw_fd();
        let oflags = (flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY))
            | libc::O_CREAT
            | libc::O_EXCL;
        let measure = || blocks_of(dfd) + charged_at(dfd, name);
        let file = self.charged(&ch, measure, || {
            sys::open_at(dfd, name, oflags, mode & 0o7777)
                .and_then(|f| self.own(&upper, name, who, Some(mode & 0o7777)).map(|()| f))
                .inspect_err(|_| {
                    let _ = sys::unlink_at(dfd, name, false);
                    if had_whiteout {
                        let _ = self.write_whiteout(&ch, dfd, name);
                    }
                })
        })?;
        // A file made just now has no origin in a lower layer: its own fd says what it is.
        let st = self.shown(sys::fstat(file.as_raw_fd())?, UPPER, || {
            sys::xattr_path(dfd, Some(name))
        });
        let found = Found {
            ino: self.upper_ino(st.st_ino),
            st,
            dirs: Vec::new(),
            layer: UPPER,
        };
        Ok((self.remember(parent, name, found), file))
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &CStr) -> io::Result<FileAttr> {
        let ch = self.copied_up(ino)?;
        let Target::Entry(sdir, sname) = self.upper_target(ino)? else {
            return Err(sys::err(libc::EPERM));
        };
        self.need(self.block)?;
        let (upper, had_whiteout) = self.prepare_new(&ch, newparent, newname)?;
        let dfd = upper.as_raw_fd();
        // A new name costs directory space only: the file is charged once, whatever its names.
        let linked = self.charged(
            &ch,
            || blocks_of(dfd),
            || sys::link_at(sdir.as_raw_fd(), &sname, dfd, newname),
        );
        if let Err(e) = linked {
            if had_whiteout {
                let _ = self.write_whiteout(&ch, dfd, newname);
            }
            return Err(e);
        }
        self.found_new(newparent, newname)
    }

    /// Writes a whiteout for `name` beneath `dir`: as overlayfs does, a hard link to one
    /// whiteout kept in the work dir (no inode per whiteout, about half the cost of an rm -rf
    /// of lower files), or a whiteout of its own where linking fails.
    pub fn write_whiteout(&self, _: &Changes, dir: RawFd, name: &CStr) -> io::Result<()> {
        let entry = self.style.entry(name);
        if let Some(work) = &self.work {
            let w = work.as_raw_fd();
            for _ in 0..2 {
                match sys::link_at(w, SHARED_WHITEOUT, dir, &entry) {
                    Ok(()) => return Ok(()),
                    // None yet (or cleaned away), or at the filesystem's link limit: start anew.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EMLINK)) => {
                        let _ = sys::unlink_at(w, SHARED_WHITEOUT, false);
                        let _ = self.style.make(w, SHARED_WHITEOUT);
                    }
                    Err(_) => break,
                }
            }
        }
        self.style.make(dir, &entry)
    }

    pub fn unlink(&self, parent: u64, name: &CStr, is_dir: bool) -> io::Result<()> {
        let ch = self.lock_changes();
        self.writable()?;
        let dirs = self.dirs_of(parent)?;
        let found = self.resolve(&dirs, name)?;
        match (is_dir, !found.dirs.is_empty()) {
            (false, true) => return Err(sys::err(libc::EISDIR)),
            (true, false) => return Err(sys::err(libc::ENOTDIR)),
            (true, true) if !dir::is_empty(&found.dirs)? => return Err(sys::err(libc::ENOTEMPTY)),
            _ => {}
        }
        let upper = self.upper_dir(&ch, parent)?;
        let fd = upper.as_raw_fd();
        let kept = self.kept_while_open(fd, name, found.ino);
        self.charged_keeping(
            &ch,
            || blocks_of(fd) + charged_at(fd, name),
            kept,
            || {
                if self.is_upper(found.layer) {
                    if is_dir {
                        dir::clear_whiteouts(&found.dirs[0])?;
                    }
                    sys::unlink_at(fd, name, is_dir)?;
                }
                // What was found in a lower layer needs hiding; an upper copy may hide one.
                if !self.is_upper(found.layer) || dir::in_lower(&dirs, Some(UPPER), name) {
                    self.write_whiteout(&ch, fd, name)?;
                }
                Ok(())
            },
        )
        .inspect(|()| self.nodes.unlinked(found.ino, parent, name))
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &CStr,
        newparent: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        check_name(self.style, newname)?;
        // A lower file is copied up first, its data without the change lock (see `copied_up`).
        // Not one with several names: copying one name splits it off, which is for the code
        // below to meet, after it resolved the name under the lock.
        if let Ok(src) = self.find(parent, name)
            && src.st.st_mode & libc::S_IFMT == libc::S_IFREG
            && src.st.st_nlink == 1
            && !self.is_upper(src.layer)
        {
            drop(self.copied_up(src.ino)?);
        }
        let ch = self.lock_changes();
        let sdirs = self.dirs_of(parent)?;
        let ddirs = self.dirs_of(newparent)?;
        let src = self.resolve(&sdirs, name)?;
        let dst = match self.resolve(&ddirs, newname) {
            Ok(d) => Some(d),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => return Err(e),
        };
        // Without redirects a directory that has lower copies cannot move (overlayfs says EXDEV).
        let pinned = |f: &Found| self.has_lower(&f.dirs);
        if pinned(&src) {
            return Err(sys::err(libc::EXDEV));
        }
        if flags & libc::RENAME_EXCHANGE != 0 {
            let dst = dst.ok_or_else(|| sys::err(libc::ENOENT))?;
            if pinned(&dst) {
                return Err(sys::err(libc::EXDEV));
            }
            return self.exchange(
                &ch,
                (parent, name, &src, &sdirs),
                (newparent, newname, &dst, &ddirs),
            );
        }
        if let Some(d) = &dst {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(sys::err(libc::EEXIST));
            }
            if d.ino == src.ino && d.dirs.is_empty() {
                return Ok(()); // two names of one file: rename does nothing
            }
            match (src.dirs.is_empty(), d.dirs.is_empty()) {
                (true, false) => return Err(sys::err(libc::EISDIR)),
                (false, true) => return Err(sys::err(libc::ENOTDIR)),
                (false, false) if !dir::is_empty(&d.dirs)? => {
                    return Err(sys::err(libc::ENOTEMPTY));
                }
                _ => {}
            }
        }
        self.copy_up(&ch, src.ino)?;
        let supper = self.upper_dir(&ch, parent)?;
        let dupper = self.upper_dir(&ch, newparent)?;
        let (sfd, dfd) = (supper.as_raw_fd(), dupper.as_raw_fd());
        // Both names and both parents, before and after: a replaced file is freed.
        let measure = || {
            let dirs = blocks_of(sfd)
                + if parent == newparent {
                    0
                } else {
                    blocks_of(dfd)
                };
            dirs + charged_at(sfd, name) + charged_at(dfd, newname)
        };
        let kept = dst
            .as_ref()
            .map_or(0, |d| self.kept_while_open(dfd, newname, d.ino));
        self.charged_keeping(&ch, measure, kept, || {
            self.move_entry(
                &ch,
                name,
                &src,
                &sdirs,
                &supper,
                newname,
                dst.as_ref(),
                &ddirs,
                &dupper,
            )
        })?;
        if let Some(d) = &dst {
            self.nodes.unlinked(d.ino, newparent, newname);
        }
        self.nodes
            .renamed(src.ino, (parent, name), (newparent, newname));
        if let Some(n) = self.nodes.lock().get_mut(&src.ino)
            && n.dirs.is_empty()
        {
            n.layer = UPPER;
        }
        Ok(())
    }

    /// The upper-dir half of a rename: whiteouts and opaque marks as overlayfs writes them.
    #[allow(clippy::too_many_arguments)]
    fn move_entry(
        &self,
        ch: &Changes,
        name: &CStr,
        src: &Found,
        sdirs: &[crate::node::LayerDir],
        supper: &OwnedFd,
        newname: &CStr,
        dst: Option<&Found>,
        ddirs: &[crate::node::LayerDir],
        dupper: &OwnedFd,
    ) -> io::Result<()> {
        if let Some(d) = dst
            && !d.dirs.is_empty()
        {
            if self.is_upper(d.dirs[0].layer) {
                dir::clear_whiteouts(&d.dirs[0])?;
            } else {
                // A lower-only (empty) directory: the upper needs nothing in the way.
            }
        }
        if dst.is_none() {
            whiteout::remove_whiteout(dupper.as_raw_fd(), newname, self.oci_markers(UPPER))?;
        }
        let (sfd, dfd) = (supper.as_raw_fd(), dupper.as_raw_fd());
        match self.style {
            _ if !dir::in_lower(sdirs, Some(UPPER), name) => {
                sys::rename_at(sfd, name, dfd, newname, 0)?
            }
            // The rename leaves the whiteout itself: the lower copy never shows.
            Style::Overlay {
                rename_whiteout: true,
                ..
            } => sys::rename_at(sfd, name, dfd, newname, libc::RENAME_WHITEOUT)?,
            Style::Overlay { .. } => self.rename_via_work(ch, sfd, name, dfd, newname)?,
            // An OCI whiteout has a name of its own and hides only the layers below, so it
            // goes first, for the same effect; a failed rename takes it back.
            Style::Oci => {
                self.write_whiteout(ch, sfd, name)?;
                if let Err(e) = sys::rename_at(sfd, name, dfd, newname, 0) {
                    let _ = sys::unlink_at(sfd, &whiteout::oci_name(name), false);
                    return Err(e);
                }
            }
        }
        // A directory moved into a merged parent is made opaque (as overlayfs does), so no
        // lower directory of the same name can ever show through it.
        if !src.dirs.is_empty() && self.has_lower(ddirs) {
            self.style.mark_opaque(dupper.as_raw_fd(), newname)?;
        }
        Ok(())
    }

    /// A rename that leaves a whiteout device where the filesystem does not make it itself
    /// (no RENAME_WHITEOUT): a whiteout made in the work dir is swapped in for the source,
    /// which then moves on from there. The lower copy never shows, and a failed move swaps the
    /// source back.
    fn rename_via_work(
        &self,
        ch: &Changes,
        sfd: RawFd,
        name: &CStr,
        dfd: RawFd,
        newname: &CStr,
    ) -> io::Result<()> {
        let work = self.work_fd()?;
        let tmp = self.tmp_name();
        self.write_whiteout(ch, work, &tmp)?;
        if let Err(e) = sys::rename_at(work, &tmp, sfd, name, libc::RENAME_EXCHANGE) {
            let _ = sys::unlink_at(work, &tmp, false);
            return Err(e);
        }
        let moved = sys::rename_at(work, &tmp, dfd, newname, 0);
        if moved.is_err() && sys::rename_at(work, &tmp, sfd, name, libc::RENAME_EXCHANGE).is_ok() {
            let _ = sys::unlink_at(work, &tmp, false);
        }
        moved
    }

    /// RENAME_EXCHANGE of two entries that have no lower directories.
    fn exchange(&self, ch: &Changes, a: ExchangeSide, b: ExchangeSide) -> io::Result<()> {
        let ((parent, name, src, sdirs), (newparent, newname, dst, ddirs)) = (a, b);
        self.copy_up(ch, src.ino)?;
        self.copy_up(ch, dst.ino)?;
        let supper = self.upper_dir(ch, parent)?;
        let dupper = self.upper_dir(ch, newparent)?;
        let (sfd, dfd) = (supper.as_raw_fd(), dupper.as_raw_fd());
        // Swapping names can grow either directory (a longer name); nothing is freed.
        self.charged(
            ch,
            || {
                blocks_of(sfd)
                    + if parent == newparent {
                        0
                    } else {
                        blocks_of(dfd)
                    }
            },
            || sys::rename_at(sfd, name, dfd, newname, libc::RENAME_EXCHANGE),
        )?;
        // Each directory that lands in a merged parent is made opaque, as in `move_entry`.
        for (moved, dirs, fd, at) in [(src, ddirs, dfd, newname), (dst, sdirs, sfd, name)] {
            if !moved.dirs.is_empty() && self.has_lower(dirs) {
                self.style.mark_opaque(fd, at)?;
            }
        }
        // Two names of one file swapped: nothing moved.
        if src.ino != dst.ino {
            let (a, b) = ((parent, name), (newparent, newname));
            self.nodes.renamed(src.ino, a, b);
            self.nodes.renamed(dst.ino, b, a);
        }
        Ok(())
    }
}

//! FUSE passthrough: the kernel reads a layer's file itself (and writes it, unless the upper dir
//! has a limit the daemon must enforce on every write), so file data never crosses the daemon
//! and every mount of a layer shares that file's page cache.
//!
//! The kernel's rules shape this. All open files of one FUSE inode use the same backing file,
//! and an inode is in passthrough or in cached mode, never both at once. A lower file read
//! through passthrough keeps its backing file while any such open lives, so changing its data
//! (a write open, a truncate) first gives the name a node of its own ([`Overlay::split`]): fds
//! opened before keep reading the lower copy, as on overlayfs before Linux 4.19.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use fuser::BackingId;

use crate::Quota;
use crate::handover::Ledger;
use crate::overlay::{Changes, Overlay, Target, UPPER};
use crate::sys;

/// How the kernel does I/O for the open files of one node.
enum Mode {
    Cached,
    Passthrough { backing: Arc<Backing>, lower: bool },
}

/// A backing file registered with the kernel, and its record in the ledger (if a keeper holds
/// the connection, see [`crate::handover`]).
pub struct Backing {
    /// Declared first, so dropped first: the record goes before the id is closed, and a
    /// server that takes over never reuses a closed id.
    _record: Option<Record>,
    pub id: BackingId,
}

struct Record {
    ledger: Arc<Ledger>,
    slot: u64,
}

impl Drop for Record {
    fn drop(&mut self) {
        self.ledger.clear(self.slot);
    }
}

/// A backing file an earlier server of the connection registered for a node, which the
/// node's open files may still use.
enum Kept {
    Id {
        id: u32,
        lower: bool,
    },
    /// Wrapped by an open of this server; never closed (how many open files of the earlier
    /// server use it is unknown).
    Wrapped {
        backing: Arc<Backing>,
        lower: bool,
    },
}

impl Mode {
    fn answer(&self) -> Open {
        match self {
            Mode::Cached => Open::Cached,
            Mode::Passthrough { backing, .. } => Open::Passthrough(backing.clone()),
        }
    }

    /// Whether the kernel writes through an open for writing in this mode, unseen.
    fn writes_unseen(&self) -> bool {
        matches!(self, Mode::Passthrough { lower: false, .. })
    }
}

struct Io {
    mode: Mode,
    opens: u32,
}

/// What an open is answered with.
pub enum Open {
    Cached,
    Passthrough(Arc<Backing>),
}

/// Filesystems that stack on others: a backing file there needs a FUSE stacking depth of 2.
const STACKED_FS: [i64; 3] = [
    0x794c_7630, // overlayfs
    0x6573_5546, // fuse
    0xf15f,      // ecryptfs
];

/// The stacking depth passthrough needs for backing files in `layers`: 1 keeps the mount
/// usable as a kernel overlayfs layer; 2 when a layer is itself on a stacking filesystem.
pub fn stack_depth(layers: &[impl AsRawFd]) -> u32 {
    let stacked = layers
        .iter()
        .any(|l| sys::fs_type(l.as_raw_fd()).is_ok_and(|t| STACKED_FS.contains(&t)));
    if stacked { 2 } else { 1 }
}

#[derive(Default)]
pub struct Passthrough {
    enabled: AtomicBool,
    nodes: Mutex<HashMap<u64, Io>>,
    /// The upper dir's usage counter, told which upper files the kernel may write unseen.
    usage: Option<Arc<Quota>>,
    /// Where backing files are recorded for a server that takes over.
    ledger: Option<Arc<Ledger>>,
    /// Backing files earlier servers left, by node.
    kept: Mutex<HashMap<u64, Kept>>,
}

impl Passthrough {
    pub fn new(usage: Option<Arc<Quota>>) -> Passthrough {
        Passthrough {
            usage,
            ..Default::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Io>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called once the kernel agreed to passthrough.
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Whether open files of `ino` read its lower copy through the kernel: its data must not
    /// change under them.
    pub fn backs_lower(&self, ino: u64) -> bool {
        self.lock()
            .get(&ino)
            .is_some_and(|io| matches!(io.mode, Mode::Passthrough { lower: true, .. }))
            || self.kept().get(&ino).is_some_and(|k| match k {
                Kept::Id { lower, .. } | Kept::Wrapped { lower, .. } => *lower,
            })
    }

    fn kept(&self) -> MutexGuard<'_, HashMap<u64, Kept>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records backing files from now on in `ledger`, where earlier servers of the connection
    /// left `kept`. Upper files among them may be written by the kernel unseen for as long as
    /// this server lives.
    pub fn adopt(&mut self, ledger: Ledger, kept: Vec<crate::handover::Kept>) {
        for (ino, id, lower) in kept {
            if !lower && let Some(q) = &self.usage {
                q.unseen_writes(true);
            }
            self.kept().insert(ino, Kept::Id { id, lower });
        }
        self.ledger = Some(Arc::new(ledger));
    }

    /// A node an earlier server left in passthrough: every open of it must use that backing
    /// file while any of that server's opens lives, which is unknown, so always.
    fn kept_mode(
        &self,
        ino: u64,
        register: impl FnOnce(Option<u32>) -> io::Result<(u32, BackingId)>,
    ) -> io::Result<Mode> {
        let mut kept = self.kept();
        let k = kept.get_mut(&ino).ok_or_else(|| sys::err(libc::ENOENT))?;
        match k {
            Kept::Wrapped { backing, lower } => Ok(Mode::Passthrough {
                backing: backing.clone(),
                lower: *lower,
            }),
            Kept::Id { id, lower } => {
                let lower = *lower;
                register(Some(*id)).map(|(_, id)| {
                    let backing = Arc::new(Backing { _record: None, id });
                    *k = Kept::Wrapped {
                        backing: backing.clone(),
                        lower,
                    };
                    Mode::Passthrough { backing, lower }
                })
            }
        }
    }

    /// A backing file just registered, recorded in the ledger if there is one.
    fn registered(&self, ino: u64, raw: u32, id: BackingId, lower: bool) -> io::Result<Backing> {
        let record = match &self.ledger {
            Some(l) => Some(Record {
                slot: l.record(ino, raw, lower)?,
                ledger: l.clone(),
            }),
            None => None,
        };
        Ok(Backing {
            _record: record,
            id,
        })
    }

    /// Chooses the I/O mode of a new open of `ino`: the mode its other open files use, else
    /// passthrough when `fresh` says so (`Some(lower)`), registering the backing file with
    /// `register`. A kernel that refuses backing files (no CAP_SYS_ADMIN, a layer stacked too
    /// deep) turns passthrough off for the mount. `writes`: the open may write.
    pub fn open(
        &self,
        ino: u64,
        fresh: Option<bool>,
        writes: bool,
        register: impl FnOnce(Option<u32>) -> io::Result<(u32, BackingId)>,
    ) -> io::Result<Open> {
        let mut nodes = self.lock();
        if let Some(io) = nodes.get_mut(&ino) {
            io.opens += 1;
            self.count_unseen(&io.mode, writes, true);
            return Ok(io.mode.answer());
        }
        if self.kept().contains_key(&ino) {
            // Refusing the open beats answering it in a mode the kernel would reject.
            let mode = self.kept_mode(ino, register)?;
            let open = mode.answer();
            self.count_unseen(&mode, writes, true);
            nodes.insert(ino, Io { mode, opens: 1 });
            return Ok(open);
        }
        let fresh = fresh.filter(|_| self.enabled());
        let mode = match fresh.map(|l| (l, register(None))) {
            Some((lower, Ok((raw, b)))) => Mode::Passthrough {
                backing: Arc::new(self.registered(ino, raw, b, lower)?),
                lower,
            },
            Some((_, Err(e))) => {
                tracing::warn!("passthrough off: the kernel refused a backing file: {e}");
                self.enabled.store(false, Ordering::Relaxed);
                Mode::Cached
            }
            None => Mode::Cached,
        };
        let open = mode.answer();
        self.count_unseen(&mode, writes, true);
        nodes.insert(ino, Io { mode, opens: 1 });
        Ok(open)
    }

    /// An open of `ino` was released (`writes`: it could write); the last one frees the
    /// backing file.
    pub fn release(&self, ino: u64, writes: bool) {
        let mut nodes = self.lock();
        if let Some(io) = nodes.get_mut(&ino) {
            io.opens -= 1;
            self.count_unseen(&io.mode, writes, false);
            if io.opens == 0 {
                nodes.remove(&ino);
            }
        }
    }

    /// Tells the usage counter of an open for writing the kernel serves unseen, or its end.
    fn count_unseen(&self, mode: &Mode, writes: bool, open: bool) {
        if let Some(q) = self
            .usage
            .as_ref()
            .filter(|_| writes && mode.writes_unseen())
        {
            q.unseen_writes(open);
        }
    }
}

impl Overlay {
    /// Gives the name of `ino` (a lower file whose open files the kernel reads directly) a
    /// node of its own for its upper copy: lookups answer the copy's inode number from now on,
    /// and the kernel forgets the name, so later opens and changes reach the new node.
    pub fn split(&self, ch: &Changes, ino: u64) -> io::Result<()> {
        self.copy_up(ch, ino)?;
        let Target::Entry(dir, name) = self.upper_target(ino)? else {
            return Err(sys::err(libc::EISDIR));
        };
        let st = sys::stat_at(dir.as_raw_fd(), &name)?;
        let new = self.present_ino(UPPER, st.st_ino);
        // Recorded on the copy, so a daemon that takes over (or a remount) shows the same
        // inode for it, never the lower one whose backing file the kernel may still hold.
        self.set_origin(dir.as_raw_fd(), &name, new)?;
        self.identity.split(ino, new);
        if let Some(parent) = self.nodes.lock().get(&ino).map(|n| n.parent) {
            self.forget_entry_later(parent, &name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(_: Option<u32>) -> io::Result<(u32, BackingId)> {
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }

    fn never(_: Option<u32>) -> io::Result<(u32, BackingId)> {
        panic!("no backing file may be registered once passthrough is off")
    }

    /// A kernel that refuses a backing file (no CAP_SYS_ADMIN, stacking too deep) turns
    /// passthrough off for the mount: that open and every later one are cached, none fails.
    #[test]
    fn a_refused_backing_file_turns_passthrough_off() {
        let p = Passthrough::default();
        p.enable();
        assert!(matches!(
            p.open(1, Some(true), false, refused).unwrap(),
            Open::Cached
        ));
        assert!(!p.enabled());
        assert!(matches!(
            p.open(1, Some(true), false, never).unwrap(),
            Open::Cached
        ));
        assert!(matches!(
            p.open(2, Some(false), true, never).unwrap(),
            Open::Cached
        ));
        assert!(!p.backs_lower(1));
        p.release(1, false);
        p.release(1, false);
        p.release(2, true);
        assert!(p.lock().is_empty(), "released opens leave nothing behind");
    }
}

//! A FUSE connection that outlives the process serving it. A keeper process mounts, holds the
//! mount's `/dev/fuse` fd and keeps the kernel's one FUSE_INIT request; each server it starts
//! inherits the fd, gets that INIT replayed on a socket (fuser's handshake runs there, the
//! kernel never sees a second one), and shares with the servers before it a memfd, the
//! [`Ledger`], holding what the kernel keeps that a server cannot find again by itself.
//!
//! Everything else a server needs is found again from the layers: node ids are made from layer
//! inode numbers (see `recover`), file handles are reopened on first use (see `handles`), and
//! the upper dir's usage is measured at start.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use anyhow::Context;

use crate::sys;

/// The environment variable a keeper passes a connection in:
/// `<fuse fd>:<init socket fd>:<ledger memfd>:<epoch>`.
pub const ENV: &str = "NESTFS_CONNECTION";

/// What a keeper tells a server that said it is set up (`+`), once the mount is there; any
/// other message says why there is none.
pub const GO: &[u8] = b"go";

/// A connection handed to this server.
#[derive(Debug)]
pub struct Connection {
    /// The mount's `/dev/fuse` fd.
    pub fuse: OwnedFd,
    /// The socket the keeper replays FUSE_INIT on and reads this server's answer from.
    pub init: OwnedFd,
    /// The memfd servers of this connection leave their [`Ledger`] in.
    pub ledger: OwnedFd,
    /// Which server this is: 0 for the first, one more for each takeover.
    pub epoch: u32,
}

impl Connection {
    /// The connection a keeper handed this process, if one did. To be called once, before the
    /// process starts threads (the variable is removed then); the fds are closed on exec from
    /// now on.
    pub fn inherited() -> anyhow::Result<Option<Connection>> {
        let Some(v) = std::env::var_os(ENV) else {
            return Ok(None);
        };
        sys::process::remove_env(ENV);
        let v = v.to_string_lossy().into_owned();
        let ([fuse, init, ledger], epoch) = parse(&v)?;
        let fd =
            |n: RawFd| sys::process::inherited_fd(n).with_context(|| format!("{ENV}={v}: fd {n}"));
        Ok(Some(Connection {
            fuse: fd(fuse)?,
            init: fd(init)?,
            ledger: fd(ledger)?,
            epoch,
        }))
    }
}

/// The fds and epoch a keeper's `fuse:init:ledger:epoch` names.
fn parse(v: &str) -> anyhow::Result<([RawFd; 3], u32)> {
    let parts: Vec<&str> = v.split(':').collect();
    let [fuse, init, ledger, epoch] = parts[..] else {
        anyhow::bail!("{ENV}={v}: expected fuse:init:ledger:epoch");
    };
    let fd = |s: &str| -> anyhow::Result<RawFd> {
        s.parse().with_context(|| format!("{ENV}={v}: fd {s}"))
    };
    let epoch = epoch
        .parse()
        .with_context(|| format!("{ENV}={v}: epoch {epoch}"))?;
    Ok(([fd(fuse)?, fd(init)?, fd(ledger)?], epoch))
}

/// Tells the keeper this server is set up, on the INIT socket; returns once the keeper mounted
/// (the first time) and replays FUSE_INIT next.
pub fn set_up(init: &OwnedFd) -> anyhow::Result<()> {
    rustix::io::write(init, b"+").context("tell the keeper this server is set up")?;
    let mut said = vec![0u8; 4096];
    let n = rustix::io::read(init, &mut said).context("hear from the keeper")?;
    match &said[..n] {
        GO => Ok(()),
        [] => anyhow::bail!("the keeper went away"),
        why => anyhow::bail!("{}", String::from_utf8_lossy(why)),
    }
}

/// One record of the ledger: a backing file the kernel may still use for a node's open files.
const RECORD: usize = 16;

/// Backing files registered for passthrough, by node. The kernel keeps them (they belong to the
/// connection) and lets every open of a node use one backing file only, so a server that took
/// over must answer later opens of such a node with the id an earlier server registered.
/// Records live in a memfd the keeper holds: written before the open that uses the id is
/// answered, cleared before the id is closed.
#[derive(Debug)]
pub struct Ledger {
    fd: OwnedFd,
    slots: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    free: Vec<u64>,
    next: u64,
}

/// A backing file an earlier server registered: node, backing id, whether it is a lower file.
pub type Kept = (u64, u32, bool);

impl Ledger {
    /// Opens the ledger in `fd`; returns it with the backing files earlier servers left there.
    pub fn open(fd: OwnedFd) -> io::Result<(Ledger, Vec<Kept>)> {
        let len = sys::fstat(fd.as_raw_fd())?.st_size as usize;
        let mut buf = vec![0u8; len - len % RECORD];
        let mut done = 0;
        while done < buf.len() {
            match sys::pread(fd.as_raw_fd(), &mut buf[done..], done as u64)? {
                0 => break,
                n => done += n,
            }
        }
        let mut slots = Slots::default();
        let mut kept = HashMap::new();
        for (i, r) in buf[..done].chunks_exact(RECORD).enumerate() {
            let ino = u64::from_ne_bytes(r[0..8].try_into().unwrap());
            let id = u32::from_ne_bytes(r[8..12].try_into().unwrap());
            let flags = u32::from_ne_bytes(r[12..16].try_into().unwrap());
            if flags & USED == 0 {
                slots.free.push(i as u64);
            } else {
                kept.insert(ino, (id, flags & LOWER != 0));
            }
        }
        slots.next = (done / RECORD) as u64;
        let ledger = Ledger {
            fd,
            slots: Mutex::new(slots),
        };
        let kept = kept
            .into_iter()
            .map(|(ino, (id, l))| (ino, id, l))
            .collect();
        Ok((ledger, kept))
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records backing file `id` of node `ino`; the slot to clear when it is closed.
    pub fn record(&self, ino: u64, id: u32, lower: bool) -> io::Result<u64> {
        let slot = {
            let mut s = self.slots();
            s.free.pop().unwrap_or_else(|| {
                s.next += 1;
                s.next - 1
            })
        };
        let mut r = [0u8; RECORD];
        r[0..8].copy_from_slice(&ino.to_ne_bytes());
        r[8..12].copy_from_slice(&id.to_ne_bytes());
        let flags = USED | if lower { LOWER } else { 0 };
        r[12..16].copy_from_slice(&flags.to_ne_bytes());
        self.write(slot, &r)
            .inspect_err(|_| self.slots().free.push(slot))?;
        Ok(slot)
    }

    /// The backing file recorded in `slot` is about to be closed.
    pub fn clear(&self, slot: u64) {
        if self.write(slot, &[0u8; RECORD]).is_ok() {
            self.slots().free.push(slot);
        }
    }

    fn write(&self, slot: u64, r: &[u8; RECORD]) -> io::Result<()> {
        let n = sys::pwrite(self.fd.as_raw_fd(), r, slot * RECORD as u64)?;
        if n == RECORD {
            Ok(())
        } else {
            Err(io::Error::from(io::ErrorKind::WriteZero))
        }
    }
}

const USED: u32 = 1;
const LOWER: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd() -> OwnedFd {
        tempfile::tempfile().unwrap().into()
    }

    /// A connection variable that is not the keeper's is refused with what is wrong in it.
    #[test]
    fn a_malformed_connection_variable_says_what_is_wrong() {
        assert_eq!(parse("7:8:9:2").unwrap(), ([7, 8, 9], 2));
        for (v, says) in [
            ("7:8:9", "expected fuse:init:ledger:epoch"),
            ("7:8:9:2:1", "expected fuse:init:ledger:epoch"),
            ("7:x:9:2", "fd x"),
            ("7:8:9:-1", "epoch -1"),
            ("", "expected"),
        ] {
            let e = format!("{:#}", parse(v).unwrap_err());
            assert!(e.contains(says) && e.contains(ENV), "{v}: {e}");
        }
        // An fd this process does not have open is refused, not adopted.
        let e = sys::process::inherited_fd(999_999).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }

    /// A server that took over finds what the one before left, and reuses cleared slots.
    #[test]
    fn the_next_server_finds_what_is_still_registered() {
        let fd = memfd();
        let (first, kept) = Ledger::open(fd.try_clone().unwrap()).unwrap();
        assert!(kept.is_empty());
        let a = first.record(10, 3, true).unwrap();
        let b = first.record(11, 4, false).unwrap();
        first.record(12, 5, true).unwrap();
        first.clear(b);
        assert_eq!(
            first.record(13, 6, false).unwrap(),
            b,
            "a cleared slot is reused"
        );
        first.clear(a);
        drop(first);
        let (next, mut kept) = Ledger::open(fd).unwrap();
        kept.sort();
        assert_eq!(kept, vec![(12, 5, true), (13, 6, false)]);
        assert_eq!(next.record(14, 7, true).unwrap(), a);
        assert_eq!(next.record(15, 8, true).unwrap(), 3);
    }
}

//! How a daemon tells whoever started it whether its mount is up: on a pipe, `ok` or the
//! error that stopped it, then end of file. `nestfs-overlay` (when it forks into the
//! background) and `nestfs serve-image` (started by `create` and `remount`) both report this
//! way, so a starter never polls the mount table nor scrapes a log.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// The daemon's end of the pipe.
pub struct Reporter(std::io::PipeWriter);

impl Reporter {
    pub fn new(w: std::io::PipeWriter) -> Reporter {
        Reporter(w)
    }

    /// The mount is up and served from now on.
    pub fn ready(mut self) {
        let _ = self.0.write_all(OK);
    }

    /// The daemon gives up: `e` says why (with its causes).
    pub fn failed(mut self, e: &anyhow::Error) {
        let _ = write!(self.0, "{e:#}");
    }
}

const OK: &[u8] = b"ok";

/// What the starter learnt.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Ready,
    /// The daemon's own words.
    Failed(String),
    /// End of file without a word: the daemon died (killed, or a panic).
    Died,
    /// No verdict within the wait.
    TimedOut,
}

/// Reads the verdict from the starter's end of the pipe, waiting at most `wait` (None: as long
/// as it takes). The starter must have closed its copy of the daemon's end.
pub fn wait(mut r: std::io::PipeReader, wait: Option<Duration>) -> Verdict {
    let deadline = wait.map(|w| Instant::now() + w);
    let mut said = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            let timeout = rustix::event::Timespec::try_from(left).unwrap_or_default();
            let fd = r.as_fd();
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(0) => return Verdict::TimedOut,
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return Verdict::Died,
            }
        }
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => said.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    match said.as_slice() {
        OK => Verdict::Ready,
        [] => Verdict::Died,
        words => Verdict::Failed(String::from_utf8_lossy(words).trim().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_verdict_reads_as_said() {
        let (r, w) = std::io::pipe().unwrap();
        Reporter::new(w).ready();
        assert_eq!(wait(r, Some(Duration::from_secs(5))), Verdict::Ready);

        let (r, w) = std::io::pipe().unwrap();
        Reporter::new(w).failed(&anyhow::anyhow!("no such dir").context("mount /x"));
        assert_eq!(
            wait(r, None),
            Verdict::Failed("mount /x: no such dir".into())
        );

        let (r, w) = std::io::pipe().unwrap();
        drop(w);
        assert_eq!(wait(r, Some(Duration::from_secs(5))), Verdict::Died);
    }

    #[test]
    fn a_silent_daemon_times_out() {
        let (r, _w) = std::io::pipe().unwrap();
        let start = Instant::now();
        assert_eq!(wait(r, Some(Duration::from_millis(50))), Verdict::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}

//! The control socket of an image daemon (`images/ID/control.sock`): one request line, one JSON
//! reply line. `status` answers the daemon's pid and live disk usage; `stop` unmounts the
//! rootfs (refused with `busy` while something in it is in use) so the daemon exits.
//!
//! The socket is reached through `/proc/self/fd/DIR/control.sock`, so deep store paths never
//! hit the 108-byte limit of a unix socket address.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nestfs_fuse::Quota;
use serde::{Deserialize, Serialize};

pub const SOCKET: &str = "control.sock";

/// How long a client waits for a daemon's answer: a daemon that takes longer counts as hung.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `status` reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    /// The keeper holding the daemon's FUSE connection, if one does.
    #[serde(default)]
    pub keeper: Option<u32>,
    /// Bytes the upper dir holds now.
    pub used: u64,
    /// The upper dir's limit (0: none).
    pub limit: u64,
}

/// `stop` reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stopped {
    pub stopped: bool,
    pub error: Option<String>,
}

/// A short path to `dir/control.sock`, valid while the returned fd lives.
fn short_path(dir: &Path) -> std::io::Result<(OwnedFd, PathBuf)> {
    let fd: OwnedFd = std::fs::File::open(dir)?.into();
    let p = PathBuf::from(format!("/proc/self/fd/{}/{SOCKET}", fd.as_raw_fd()));
    Ok((fd, p))
}

/// Sends one request to the daemon of the image in `dir` and parses its reply.
pub fn request<T: for<'de> Deserialize<'de>>(dir: &Path, what: &str) -> anyhow::Result<T> {
    let (_fd, path) = short_path(dir)?;
    let mut s = UnixStream::connect(&path)
        .with_context(|| format!("connect to {}", dir.join(SOCKET).display()))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    writeln!(s, "{what}")?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .context("read the daemon's reply")?;
    serde_json::from_str(&line).with_context(|| format!("bad reply from the daemon: {line:?}"))
}

/// Listens on `dir/control.sock` (replacing a stale one) and answers on a background thread.
/// `unmount` performs a graceful stop.
pub fn listen(
    dir: &Path,
    quota: Arc<Quota>,
    keeper: Option<u32>,
    unmount: impl Fn() -> std::io::Result<()> + Send + 'static,
) -> anyhow::Result<()> {
    let (_fd, path) = short_path(dir)?;
    let _ = std::fs::remove_file(dir.join(SOCKET));
    let listener =
        UnixListener::bind(&path).with_context(|| format!("listen on {}", dir.display()))?;
    let upper = dir.join("upper");
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = answer(conn, &quota, keeper, &upper, &unmount);
            }
        })?;
    Ok(())
}

fn answer(
    conn: UnixStream,
    quota: &Quota,
    keeper: Option<u32>,
    upper: &Path,
    unmount: &impl Fn() -> std::io::Result<()>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let reply = match line.trim() {
        "status" => {
            // What the filesystem allocated on its own for the changes since the last status
            // counts too; with a change running right now, or writeback later, that is left to
            // the background pass.
            let _ = quota.reconcile_if_changed(upper);
            serde_json::to_string(&Status {
                pid: std::process::id(),
                keeper,
                used: quota.reported(),
                limit: quota.limit(),
            })
        }
        "stop" => serde_json::to_string(&match unmount() {
            Ok(()) => Stopped {
                stopped: true,
                error: None,
            },
            Err(e) => Stopped {
                stopped: false,
                error: Some(if e.raw_os_error() == Some(libc::EBUSY) {
                    "busy".into()
                } else {
                    e.to_string()
                }),
            },
        }),
        other => {
            Ok(serde_json::json!({ "error": format!("unknown request {other:?}") }).to_string())
        }
    }
    .map_err(std::io::Error::other)?;
    (&conn).write_all(format!("{reply}\n").as_bytes())
}

//! Process-wide calls: memory management hints, the umask, signals and detaching a daemon.

use std::io;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::time::Duration;

/// Tells the kernel that nobody needs the pages of `start..end` (a mapping this process only
/// reads): clean file-backed pages fault back from the page cache on use.
///
/// The range must hold no private (copied) page, whose content would be lost.
pub fn drop_clean_pages(start: usize, end: usize) {
    // SAFETY: MADV_DONTNEED on a read-only, file-backed mapping without private pages only
    // drops pages that are read back unchanged; nothing Rust holds changes.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
}

/// Sets glibc's malloc thresholds: allocations of at least `mmap` bytes are mapped afresh, and
/// the heap is trimmed above `trim` bytes free.
#[cfg(target_env = "gnu")]
pub fn set_malloc_thresholds(mmap: i32, trim: i32) {
    // SAFETY: mallopt only tunes glibc's allocator, which stays consistent at any value.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap);
        libc::mallopt(libc::M_TRIM_THRESHOLD, trim);
    }
}

/// Clears the umask, so modes are set exactly as asked.
pub fn clear_umask() {
    rustix::process::umask(rustix::fs::Mode::empty());
}

/// The signals that stop a daemon (SIGTERM, SIGINT, SIGHUP), blocked in the calling thread and
/// every thread started after it, so one thread can wait for them.
pub struct StopSignals(libc::sigset_t);

impl StopSignals {
    pub fn block() -> StopSignals {
        // SAFETY: sigset_t is plain integers; sigemptyset initialises it below anyway.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a live sigset_t; these calls only write it and the thread's mask.
        unsafe {
            libc::sigemptyset(&mut set);
            for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        StopSignals(set)
    }

    /// Waits up to `timeout` for one of them; whether one came.
    pub fn wait_for(&self, timeout: Duration) -> bool {
        let t = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: the set and the timeout are live for the call; no siginfo is asked for.
        unsafe { libc::sigtimedwait(&self.0, std::ptr::null_mut(), &t) >= 0 }
    }

    /// Waits for one of them.
    pub fn wait(&self) {
        let mut sig = 0;
        // SAFETY: the set and `sig` are live for the call.
        unsafe { libc::sigwait(&self.0, &mut sig) };
    }
}

/// What [`fork`] returns in each process.
pub enum Forked {
    Parent { child: rustix::process::Pid },
    Child,
}

/// Forks this process, which must have a single thread (the child of a threaded process could
/// deadlock on a lock another thread held); fails otherwise.
pub fn fork() -> io::Result<Forked> {
    // Only this thread could start another, so the count cannot change before the fork.
    if std::fs::read_dir("/proc/self/task")?.count() != 1 {
        return Err(io::Error::other("the process has more than one thread"));
    }
    // SAFETY: the process has one thread (checked above), so the child's memory is consistent.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent {
            child: rustix::process::Pid::from_raw(pid).expect("a child's pid is positive"),
        }),
    }
}

/// Points stdin, stdout and stderr at /dev/null, so a detached daemon holds nothing of its
/// caller's.
pub fn detach_stdio() {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    for fd in 0..3 {
        // SAFETY: dup2 replaces fds 0-2 atomically; whatever uses them (std's stdio) keeps a
        // valid fd, now on /dev/null.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
    // Opened as one of them (it was closed): it stays open as that one, and like the others
    // open across exec (std opened it close-on-exec, and dup2 onto itself keeps that).
    if null.as_raw_fd() <= 2 {
        let _ = rustix::io::fcntl_setfd(&null, rustix::io::FdFlags::empty());
        let _ = null.into_raw_fd();
    }
}

/// Takes ownership of fd `n`, which a parent process left open for this one, and closes it on
/// exec from now on. Must be called once per fd: a second owner would close it twice.
pub fn inherited_fd(n: std::os::fd::RawFd) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl on any number is harmless; it fails on a closed one.
    if n < 3 || unsafe { libc::fcntl(n, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: the fd is open and, as the caller promises, owned by nothing else here.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(n) })
}

/// Removes environment variable `name`. Only while this process has a single thread: other
/// threads could be reading the environment.
pub fn remove_env(name: &str) {
    if std::fs::read_dir("/proc/self/task").is_ok_and(|t| t.count() == 1) {
        // SAFETY: no other thread exists to read the environment meanwhile.
        unsafe { std::env::remove_var(name) };
    }
}

/// Makes fd `to` refer to what `from` refers to, replacing what `to` was; closed on exec.
pub fn dup_onto(from: std::os::fd::BorrowedFd, to: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: dup3 only changes the fd table; the caller owns `to` and wants it replaced.
    if unsafe { libc::dup3(from.as_raw_fd(), to, libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

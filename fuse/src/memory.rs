//! Keeping a long-lived daemon's resident memory to what serving uses.

/// Unmaps the clean file-backed pages startup touched (argument parsing, logging, mount setup
/// in the binary and its libraries, mapped in 64 KiB fault-around blocks), so an idle daemon's
/// RSS holds only what serving uses: those pages fault back from the page cache on use. Only
/// mappings that are not writable and hold no private (copied) pages are touched, so nothing
/// is lost, not even relocations.
pub fn shed_startup_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            let perms = words.next().unwrap_or("");
            let file_backed = words.nth(3).is_some_and(|p| p.starts_with('/'));
            current = (file_backed && perms.starts_with("r-")).then_some((start, end));
        } else if first == "Anonymous:"
            && words.next() == Some("0")
            && let Some((start, end)) = current.take()
        {
            crate::sys::process::drop_clean_pages(start, end);
        }
    }
}

/// Makes glibc map every request buffer afresh. fuser gives each worker a zeroed 16 MiB buffer.
/// Freeing the one that read FUSE_INIT raised glibc's dynamic mmap threshold past that size, so
/// the workers' buffers came from arenas shared by threads (once there are more workers than
/// glibc's eight arenas per CPU) and calloc wrote zeroes over all 16 MiB of each: 64 workers on
/// 2 CPUs were 228 MiB resident before serving anything. Fixing the thresholds where the dynamic
/// ones ended up (mmap at 16 MiB, trim at twice that) changes nothing else, but the buffers stay
/// untouched mappings.
pub fn map_big_buffers() {
    #[cfg(target_env = "gnu")]
    crate::sys::process::set_malloc_thresholds(16 << 20, 32 << 20);
}

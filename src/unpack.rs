//! Safe layer unpacking (placeholder until the image work lands).

/// Bounds and permissions for unpacking one layer.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Fail with [`crate::image::ImageError::TooLarge`] once the unpacked layer allocates more
    /// than this many bytes (the remaining inclusive disk limit, or the bomb bound).
    pub max_bytes: u64,
    /// Fail once the layer has more than this many entries (inode bomb bound).
    pub max_entries: u64,
    /// chown entries to the ids in the tar headers (only when running as root).
    pub preserve_owner: bool,
    /// Create device nodes (only when running as root); otherwise skip them.
    pub allow_devices: bool,
}

/// What one unpacked layer consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Bytes allocated on disk (blocks), as `du --block-size=1` would count them.
    pub bytes: u64,
    /// Number of entries created.
    pub entries: u64,
}

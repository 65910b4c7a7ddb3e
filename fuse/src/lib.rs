//! nestfs-fuse: an overlay filesystem served over FUSE with the semantics of kernel overlayfs.

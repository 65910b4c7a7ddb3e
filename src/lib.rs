//! nestfs: a GrootFS-compatible container image plugin whose root filesystems are served by a
//! FUSE overlay daemon (see the `nestfs-fuse` crate).
//!
//! - [`image`]: image references, sources (registry, OCI layout, tarball) and the pull pipeline.
//! - [`unpack`]: safe layer unpacking (hostile tarballs, decompression bombs).
//! - [`store`]: the on-disk store: volumes keyed by chain id, images, locks, references.
//! - [`cli`]: the GrootFS-compatible command line and its commands.

pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod estargz;
pub mod host;
pub mod image;
pub mod lazy;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod store;
mod sys;
pub mod unpack;
pub mod usage;

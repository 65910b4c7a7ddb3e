//! The on-disk store (placeholder until the store/CLI work lands).

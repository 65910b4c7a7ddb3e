//! The GrootFS-compatible command line (placeholder until the store/CLI work lands).

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    0
}

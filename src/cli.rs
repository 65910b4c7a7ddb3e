//! The GrootFS-compatible command line (the store and its commands are issue 3).

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    // Garden shows the plugin's stdout to its users, so the message goes there.
    println!("nestfs: commands are not implemented yet");
    1
}

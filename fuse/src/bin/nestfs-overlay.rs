//! `nestfs-overlay`: the overlay filesystem with fuse-overlayfs's command line (issue 2).

fn main() {
    eprintln!("nestfs-overlay: the overlay filesystem is not implemented yet");
    std::process::exit(2);
}

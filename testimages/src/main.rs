//! `nestfs-testimages CACHE_DIR NAME`: builds a test image's OCI layout (see the library) and
//! prints its path, for benchmarks and manual runs.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cache, name] = args.as_slice() else {
        eprintln!(
            "usage: nestfs-testimages CACHE_DIR NAME\nimages: {}",
            nestfs_testimages::NAMES.join(", ")
        );
        std::process::exit(2);
    };
    if nestfs_testimages::image(name).is_none() {
        eprintln!(
            "nestfs-testimages: no image {name:?}; images: {}",
            nestfs_testimages::NAMES.join(", ")
        );
        std::process::exit(2);
    }
    let cache = std::path::absolute(cache).expect("cache dir");
    println!("{}", nestfs_testimages::layout(&cache, name).display());
}

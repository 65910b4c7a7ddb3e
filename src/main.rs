fn main() {
    std::process::exit(nestfs::cli::main());
}

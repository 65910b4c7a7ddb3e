#!/usr/bin/env bash
# One command for docs/benchmarks.md's figures (as root): builds nestfs-overlay, installs the two
# fuse-overlayfs builds, runs the side-by-side comparison and draws the chart.
set -euo pipefail
cd "$(dirname "$0")/.."
apt-get install -y -qq --no-install-recommends fuse3 fuse-overlayfs >/dev/null
cargo build --release -p nestfs-fuse
[ -x benches/.tools/bin/fuse-overlayfs ] ||
    cargo install fuse-overlayfs --version 2.0.0 --root benches/.tools
python3 benches/compare.py --runs "${RUNS:-5}" --out target/bench-compare.json "$@"
python3 benches/chart.py target/bench-compare.json docs/bench-ratios.svg

#!/usr/bin/env python3
"""Mount latency of a background `nestfs-overlay` against kernel overlayfs and fuse-overlayfs.

Each round mounts (the mount command returns once the mount is up), stats one lower file and
unmounts, for every overlay in turn, and records the three times from the mount command's
start. Two cases: `remount` mounts the same upper and work dirs every round (a container
started again); `fresh` gives every round new ones (a first start). Medians over ROUNDS. As
root.

    python3 benches/mount_latency.py [--rounds 100] [BINARY...]

BINARY is a nestfs-overlay build (default: this tree's release build); give several to compare
builds in one run. fuse-overlayfs is measured when it is installed.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def mount_cmd(impl, opts, mnt):
    if impl == "kernel":
        return ["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)]
    return [impl, "-o", opts, str(mnt)]


def cycle(impl, lower, upper, work, mnt):
    """(mounted, + stat, + unmounted) in seconds from the mount command's start."""
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    t0 = time.perf_counter()
    subprocess.run(mount_cmd(impl, opts, mnt), check=True, stderr=subprocess.DEVNULL)
    t1 = time.perf_counter()
    os.stat(mnt / "f")
    t2 = time.perf_counter()
    subprocess.run(["umount", str(mnt)], check=True)
    t3 = time.perf_counter()
    return (t1 - t0, t2 - t0, t3 - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("binaries", nargs="*")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("mount_latency.py: run as root (kernel overlayfs and device whiteouts need it)")
    bins = args.binaries
    if not bins:
        subprocess.run(
            ["cargo", "build", "--release", "-q", "-p", "nestfs-fuse", "--bin", "nestfs-overlay"],
            cwd=REPO,
            check=True,
        )
        bins = [str(REPO / "target/release/nestfs-overlay")]
    impls = bins + [b for b in ["/usr/bin/fuse-overlayfs"] if os.path.exists(b)] + ["kernel"]
    tmp = Path(tempfile.mkdtemp(prefix="nestfs-mount-bench-", dir="/var/tmp"))
    try:
        lower = tmp / "lower"
        lower.mkdir()
        (lower / "f").write_text("x\n")
        for case in ("remount", "fresh"):
            times = {i: [] for i in impls}
            for r in range(args.rounds):
                for n, impl in enumerate(impls):
                    d = tmp / case / (f"{n}" if case == "remount" else f"{n}-{r}")
                    dirs = [d / x for x in ("upper", "work", "mnt")]
                    for x in dirs:
                        x.mkdir(parents=True, exist_ok=True)
                    times[impl].append(cycle(impl, lower, *dirs))
                    time.sleep(0.01)
            kernel = statistics.median(t[2] for t in times["kernel"])
            print(f"{case} ({args.rounds} rounds, medians): mounted / + stat / + umount")
            for impl, ts in times.items():
                med = [statistics.median(t[k] for t in ts) * 1000 for k in range(3)]
                ratio = med[2] / 1000 / kernel
                print(f"  {impl}: {med[0]:.2f} / {med[1]:.2f} / {med[2]:.2f} ms ({ratio:.2f}x)")
    finally:
        with open("/proc/mounts") as f:
            left = [line.split()[1] for line in f if str(tmp) in line.split()[1]]
        for mnt in left:
            subprocess.run(["umount", "-l", mnt], check=False)
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()

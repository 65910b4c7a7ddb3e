#!/usr/bin/env python3
"""Image lifecycle and disk-limit figures for the `nestfs` binary.

- create / delete latency of one image whose layers are cached (medians and p90 of --runs),
- wall time of 10 creates started at once, and of their 10 deletes,
- idle daemon memory (RSS, PSS) of those 10 images,
- write throughput into a rootfs with and without a disk limit, and on kernel overlayfs over the
  same layers (same run, order rotated): 1 MiB and 4 KiB writes, and small-file creates,
- `stats` latency with the live daemon counter and with the upper-dir scan (daemon gone),
  on an upper dir holding 20k files.

Run as root:  python3 benches/lifecycle.py [--runs 15] [--image oci:///path/to/layout]
Uses target/release/nestfs (cargo build --release first) and, without --image, the busybox
test image that nestfs-testimages builds from local files. Never leaves mounts,
daemons or stores behind. See docs/benchmarks.md.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20


class Store:
    def __init__(self, binary, root):
        self.binary, self.root = binary, root

    def run(self, *args, check=True):
        p = subprocess.run([self.binary, "--store", str(self.root), *args],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise SystemExit(f"nestfs {' '.join(args)} failed: {p.stdout}{p.stderr}")
        return p

    def spawn(self, *args):
        return subprocess.Popen([self.binary, "--store", str(self.root), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)

    def rootfs(self, image_id):
        return self.root / "images" / image_id / "rootfs"


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def summary(xs):
    xs = sorted(xs)
    return {"median": statistics.median(xs), "p90": xs[int(0.9 * (len(xs) - 1))],
            "min": xs[0], "max": xs[-1], "n": len(xs)}


def daemon_pids(root, keepers=False):
    """Image daemons of the store at `root`, or (`keepers`) the keepers holding their
    connections (benches/failover.py)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        argv = cmd.split()
        keeper = bool(argv) and argv[0].endswith("nestfs-keeper")
        if "serve-image" in cmd and str(root) in cmd and keeper == keepers:
            pids.append(int(d.name))
    return pids


def memory_kib(pid):
    """(RSS, PSS) in KiB from /proc/PID/smaps_rollup."""
    vals = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in ("Rss:", "Pss:"):
            vals[parts[0]] = int(parts[1])
    return vals["Rss:"], vals["Pss:"]


def lifecycle(s, image, runs):
    s.run("create", image, "warm")  # pulls the layers once
    creates, deletes = [], []
    for i in range(runs):
        creates.append(timed(lambda: s.run("create", image, f"l{i}")))
        deletes.append(timed(lambda: s.run("delete", f"l{i}")))
    par_create, par_delete = [], []
    rss, pss = [], []
    for r in range(max(3, runs // 5)):
        ids = [f"p{r}-{i}" for i in range(10)]
        t = time.perf_counter()
        procs = [s.spawn("create", image, i) for i in ids]
        for p in procs:
            if p.wait() != 0:
                raise SystemExit(f"parallel create failed: {p.stdout.read()}")
        par_create.append(time.perf_counter() - t)
        if r == 0:
            time.sleep(1)  # idle
            for pid in daemon_pids(s.root):
                a, b = memory_kib(pid)
                rss.append(a / 1024)
                pss.append(b / 1024)
        t = time.perf_counter()
        procs = [s.spawn("delete", i) for i in ids]
        for p in procs:
            p.wait()
        par_delete.append(time.perf_counter() - t)
    s.run("delete", "warm")
    return {
        "create_s": summary(creates), "delete_s": summary(deletes),
        "create_10_parallel_s": summary(par_create), "delete_10_parallel_s": summary(par_delete),
        "idle_rss_mib": summary(rss), "idle_pss_mib": summary(pss),
    }


def kernel_overlay(s, image_id, dest):
    """Kernel overlayfs over the layers of image `image_id`, upper and work dirs in `dest` (on
    the store's filesystem): the reference for writes through an image daemon."""
    meta = json.loads((s.root / "images" / image_id / "image.json").read_text())
    lowers = ":".join(str(s.root / "volumes" / k) for k in reversed(meta["layers"]))
    for d in ("upper", "work", "mnt"):
        (dest / d).mkdir(parents=True)
    opts = f"lowerdir={lowers},upperdir={dest / 'upper'},workdir={dest / 'work'}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(dest / "mnt")], check=True)
    return dest / "mnt"


def write_throughput(s, image, runs, size_mib, small_files=2000, before=None):
    """MiB/s writing size_mib in 1 MiB writes, and a quarter of it in 4 KiB writes (where the
    per-write cost of counting matters most), with and without a limit and on kernel overlayfs
    over the same layers, order rotated; and files/s creating small_files files of 4 KiB.
    `before` (a Store of another build) adds that build's images without and with a limit."""
    s.run("create", image, "free")
    s.run("create", "--disk-limit-size-bytes", str(64 * 1024 * MiB),
          "--exclude-image-from-quota", image, "limited")
    kdir = s.root / "kernel-overlay"
    targets = {"free": s.rootfs("free"), "limited": s.rootfs("limited"),
               "kernel": kernel_overlay(s, "free", kdir)}
    if before:
        before.run("create", image, "free")
        before.run("create", "--disk-limit-size-bytes", str(64 * 1024 * MiB),
                   "--exclude-image-from-quota", image, "limited")
        targets.update({"free_before": before.rootfs("free"),
                        "limited_before": before.rootfs("limited")})
    names = list(targets)
    res = {}
    try:
        for label, chunk_size, total in (("1m", MiB, size_mib * MiB),
                                         ("4k", 4096, size_mib * MiB // 4), ("files", 4096, 0)):
            out = {n: [] for n in names}
            chunk = os.urandom(chunk_size)
            for r in range(runs):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    path = targets[name] / "w"

                    def write():
                        with open(path, "wb", buffering=0) as f:
                            for _ in range(total // chunk_size):
                                f.write(chunk)
                            os.fsync(f.fileno())

                    def create():
                        path.mkdir()
                        for i in range(small_files):
                            (path / str(i)).write_bytes(chunk)

                    if label == "files":
                        out[name].append(small_files / timed(create))
                        shutil.rmtree(path)
                    else:
                        out[name].append(total / MiB / timed(write))
                        path.unlink()
            unit = "per_s" if label == "files" else "mib_s"
            keys = {"free": "no_limit", "limited": "limit", "kernel": "kernel",
                    "free_before": "no_limit_before", "limited_before": "limit_before"}
            for name in names:
                res[f"write_{label}_{unit}_{keys[name]}"] = summary(out[name])
            free, limited = res[f"write_{label}_{unit}_no_limit"], res[f"write_{label}_{unit}_limit"]
            res[f"write_{label}_limit_overhead_pct"] = 100 * (free["median"] / limited["median"] - 1)
    finally:
        subprocess.run(["umount", str(kdir / "mnt")], check=False)
        shutil.rmtree(kdir, ignore_errors=True)
    for store in [s] + ([before] if before else []):
        store.run("delete", "free")
        store.run("delete", "limited")
    return res


def stats_latency(s, image, runs, files=20000):
    s.run("create", image, "st")
    d = s.rootfs("st") / "many"
    d.mkdir()
    for i in range(files):
        (d / str(i)).write_bytes(b"x" * 100)
    live = [timed(lambda: s.run("stats", "st")) for _ in range(runs)]
    # Keepers first: a keeper would start another daemon.
    for pid in daemon_pids(s.root, keepers=True) + daemon_pids(s.root):
        os.kill(pid, 9)
    time.sleep(0.2)
    scan = [timed(lambda: s.run("stats", "st")) for _ in range(runs)]
    s.run("delete", "st")
    return {"stats_live_s": summary(live), "stats_scan_s": summary(scan), "upper_files": files}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--write-mib", type=int, default=256)
    ap.add_argument("--binary", default=str(REPO / "target/release/nestfs"))
    ap.add_argument("--image", help="default: the busybox test image, built by nestfs-testimages")
    ap.add_argument("--out", default=str(REPO / "target/bench-lifecycle.json"))
    ap.add_argument("--before", help="another nestfs build whose write throughput is measured "
                    "in the same run, in a store of its own")
    ap.add_argument("--only-writes", action="store_true", help="measure write throughput only")
    args = ap.parse_args()
    if args.image is None:
        layout = subprocess.run(
            ["cargo", "run", "-q", "-p", "nestfs-testimages", "--", str(REPO / "target/images"), "busybox"],
            cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()
        args.image = "oci://" + layout
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark mounts FUSE filesystems")
    scratch = Path(tempfile.mkdtemp(prefix="nestfs-bench-", dir="/var/tmp"))
    s = Store(args.binary, scratch / "store")
    before = Store(args.before, scratch / "store-before") if args.before else None
    try:
        s.run("init-store")
        if before:
            before.run("init-store")
        res = {"image": args.image, "runs": args.runs}
        if not args.only_writes:
            res.update(lifecycle(s, args.image, args.runs))
        res.update(write_throughput(s, args.image, args.runs, args.write_mib, before=before))
        if not args.only_writes:
            res.update(stats_latency(s, args.image, args.runs))
    finally:
        for store in [s] + ([before] if before else []):
            store.run("delete-store", check=False)
            for pid in daemon_pids(store.root):
                os.kill(pid, 9)
        shutil.rmtree(scratch, ignore_errors=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    for k, v in res.items():
        if isinstance(v, dict):
            print(f"{k:24} median {v['median']:.4g}  p90 {v['p90']:.4g}  "
                  f"min {v['min']:.4g}  max {v['max']:.4g}  (n={v['n']})")
        else:
            print(f"{k:24} {v}")


if __name__ == "__main__":
    main()

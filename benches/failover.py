#!/usr/bin/env python3
"""Failover figures (docs/failover.md): the stall per takeover and what a keeper costs.

- --kills times, at random moments while client threads stat, read, list, write and fsync in
  the rootfs: SIGKILL the image's daemon and time until a lookup the kernel must send (a name
  never seen before) is answered by the next daemon. Client calls and failed calls are counted
  over the whole run; what the writers wrote is checked at the end.
- Memory of an idle image's keeper and daemon (RSS, PSS, anonymous RSS).

A new daemon measures the upper dir before it serves: --upper-files N first writes N small
files there, to see what that adds to the stall. And it finds the nodes the kernel got from
the daemon before by walking the tree once, on the first request for one: the last figure is
the first open, after a takeover, of a file whose path the kernel had cached.

Run as root:  python3 benches/failover.py [--kills 20] [--binary target/release/nestfs]
Uses the busybox test image nestfs-testimages builds from local files. Leaves no mounts,
daemons or stores behind.
"""

import argparse
import os
import random
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from lifecycle import REPO, Store

MiB = 1 << 20


def memory_kib(pid):
    """RSS, PSS and anonymous RSS in KiB."""
    vals = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in ("Rss:", "Pss:", "Anonymous:"):
            vals[parts[0]] = int(parts[1])
    return vals["Rss:"], vals["Pss:"], vals["Anonymous:"]


def served(s, image_id):
    f = (s.root / "images" / image_id / "daemon.pid").read_text().split()
    return int(f[0]), int(f[2])


class Clients:
    """Threads working in the rootfs until stopped; every failed call is kept."""

    def __init__(self, rootfs, n=3):
        self.rootfs, self.stop, self.ops, self.errors = rootfs, False, 0, []
        self.lock = threading.Lock()
        self.written = {}
        self.threads = [threading.Thread(target=self.work, args=(i,)) for i in range(n)]

    def work(self, i):
        d = self.rootfs / f"client{i}"
        d.mkdir(exist_ok=True)
        n = 0
        while not self.stop:
            n += 1
            try:
                p = d / f"f{n % 50}"
                with open(p, "wb") as f:
                    f.write(n.to_bytes(8, "little") * 512)
                    f.flush()
                    os.fsync(f.fileno())
                assert p.read_bytes() == n.to_bytes(8, "little") * 512
                os.stat(self.rootfs / "bin")
                os.listdir(self.rootfs / "etc")
                (self.rootfs / "bin/busybox").read_bytes()
                self.written[p] = n
                ops = 5
            except Exception as e:  # noqa: BLE001 - every failure counts
                with self.lock:
                    self.errors.append(f"client {i}: {e!r}")
                ops = 0
            with self.lock:
                self.ops += ops

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        for t in self.threads:
            t.join()


def takeovers(s, image_id, rootfs, kills):
    stalls = []
    for n in range(kills):
        time.sleep(random.uniform(0.05, 0.3))
        old, keeper = served(s, image_id)
        t = time.perf_counter()
        os.kill(old, 9)
        try:
            os.lstat(rootfs / f".probe-{n}-{random.random()}")
        except FileNotFoundError:
            pass
        stalls.append(time.perf_counter() - t)
        new, k = served(s, image_id)
        if new == old or k != keeper:
            raise SystemExit(f"takeover {n}: daemon {old} -> {new}, keeper {keeper} -> {k}")
    return stalls


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--binary", default=str(REPO / "target/release/nestfs"))
    ap.add_argument("--upper-files", type=int, default=0)
    args = ap.parse_args()
    layout = subprocess.run(
        ["cargo", "run", "-q", "-p", "nestfs-testimages", "--", str(REPO / "target/images"),
         "busybox"], check=True, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="nestfs-failover-") as tmp:
        s = Store(args.binary, Path(tmp) / "store")
        s.run("init-store")
        try:
            s.run("create", "oci://" + layout, "f")
            rootfs = s.rootfs("f")
            time.sleep(1)
            many = rootfs / "many"
            many.mkdir()
            for i in range(args.upper_files):
                (many / str(i)).write_bytes(b"x" * 100)
            daemon, keeper = served(s, "f")
            mem = {"keeper": memory_kib(keeper), "daemon": memory_kib(daemon)}
            with Clients(rootfs) as c:
                time.sleep(0.3)
                before = c.ops
                stalls = takeovers(s, "f", rootfs, args.kills)
                time.sleep(0.3)
            lost = [p for p, n in c.written.items()
                    if p.read_bytes() != n.to_bytes(8, "little") * 512]
            cached = rootfs / "bin/busybox"
            cached.read_bytes()
            takeovers(s, "f", rootfs, 1)
            t = time.perf_counter()
            cached.read_bytes()
            walk = time.perf_counter() - t
            ms = sorted(x * 1000 for x in stalls)
            print(f"{args.kills} takeovers, {args.upper_files} extra files in the upper dir, "
                  f"{len(c.threads)} client threads "
                  f"({c.ops} calls, {c.ops - before} during the takeovers):")
            print(f"  stall median {statistics.median(ms):.2f} ms, p90 "
                  f"{ms[int(0.9 * (len(ms) - 1))]:.2f} ms, max {ms[-1]:.2f} ms")
            print(f"  failed calls: {len(c.errors)}; files whose last write was lost: {len(lost)}")
            for e in c.errors[:5]:
                print("   ", e)
            print(f"  first open of a cached path after a takeover (the walk): {walk * 1000:.1f} ms")
            for who, (rss, pss, anon) in mem.items():
                print(f"  idle {who}: RSS {rss / 1024:.2f} MiB, PSS {pss / 1024:.2f} MiB, "
                      f"anonymous {anon / 1024:.2f} MiB")
        finally:
            s.run("delete-store", check=False)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Side-by-side comparison of overlay implementations on the same lower layers.

Mounts identical lower layers with kernel overlayfs (the limit), Debian's fuse-overlayfs (C),
fuse-overlayfs 2.0 from crates.io (Rust) and nestfs-overlay, runs the same workloads on each
(fresh upper per run, implementation order rotated per round), and reports medians and each
FUSE implementation's ratio to the kernel measured in the same run.

Run as root:  python3 benches/compare.py [--runs 5] [--quick] [--only nestfs,kernel]
See docs/benchmarks.md for the method and how to reproduce.
"""

import argparse
import json
import os
import random
import select
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA_VERSION = "2"
MiB = 1 << 20


# ---------------------------------------------------------------- deterministic layer data

def write_file(path, rng, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rng.randbytes(size))


def big_file(path, size):
    """A file of `size` bytes of deterministic non-zero data, written in 1 MiB chunks."""
    rng = random.Random(size)
    chunk = rng.randbytes(MiB)
    with open(path, "wb") as f:
        for i in range(size // MiB):
            f.write(chunk[i % 251:] + chunk[: i % 251])


def generate(data, scale):
    """Builds base/ and top/ lower layers plus a tarball, unless already built for this scale."""
    marker = data / f".complete-{DATA_VERSION}-{scale}"
    if marker.exists():
        return
    if data.exists():
        shutil.rmtree(data)
    rng = random.Random(42)
    base, top = data / "base", data / "top"
    n = lambda count: max(1, int(count * scale))  # noqa: E731

    # ~40k files + dirs to stat: 400 dirs x 100 files, split over the two layers.
    for d in range(n(400)):
        for f in range(100):
            layer = top if (d * 100 + f) % 5 == 0 else base
            write_file(layer / "tree" / f"d{d:03}" / f"f{f:03}", rng, rng.randrange(0, 2048))
    # Whiteouts in the top layer hide some base files (overlayfs format: char 0/0).
    for d in range(0, n(400), 10):
        wh = top / "tree" / f"d{d:03}" / "f001"
        wh.parent.mkdir(parents=True, exist_ok=True)
        if wh.exists():
            wh.unlink()
        os.mknod(wh, 0o600 | 0o020000, os.makedev(0, 0))
    for f in range(n(10000)):
        write_file(base / "dir10k" / f"entry-{f:05}", rng, 0)
    for d in range(n(50)):
        for f in range(100):
            write_file(base / "rmtree" / f"d{d:02}" / f"f{f:02}", rng, rng.randrange(0, 4096))
    for d in range(n(200)):
        for f in range(100):
            write_file(base / "readall" / f"d{d:03}" / f"f{f:02}", rng, rng.randrange(0, 8192))
    for i in range(25):
        write_file(base / "shared" / f"part{i:02}", rng, int(4 * MiB * scale) or 4096)
    big_file(base / "big", int(1024 * MiB * scale))
    big_file(base / "copyup", int(256 * MiB * scale))

    src = data / "tarsrc"
    for d in range(n(100)):
        for f in range(100):
            write_file(src / f"d{d:03}" / f"f{f:02}", rng, rng.randrange(0, 4096))
    with tarfile.open(data / "extract.tar", "w") as tar:
        tar.add(src, arcname="x")
    shutil.rmtree(src)
    layered(data / "layered", rng, n)
    subprocess.run(["sync"], check=True)
    marker.touch()


def whiteout(path):
    """An overlayfs-format whiteout (char device 0/0) at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, 0o600 | 0o020000, os.makedev(0, 0))


def opaque(path):
    path.mkdir(parents=True, exist_ok=True)
    os.setxattr(path, "trusted.overlay.opaque", b"y")


def layered(root, rng, n):
    """Three lower layers l0 (top), l1, l2 (base) shaped like an image's: a usr/lib tree of
    ~20k files (the tar subtree) whose files the middle layer overrides (a tenth) or whites out
    (one per directory), a whited-out directory, opaque directories in l0 and l1, relative
    symlinks and hard links: about 41k visible entries at full scale."""
    l0, l1, l2 = root / "l0", root / "l1", root / "l2"
    for p in range(n(330)):
        pkg = f"usr/lib/pkg{p:03}"
        for f in range(50):
            write_file(l2 / pkg / f"f{f:02}", rng, rng.randrange(0, 4096))
        for f in range(10):
            write_file(l2 / pkg / "sub" / f"g{f:02}", rng, rng.randrange(0, 2048))
        os.symlink("f00", l2 / pkg / "link")
        os.symlink("../sub", l2 / pkg / "sub" / "up")
        if p % 5 == 0:
            os.link(l2 / pkg / "f01", l2 / pkg / "hard")
        for f in range(5, 11):  # the middle layer overrides 6 files per package
            write_file(l1 / pkg / f"f{f:02}", rng, rng.randrange(0, 4096))
        whiteout(l1 / pkg / "f11")  # and whites out one
        if p % 10 == 0:  # the top layer overrides one file and whites out another
            write_file(l0 / pkg / "f20", rng, 100)
            whiteout(l0 / pkg / "f21")
    for d in range(n(200)):
        for f in range(100):
            write_file(l2 / "usr/share" / f"doc{d:03}" / f"d{f:02}", rng, rng.randrange(0, 1024))
    for f in range(n(2000)):  # a directory the middle layer removes
        write_file(l2 / "opt/gone" / f"x{f:04}", rng, 10)
    whiteout(l1 / "opt/gone")
    for layer, name in ((l1, "etc"), (l0, "var")):  # opaque over a populated lower directory
        for f in range(n(500)):
            write_file(l2 / name / f"old{f:03}", rng, 10)
        opaque(layer / name)
        for f in range(n(100)):
            write_file(layer / name / f"new{f:03}", rng, 10)


# ---------------------------------------------------------------- implementations

def in_proc_mounts(mnt):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(mnt) for line in f)


def wait_mounted(mnt, proc=None, timeout=20):
    deadline = time.monotonic() + timeout
    while not in_proc_mounts(mnt):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mount of {mnt} failed: exit {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"mount of {mnt} did not appear")
        time.sleep(0.0005)  # fine enough not to dominate mount-stat-umount (~4 ms)


def wait_exit(proc, timeout):
    """Waits for the daemon to exit and reaps it; False on timeout. Woken by a pidfd the moment
    the process ends: Popen.wait(timeout=) polls with sleeps from 0.5 ms up, which added up to a
    millisecond to mount-stat-umount for daemons that take a few hundred microseconds to exit."""
    fd = os.pidfd_open(proc.pid)
    try:
        if not select.select([fd], [], [], timeout)[0]:
            return False
    finally:
        os.close(fd)
    proc.wait()
    return True


class Impl:
    def __init__(self, name, binary=None):
        self.name, self.binary = name, binary

    def mount(self, lowers, upper, work, mnt, log=None):
        """`log`: a file for the daemon's debug log (`-d`), which names every request."""
        lowerdir = ":".join(str(p) for p in lowers)
        opts = f"lowerdir={lowerdir},upperdir={upper},workdir={work}"
        if self.binary is None:
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)], check=True)
            return None
        # Foreground daemons so the harness owns the process and can read its RSS.
        proc = subprocess.Popen([self.binary, "-d" if log else "-f", "-o", opts, str(mnt)],
                                stdout=subprocess.DEVNULL, stderr=log or subprocess.DEVNULL)
        wait_mounted(mnt, proc)
        return proc

    def umount(self, mnt, proc):
        subprocess.run(["umount", str(mnt)], check=False)
        if in_proc_mounts(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        if proc is not None and not wait_exit(proc, timeout=10):
            proc.kill()
            proc.wait()


def find_impls(args):
    impls = [Impl("kernel")]
    candidates = [
        ("fuse-overlayfs-c", shutil.which("fuse-overlayfs") or "/usr/bin/fuse-overlayfs"),
        ("fuse-overlayfs-rs", args.fuse_overlayfs_rs),
        ("nestfs", args.nestfs),
    ]
    if args.nestfs_before:
        # Another nestfs-overlay build (e.g. before an optimisation), measured in the same run.
        candidates.append(("nestfs-before", args.nestfs_before))
    for name, path in candidates:
        if path and Path(path).is_file():
            impls.append(Impl(name, path))
        else:
            print(f"skipping {name}: {path} not found", file=sys.stderr)
    if args.only:
        wanted = set(args.only.split(","))
        impls = [i for i in impls if i.name in wanted]
    return impls


# ---------------------------------------------------------------- workloads

def drop_caches():
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def sh(cmd):
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Set while requests are counted: the daemon's debug log, and the log offsets each timed part
# started and ended at.
REQUEST_LOG = None
WINDOWS = []


def timed(fn):
    if REQUEST_LOG:
        start = os.fstat(REQUEST_LOG.fileno()).st_size
        fn()
        time.sleep(0.1)  # releases and forgets reach the daemon after the call returns
        WINDOWS.append((start, os.fstat(REQUEST_LOG.fileno()).st_size))
        return None
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def daemon_rss_mib(proc):
    if proc is None:
        return None
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def cached_bytes():
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1]) * 1024
    return 0


# Each workload: (name, unit, fn(ctx) -> value). ctx gives a fresh mount of the layers.
def w_stat_cold(c):
    drop_caches()
    return timed(lambda: sh(f"find {c.mnt}/tree -printf '%s\\n'"))


def w_stat_warm(c):
    sh(f"find {c.mnt}/tree -printf '%s\\n'")
    return timed(lambda: sh(f"find {c.mnt}/tree -printf '%s\\n'"))


def w_stat_parallel(c):
    """Four `find`s at once over quarters of the tree, cold: containers run many processes,
    and a daemon that serves one request at a time makes them queue."""
    dirs = sorted(p.name for p in (c.mnt / "tree").iterdir())
    parts = [" ".join(f"{c.mnt}/tree/{d}" for d in dirs[i::4]) for i in range(4)]
    drop_caches()
    starts = "".join(f"find {p} -printf '%s\\n' >/dev/null & p{i}=$!; " for i, p in enumerate(parts))
    waits = " && ".join(f"wait $p{i}" for i in range(4))  # any find that fails fails the sample
    return timed(lambda: sh(starts + waits))


def w_list(c):
    sh(f"ls -f {c.mnt}/dir10k")
    return timed(lambda: sh(f"ls -f {c.mnt}/dir10k"))


def w_seq_cold(c):
    drop_caches()
    return timed(lambda: sh(f"dd if={c.mnt}/big of=/dev/null bs=1M"))


def w_seq_warm(c):
    sh(f"dd if={c.mnt}/big of=/dev/null bs=1M")
    return timed(lambda: sh(f"dd if={c.mnt}/big of=/dev/null bs=1M"))


def w_rand(c):
    size = (c.mnt / "big").stat().st_size
    rng = random.Random(7)
    offsets = [rng.randrange(0, size // 4096) * 4096 for _ in range(20000)]
    fd = os.open(c.mnt / "big", os.O_RDONLY)
    try:
        os.pread(fd, 4096, 0)
        return timed(lambda: [os.pread(fd, 4096, o) for o in offsets])
    finally:
        os.close(fd)


# Workloads that write end with a sync of the filesystem holding the upper dir: syncfs(2) on a
# FUSE mount whose daemon has no SYNCFS handler (all three FUSE builds) returns at once, while
# on kernel overlayfs it writes the upper back, so `sync -f MOUNT` timed the disk for the
# kernel alone.
def w_extract(c):
    return timed(lambda: sh(f"tar -xf {c.data}/extract.tar -C {c.mnt} && sync -f {c.upper}"))


def w_write_small(c):
    """256 MiB written 4 KiB at a time into a new file: a FUSE kernel that must ask the daemon
    whether each write clears a security.capability makes every write a round trip."""
    return timed(lambda: sh(f"dd if=/dev/zero of={c.mnt}/written bs=4k count=65536 && sync -f {c.upper}"))


def w_copyup(c):
    return timed(lambda: sh(f"printf x | dd of={c.mnt}/copyup bs=1 count=1 conv=notrunc"))


def w_rm(c):
    return timed(lambda: sh(f"rm -rf {c.mnt}/rmtree"))


def w_readall(c):
    drop_caches()
    return timed(lambda: sh(f"find {c.mnt}/readall -type f -exec cat {{}} + >/dev/null"))


def w_rss(c):
    sh(f"find {c.mnt}/readall -type f -exec cat {{}} + >/dev/null")
    return daemon_rss_mib(c.proc)


def w_walk_warm(c):
    """The issue-22 walk: every entry's size, on a mount that has walked the tree once."""
    sh(f"find {c.mnt} -printf '%s\\n'")
    return timed(lambda: sh(f"find {c.mnt} -printf '%s\\n'"))


def w_tar_warm(c):
    sh(f"cd {c.mnt}/usr && tar -cf - lib | wc -c")
    return timed(lambda: sh(f"cd {c.mnt}/usr && tar -cf - lib | wc -c"))


# Over the three layered lowers (see `layered`).
LAYERED_WORKLOADS = [
    ("walk-warm", "s", w_walk_warm),
    ("tar-warm", "s", w_tar_warm),
]

WORKLOADS = [
    ("stat-cold", "s", w_stat_cold),
    ("stat-warm", "s", w_stat_warm),
    ("stat-parallel-cold", "s", w_stat_parallel),
    ("list-10k", "s", w_list),
    ("seq-read-cold", "s", w_seq_cold),
    ("seq-read-warm", "s", w_seq_warm),
    ("rand-read-4k", "s", w_rand),
    ("extract-tar", "s", w_extract),
    ("write-4k", "s", w_write_small),
    ("copy-up", "s", w_copyup),
    ("rm-rf", "s", w_rm),
    ("read-all", "s", w_readall),
    ("rss-after-read-all", "MiB", w_rss),
]


class Ctx:
    pass


def run_mounted(impl, data, scratch, fn, lowers=("top", "base"), log=None):
    """Mounts the layers with a fresh upper/work, runs fn(ctx), unmounts whatever happens."""
    run = Path(tempfile.mkdtemp(dir=scratch))
    c = Ctx()
    c.data, c.mnt, c.upper = data, run / "mnt", run / "upper"
    for d in ("upper", "work", "mnt"):
        (run / d).mkdir()
    c.proc = impl.mount([data / l for l in lowers], run / "upper", run / "work", c.mnt, log)
    try:
        return fn(c)
    finally:
        impl.umount(c.mnt, c.proc)
        # The sample's upper stays until the run ends: deleting thousands of files makes ext4
        # skip their inode numbers for minutes after ("recently deleted"), which made file
        # creation in the next samples 2-10x slower depending on who ran after whom.


def w_mount_latency(impl, data, scratch, rounds=10):
    run = Path(tempfile.mkdtemp(dir=scratch))
    try:
        start = time.perf_counter()
        for i in range(rounds):
            up, wk, mnt = run / f"u{i}", run / f"w{i}", run / f"m{i}"
            for d in (up, wk, mnt):
                d.mkdir()
            proc = impl.mount([data / "top", data / "base"], up, wk, mnt)
            os.stat(mnt / "big")
            impl.umount(mnt, proc)
        return (time.perf_counter() - start) / rounds
    finally:
        shutil.rmtree(run)


def w_page_cache(impl, data, scratch, mounts=4):
    """Page cache growth (bytes) when `mounts` mounts read the same files, per byte read once."""
    runs, procs = [], []
    try:
        for _ in range(mounts):
            run = Path(tempfile.mkdtemp(dir=scratch))
            for d in ("upper", "work", "mnt"):
                (run / d).mkdir()
            procs.append(impl.mount([data / "top", data / "base"], run / "upper", run / "work", run / "mnt"))
            runs.append(run)
        drop_caches()
        before = cached_bytes()
        for run in runs:
            sh(f"cat {run}/mnt/shared/* >/dev/null")
        total = sum(p.stat().st_size for p in (data / "base" / "shared").iterdir())
        return (cached_bytes() - before) / total
    finally:
        for run, proc in zip(runs, procs):
            impl.umount(run / "mnt", proc)
            shutil.rmtree(run)


# ---------------------------------------------------------------- driver and report

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="1/10 of the data, 3 runs: a smoke run")
    ap.add_argument("--only", help="comma list of implementations (kernel,fuse-overlayfs-c,fuse-overlayfs-rs,nestfs,nestfs-before)")
    ap.add_argument("--workloads", help="comma list of workload names")
    ap.add_argument("--data", default="/var/tmp/nestfs-bench", help="where generated layers are cached")
    ap.add_argument("--nestfs", default=str(REPO / "target/release/nestfs-overlay"))
    ap.add_argument("--nestfs-before", help="a second nestfs-overlay binary to compare against")
    ap.add_argument("--requests", action="store_true",
                    help="also count the FUSE requests each nestfs build receives per workload (one extra run each)")
    ap.add_argument("--fuse-overlayfs-rs", default=str(REPO / "benches/.tools/bin/fuse-overlayfs"))
    ap.add_argument("--out", default=str(REPO / "target/bench-compare.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("compare.py: needs root (kernel overlay mounts, drop_caches)")
    scale = 0.1 if args.quick else 1.0
    runs = 3 if args.quick else args.runs
    data = Path(args.data) / f"scale-{scale}"
    generate(data, scale)
    impls = find_impls(args)
    scratch = Path(tempfile.mkdtemp(prefix="nestfs-bench-"))
    mounted = [(n, u, fn, ("top", "base")) for n, u, fn in WORKLOADS]
    mounted += [(n, u, fn, ("layered/l0", "layered/l1", "layered/l2")) for n, u, fn in LAYERED_WORKLOADS]
    workloads = [(n, u, lambda impl, fn=fn, lo=lo: run_mounted(impl, data, scratch, fn, lo))
                 for n, u, fn, lo in mounted]
    workloads += [
        ("mount-stat-umount", "s", lambda impl: w_mount_latency(impl, data, scratch)),
        ("page-cache-4-mounts", "x", lambda impl: w_page_cache(impl, data, scratch)),
    ]
    if args.workloads:
        wanted = set(args.workloads.split(","))
        workloads = [w for w in workloads if w[0] in wanted]
        mounted = [w for w in mounted if w[0] in wanted]
    results = {}
    try:
        for name, unit, fn in workloads:
            samples = {i.name: [] for i in impls}
            for r in range(runs):
                order = impls[r % len(impls):] + impls[: r % len(impls)]
                for impl in order:
                    samples[impl.name].append(fn(impl))
            results[name] = {"unit": unit, "samples": samples}
            print(f"{name}: " + ", ".join(f"{k}={statistics.median(v):.4g}" for k, v in samples.items() if None not in v),
                  file=sys.stderr)
        counts = count_requests(impls, mounted, data, scratch) if args.requests else {}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine(), "results": results, "requests": counts}, indent=1))
    print(table(results, [i.name for i in impls]))
    for w, per_impl in counts.items():
        print(f"\n{w}: FUSE requests in the timed part, by opcode\n")
        print(requests_table(per_impl))


def count_requests(impls, mounted, data, scratch):
    """Runs each workload once more on each nestfs build with its debug log on (untimed: the
    log slows the daemon) and counts the requests of the timed part by opcode."""
    global REQUEST_LOG
    counts = {}
    for name, _, fn, lowers in mounted:
        for impl in (i for i in impls if i.name.startswith("nestfs")):
            with tempfile.TemporaryFile(dir=scratch) as log:
                REQUEST_LOG = log
                WINDOWS.clear()
                try:
                    run_mounted(impl, data, scratch, fn, lowers, log)
                finally:
                    REQUEST_LOG = None
                per_op = {}
                for start, end in WINDOWS:
                    for line in os.pread(log.fileno(), end - start, start).decode(errors="replace").splitlines():
                        # fuser: "... fuser::request: FUSE(  4) ino 0x...01 GETATTR ..."
                        words = line.split()
                        if "fuser::request:" in words and "ino" in words:
                            op = words[words.index("ino") + 2]
                            per_op[op] = per_op.get(op, 0) + 1
            if WINDOWS:
                counts.setdefault(name, {})[impl.name] = per_op
    return counts


def requests_table(per_impl):
    names = list(per_impl)
    ops = sorted({op for c in per_impl.values() for op in c}, key=lambda op: -max(c.get(op, 0) for c in per_impl.values()))
    lines = ["| opcode | " + " | ".join(names) + " |", "|" + "---|" * (1 + len(names))]
    lines += [f"| {op} | " + " | ".join(str(per_impl[n].get(op, 0)) for n in names) + " |" for op in ops]
    lines.append("| total | " + " | ".join(str(sum(per_impl[n].values())) for n in names) + " |")
    return "\n".join(lines)


def machine():
    return {
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "fuse-overlayfs-c": subprocess.run(["fuse-overlayfs", "--version"], capture_output=True, text=True).stdout.splitlines()[:1],
    }


def table(results, names):
    fuse = [n for n in names if n != "kernel"]
    head = "| workload | kernel | " + " | ".join(f"{n} (ratio)" for n in fuse) + " |"
    lines = [head, "|" + "---|" * (2 + len(fuse))]
    ratios = {n: [] for n in fuse}
    for w, r in results.items():
        s = r["samples"]
        k = statistics.median(s["kernel"]) if None not in s.get("kernel", [None]) else None
        cells = [f"{k:.4g} {r['unit']}" if k is not None else "-"]
        for n in fuse:
            if None in s[n]:
                cells.append("-")
                continue
            med = statistics.median(s[n])
            spread = f"{min(s[n]):.3g}-{max(s[n]):.3g}"
            if k and r["unit"] == "s":
                ratios[n].append(med / k)
                cells.append(f"{med:.4g} ({med / k:.2f}x; {spread})")
            else:
                cells.append(f"{med:.4g} ({spread})")
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    if "kernel" in names:
        gm = [f"{statistics.geometric_mean(v):.2f}x" if v else "-" for v in ratios.values()]
        lines.append("| geometric mean of ratios | 1 | " + " | ".join(gm) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

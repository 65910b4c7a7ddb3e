#!/usr/bin/env python3
"""Time from `nestfs create` to a container's first output, lazy vs full pull.

Builds a big image from this machine's /usr (about --max-mb MB gzip-compressed, the
workload's files first), converts it to eStargz with `nestfs convert`, pushes it to a local
docker-registry, and serves that through a proxy here that caps the registry->client
direction at --mbps MB/s and counts the bytes it relays. Each run uses a fresh store and
dropped page caches, runs `create` (lazy, or --without-lazy-pull), then
`chroot ROOTFS /usr/bin/python3 -c 'print("hi")'`, and records the create time, the time to
the workload's first output line and the bytes fetched until then. Runs alternate lazy, full.

Run as root:  python3 benches/lazy_pull.py [--runs 3] [--mbps 100] [--max-mb 350] [--keep]
Uses target/release/nestfs (cargo build --release first) and Debian's docker-registry
(apt-get install docker-registry). Leaves no mounts, daemons, servers or temp dirs behind
(temp dirs stay with --keep). MB is 10^6 bytes throughout.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import zlib
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MB = 1000 * 1000
IMAGE_ID = "bench"
NAME, TAG = "bench/lazy", "v1"
CHROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
# Keeps the daemon's background download of the rest of a lazy layer out of the measured window.
NESTFS_ENV = {**os.environ, "NESTFS_LAZY_COMPLETE_DELAY_MS": "600000"}
TIMEOUT = 600  # seconds for any one step: a hang fails the bench instead of stalling it


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- the image

class GzipSizer:
    """A write-only file that also gzips what it is given, to know the compressed size so far."""

    def __init__(self, f):
        self.f, self.z, self.compressed = f, zlib.compressobj(6), 0

    def write(self, data):
        self.compressed += len(self.z.compress(data))
        return self.f.write(data)


def walk(top):
    """Every path under `top`, parents before children, in a stable order."""
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            yield os.path.join(dirpath, name)


def needed_paths(workload):
    """What the workload's program loads: itself, its libraries and, for python, its stdlib."""
    prog = workload[0]
    ldd = subprocess.run(["ldd", prog], capture_output=True, text=True, check=True).stdout
    yield prog
    yield from (w for line in ldd.splitlines() for w in line.split() if w.startswith("/"))
    if prog.endswith("python3"):
        code = "import sysconfig; print(sysconfig.get_paths()['stdlib'])"
        stdlib = subprocess.run([prog, "-c", code], capture_output=True, text=True,
                                check=True).stdout.strip()
        yield from walk(stdlib)


def build_rootfs(dest, workload, max_bytes):
    """Writes a rootfs tarball at `dest`: merged-/usr top-level symlinks, a minimal /etc, the
    workload's files, then the rest of /usr until the tarball would gzip to `max_bytes`.
    Returns (entries, bytes of file data)."""
    added, stats = set(), {"entries": 0, "bytes": 0}
    with open(dest, "wb") as f:
        sizer = GzipSizer(f)
        with tarfile.open(fileobj=sizer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            def put(ti, data=None):
                tar.addfile(ti, data)
                stats["entries"] += 1
                stats["bytes"] += ti.size if ti.isreg() else 0

            for name, mode in (("etc", 0o755), ("tmp", 0o1777), ("proc", 0o555),
                               ("dev", 0o755), ("root", 0o700)):
                ti = tarfile.TarInfo(name)
                ti.type, ti.mode = tarfile.DIRTYPE, mode
                put(ti)
            for name, text in (("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
                               ("etc/group", b"root:x:0:\n")):
                ti = tarfile.TarInfo(name)
                ti.size, ti.mode = len(text), 0o644
                put(ti, BytesIO(text))
            for name in ("bin", "sbin", "lib", "lib64"):
                ti = tarfile.TarInfo(name)
                ti.type, ti.linkname = tarfile.SYMTYPE, "usr/" + name
                put(ti)

            def add(path, follow=False):
                # /lib/x is /usr/lib/x: the image holds /usr's paths, reached by the links above.
                path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
                if path in added or not path.startswith("/usr"):
                    return
                if os.path.dirname(path) != "/":
                    add(os.path.dirname(path))
                added.add(path)
                try:
                    ti = tar.gettarinfo(path, path.lstrip("/"))
                    if ti is None or ti.ischr() or ti.isblk() or ti.isfifo():
                        return
                    if ti.isreg():
                        with open(path, "rb") as data:
                            put(ti, data)
                    else:
                        put(ti)
                except OSError as e:
                    log(f"  skipped {path}: {e}")
                    return
                # A library named through a link needs the link's target too.
                if follow and ti.issym():
                    add(os.path.join(os.path.dirname(path), ti.linkname), follow=True)

            for p in needed_paths(workload):
                add(p, follow=True)
            for p in walk("/usr"):
                if sizer.compressed >= max_bytes:
                    break
                add(p)
    return stats["entries"], stats["bytes"]


# ---------------------------------------------------------------- registry and proxy

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_registry(tmp):
    """docker-registry on a free 127.0.0.1 port, storing in tmp/registry; returns (process, url)."""
    addr = f"127.0.0.1:{free_port()}"
    config = tmp / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp / 'registry'}\n"
        f"http:\n  addr: {addr}\n")
    with open(tmp / "registry.log", "wb") as out:
        proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://{addr}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/v2/", timeout=1).close()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out = (tmp / "registry.log").read_text()
                raise BenchError(f"docker-registry did not start: {out}")
            time.sleep(0.1)


def push(url, layout, tag):
    """Pushes the OCI layout's (first) image as NAME:tag with the registry API: each blob in a
    monolithic upload, streamed from its file, then the manifest's bytes unchanged (so the
    layers keep their eStargz annotations). Returns the manifest."""
    blob = lambda digest: layout / "blobs" / digest.replace(":", "/")  # noqa: E731
    mdesc = json.loads((layout / "index.json").read_text())["manifests"][0]
    raw = blob(mdesc["digest"]).read_bytes()
    manifest = json.loads(raw)
    for desc in (manifest["config"], *manifest["layers"]):
        req = urllib.request.Request(f"{url}/v2/{NAME}/blobs/uploads/", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            location = urllib.parse.urljoin(url, r.headers["Location"])
        sep = "&" if urllib.parse.urlsplit(location).query else "?"
        path = blob(desc["digest"])
        with open(path, "rb") as data:
            req = urllib.request.Request(
                f"{location}{sep}digest={urllib.parse.quote(desc['digest'])}", data=data,
                method="PUT", headers={"Content-Length": str(path.stat().st_size),
                                       "Content-Type": "application/octet-stream"})
            urllib.request.urlopen(req, timeout=TIMEOUT).close()
    req = urllib.request.Request(f"{url}/v2/{NAME}/manifests/{tag}", data=raw, method="PUT",
                                 headers={"Content-Type": mdesc["mediaType"]})
    urllib.request.urlopen(req, timeout=TIMEOUT).close()
    return manifest


class ThrottledProxy:
    """A TCP proxy on a free 127.0.0.1 port to `upstream`: the upstream->client direction of
    all connections together is capped at `rate` bytes/s (one token bucket) and counted."""

    CHUNK = 64 * 1024

    def __init__(self, upstream, rate):
        self.upstream, self.rate = upstream, rate
        self.burst = max(self.CHUNK, rate / 100)  # 10 ms at full rate: no long bursts
        self.tokens, self.stamp, self.relayed = self.burst, time.monotonic(), 0
        self.lock = threading.Lock()
        self.sockets = set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self):
        with self.lock:
            self.relayed = 0

    def bytes_relayed(self):
        with self.lock:
            return self.relayed

    def close(self):
        self.listener.close()
        for s in list(self.sockets):
            self._shut(s)

    def _take(self, n):
        # Tokens may go negative: the taker then sleeps off its own debt, which keeps the
        # total rate at `rate` however many connections take at once.
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - n
            self.stamp = now
            wait = -self.tokens / self.rate
        if wait > 0:
            time.sleep(wait)

    @staticmethod
    def _shut(s):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        self.sockets.update((client, upstream))
        up = threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True)
        up.start()
        self._pump(upstream, client, True)
        up.join()
        for s in (client, upstream):
            self.sockets.discard(s)
            s.close()

    def _pump(self, src, dst, throttled):
        try:
            while data := src.recv(self.CHUNK):
                if throttled:
                    self._take(len(data))
                dst.sendall(data)
                if throttled:
                    with self.lock:
                        self.relayed += len(data)
        except OSError:
            pass
        # Either end closing ends the connection (HTTP clients do not half-close); this
        # also wakes the other direction's pump, blocked in recv.
        self._shut(src)
        self._shut(dst)


# ---------------------------------------------------------------- runs

def nestfs(binary, *args, store=None, check=True):
    cmd = [binary] + (["--store", str(store)] if store else []) + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       env=NESTFS_ENV, timeout=TIMEOUT)
    if check and p.returncode != 0:
        raise BenchError(f"nestfs {' '.join(map(str, args))} failed ({p.returncode}): "
                         f"{p.stdout}{p.stderr}")
    return p


def daemon_log(store):
    path = store / "images" / IMAGE_ID / "daemon.log"
    try:
        return f"\n--- {path}:\n{path.read_text()}"
    except OSError as e:
        return f"\n(no daemon log: {e})"


def mounts_under(path):
    prefix = str(path) + "/"
    points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    return [p for p in points if (p + "/").startswith(prefix)]


def daemons_of(store):
    pids = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0") if d.name.isdigit() else []
        except OSError:
            continue
        if b"serve-image" in cmd and any(str(store).encode() in a for a in cmd):
            pids.append(int(d.name))
    return pids


def teardown(binary, store):
    """Deletes the image and the store; whatever nestfs leaves behind is reported, then
    removed by force."""
    if not store.exists():
        return
    nestfs(binary, "delete", IMAGE_ID, store=store, check=False)
    p = nestfs(binary, "delete-store", store=store, check=False)
    if p.returncode != 0:
        log(f"  PROBLEM: delete-store failed ({p.returncode}): {p.stdout}{p.stderr}")
    for pid in daemons_of(store):
        log(f"  PROBLEM: serve-image daemon {pid} survived delete-store; killing it")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for point in sorted(mounts_under(store), key=len, reverse=True):
        log(f"  PROBLEM: {point} still mounted after delete-store; umount -l")
        subprocess.run(["umount", "-l", point], check=False)
    shutil.rmtree(store, ignore_errors=True)


def run_once(binary, store, ref, proxy, lazy, workload):
    """One create + workload in a fresh store: (create s, first output s, bytes fetched)."""
    nestfs(binary, "init-store", store=store)
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3")
    proxy.reset()
    t0 = time.perf_counter()
    p = nestfs(binary, "create", "--insecure-registry", f"127.0.0.1:{proxy.port}",
               *([] if lazy else ["--without-lazy-pull"]), ref, IMAGE_ID, store=store, check=False)
    t_create = time.perf_counter() - t0
    if p.returncode != 0:
        raise BenchError(f"create failed ({p.returncode}): {p.stdout}{p.stderr}{daemon_log(store)}")
    rootfs = json.loads(p.stdout)["root"]["path"]
    w = subprocess.Popen(["chroot", rootfs, *workload], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=CHROOT_ENV, text=True)
    timer = threading.Timer(TIMEOUT, w.kill)
    timer.start()
    try:
        line = w.stdout.readline()
        t_first, fetched = time.perf_counter() - t0, proxy.bytes_relayed()
        rest, err = w.communicate()
    finally:
        timer.cancel()
    if w.returncode != 0 or line != "hi\n":
        raise BenchError(f"workload failed ({w.returncode}): stdout {line + rest!r} stderr {err!r}"
                         f"{daemon_log(store)}")
    return t_create, t_first, fetched


def git_rev():
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD"],
                           capture_output=True).returncode != 0
    return rev + (" + uncommitted changes" if dirty else "")


def fmt(xs, scale=1.0, digits=2):
    xs = [x / scale for x in xs]
    return f"{statistics.median(xs):.{digits}f} ({min(xs):.{digits}f}–{max(xs):.{digits}f})"


def report(results, image_bytes, args):
    full_first = statistics.median(r[1] for r in results["full"])
    print("| mode | create (s) | first output (s) | fetched before output (MB) | image (MB) | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, rs in results.items():
        speedup = full_first / statistics.median(r[1] for r in rs)
        print(f"| {mode} | {fmt([r[0] for r in rs])} | {fmt([r[1] for r in rs])} | "
              f"{fmt([r[2] for r in rs], MB, 1)} | {image_bytes / MB:.1f} | {speedup:.1f}x |")
    print(f"\nmedian (min–max) of {args.runs} runs per mode; registry->client capped at "
          f"{args.mbps:g} MB/s; speed-up = full / mode's median time to first output; "
          "lazy-prefetch: converted with the workload's files (recorded with strace) as its "
          "prefetch list; lazy-before: --before's binary")


def record_prefetch_list(workload, path):
    """The files the workload opens, as this machine's /usr is the image's: recorded with
    strace, for `convert --prefetch-list`."""
    trace = path.with_suffix(".strace")
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=openat,execve", "-o", str(trace),
                    *workload], check=True, capture_output=True, env=CHROOT_ENV)
    seen = []
    for line in trace.read_text().splitlines():
        if "= -1" in line or '"' not in line:
            continue
        # /lib is usr/lib in the image as here: list the file by its name in the layer.
        name = os.path.realpath(line.split('"')[1])
        if name.startswith("/usr/") and name not in seen and os.path.isfile(name):
            seen.append(name)
    path.write_text("\n".join(seen) + "\n")
    return len(seen)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=str(REPO / "target/release/nestfs"))
    ap.add_argument("--mbps", type=float, default=100,
                    help="registry->client cap, MB/s (default 100)")
    ap.add_argument("--runs", type=int, default=3, help="runs per mode (default 3)")
    ap.add_argument("--max-mb", type=float, default=350,
                    help="stop adding /usr's files once the rootfs would gzip to this many MB "
                         "(default 350)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir for inspection")
    ap.add_argument("--before", help="also time lazy pulls with this nestfs binary (lazy-before)")
    ap.add_argument("--prefetch", action="store_true",
                    help="also time an image converted with the workload's files as its "
                         "prefetch list (lazy-prefetch)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark mounts FUSE filesystems and drops caches")
    args.binary = str(Path(args.binary).resolve())
    # SIGTERM unwinds like Ctrl-C, through the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workload = ["/usr/bin/python3", "-c", 'print("hi")']
    if not os.path.exists(workload[0]):
        log("no /usr/bin/python3 on this machine: the workload is `/usr/bin/env echo hi`")
        workload = ["/usr/bin/env", "echo", "hi"]

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="nestfs-lazy-bench-", dir="/var/tmp"))
    registry = proxy = store = None
    try:
        log(f"building the rootfs tarball in {tmp}")
        t = time.perf_counter()
        entries, data_bytes = build_rootfs(tmp / "rootfs.tar", workload, args.max_mb * MB)
        log(f"  {entries} entries, {data_bytes / MB:.0f} MB of file data, "
            f"{time.perf_counter() - t:.0f} s")

        t = time.perf_counter()
        nestfs(args.binary, "convert", tmp / "rootfs.tar", tmp / "layout")
        if args.prefetch:
            n = record_prefetch_list(workload, tmp / "prefetch.txt")
            nestfs(args.binary, "convert", "--prefetch-list", tmp / "prefetch.txt",
                   tmp / "rootfs.tar", tmp / "layout-prefetch")
            log(f"  prefetch list: {n} files")
        (tmp / "rootfs.tar").unlink()  # the layouts have it all now
        log(f"converted to eStargz in {time.perf_counter() - t:.0f} s")

        t = time.perf_counter()
        registry, url = start_registry(tmp)
        manifest = push(url, tmp / "layout", TAG)
        if args.prefetch:
            push(url, tmp / "layout-prefetch", TAG + "-prefetch")
        image_bytes = sum(layer["size"] for layer in manifest["layers"])
        log(f"pushed {image_bytes / MB:.1f} MB in {len(manifest['layers'])} layer(s) "
            f"in {time.perf_counter() - t:.0f} s")

        proxy = ThrottledProxy(("127.0.0.1", int(url.rsplit(":", 1)[1])), args.mbps * MB)
        ref = f"docker://127.0.0.1:{proxy.port}/{NAME}:{TAG}"
        # mode: (binary, image, lazy)
        modes = {"lazy": (args.binary, ref, True)}
        if args.prefetch:
            modes["lazy-prefetch"] = (args.binary, ref + "-prefetch", True)
        if args.before:
            modes["lazy-before"] = (str(Path(args.before).resolve()), ref, True)
        modes["full"] = (args.binary, ref, False)
        results = {mode: [] for mode in modes}
        for i in range(args.runs):
            for mode, (binary, image, lazy) in modes.items():
                store = tmp / f"store-{mode}-{i}"
                try:
                    r = run_once(binary, store, image, proxy, lazy, workload)
                finally:
                    teardown(binary, store)
                results[mode].append(r)
                log(f"  run {i + 1} {mode}: create {r[0]:.2f} s, first output {r[1]:.2f} s, "
                    f"fetched {r[2] / MB:.1f} MB")

        print(f"nestfs {git_rev()}; image: /usr of this machine, {entries} entries, "
              f"{data_bytes / MB:.0f} MB of file data, {image_bytes / MB:.1f} MB as eStargz; "
              f"workload: {' '.join(workload)}\n")
        report(results, image_bytes, args)
        print(f"\nwhole bench: {time.perf_counter() - started:.0f} s")
    except BenchError as e:
        raise SystemExit(f"FAILED: {e}")
    finally:
        if store is not None:
            teardown(args.binary, store)
        if proxy:
            proxy.close()
        if registry:
            registry.kill()
            registry.wait()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

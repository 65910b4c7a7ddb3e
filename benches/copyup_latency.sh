#!/usr/bin/env bash
# How long a first open (O_RDONLY, then a 1-byte read) of a small lower file takes while a
# 1 GiB lower file is being copied up on the same mount (its first O_WRONLY|O_APPEND open and a
# 1-byte write). The goal is under 10 ms: the open must not wait for the copy. As root.
#
#   bash benches/copyup_latency.sh [BINARY...]    # default: a release build of this tree
#
# Each binary is measured RUNS times (default 5), each run on a fresh mount and upper dir, and
# gets one line: median and max of the open, and how long the copy-up took. The data is
# generated in a temp dir, removed on exit with every mount under it.
set -euo pipefail
runs=${RUNS:-5}
if [ $# -eq 0 ]; then
    repo=$(realpath "$(dirname "$0")/..")
    (cd "$repo" && cargo build --release -q -p nestfs-fuse --bin nestfs-overlay)
    set -- "$repo/target/release/nestfs-overlay"
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/nestfs-copyup-bench-XXXXXX")

cleanup() {
    if [ -n "${measuring:-}" ]; then kill "$measuring" 2>/dev/null && wait "$measuring" || true; fi
    if mountpoint -q "$tmp/mnt"; then umount "$tmp/mnt" || umount -l "$tmp/mnt"; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

mkdir -p "$tmp/lower" "$tmp/mnt"
# Zeros written for real: data blocks, not holes, so every byte is copied.
head -c 1G /dev/zero >"$tmp/lower/big"
for i in $(seq "$runs"); do echo small >"$tmp/lower/small$i"; done

# One run: copy-up in a thread; once its copy has data in the work dir, time the other open.
# Run as a job of its own (`exec`: its pid is python's), so a trap can stop it.
measure() {
    exec python3 - "$tmp/mnt" "$tmp/work" "$1" <<'EOF'
import glob, os, sys, threading, time

mnt, work, small = sys.argv[1:]
done = threading.Event()


def copy_up():
    fd = os.open(f"{mnt}/big", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"x")
    os.close(fd)
    done.set()


def copying():
    for p in glob.glob(f"{work}/#nestfs-*"):
        try:
            if os.lstat(p).st_size > 0:
                return True
        except FileNotFoundError:
            pass
    return False


start = time.perf_counter()
threading.Thread(target=copy_up).start()
while not copying():
    if done.is_set() or time.perf_counter() - start > 60:
        sys.exit("the copy-up ended (or never showed in the work dir) before the open")
    time.sleep(0.001)
t0 = time.perf_counter()
fd = os.open(f"{mnt}/{small}", os.O_RDONLY)
assert os.read(fd, 1) == b"s"
t1 = time.perf_counter()
os.close(fd)
done.wait()
print(f"{(t1 - t0) * 1000:.3f} {time.perf_counter() - start:.2f}")
EOF
}

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

for bin in "$@"; do
    opens='' copies=''
    for i in $(seq "$runs"); do
        rm -rf "$tmp/upper" "$tmp/work"
        mkdir -p "$tmp/upper" "$tmp/work"
        "$bin" -o "lowerdir=$tmp/lower,upperdir=$tmp/upper,workdir=$tmp/work" "$tmp/mnt"
        measure "small$i" >"$tmp/out" &
        measuring=$!
        wait "$measuring"
        measuring=''
        umount "$tmp/mnt"
        read -r ms secs <"$tmp/out"
        opens+=$ms$'\n' copies+=$secs$'\n'
    done
    printf '%s: open+read during a 1 GiB copy-up: median %s ms, max %s ms (%d runs; copy-up median %s s)\n' \
        "$bin" "$(printf %s "$opens" | median)" "$(printf %s "$opens" | sort -g | tail -1)" "$runs" \
        "$(printf %s "$copies" | median)"
done

#!/usr/bin/env bash
# Median wall time of `podman run --rm IMG true` (RUNS times, default 10, after one warm-up) with
# nestfs-overlay (release build), Debian's fuse-overlayfs and kernel overlayfs (podman's native
# driver) as the store's filesystem. As root. Each store is private, configured as
# fuse/tests/podman.rs configures its stores, in one temp dir removed at the end with every
# process and mount of it.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-10}
cargo build --release -q -p nestfs-fuse
nestfs=$PWD/target/release/nestfs-overlay
tmp=$(mktemp -d /tmp/nestfs-podman-bench-XXXXXX)

cleanup() {
    unset CONTAINERS_CONF CONTAINERS_STORAGE_CONF
    # podman's helpers (conmon, mount programs) carry the dir in their arguments or environment.
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        [ "$pid" = $$ ] && continue
        if grep -qs "$tmp" "$p/cmdline" "$p/environ"; then kill -9 "$pid" 2>/dev/null || true; fi
    done
    awk -v d="$tmp" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | xargs -r umount -l
    rm -rf "$tmp"
}
trap cleanup EXIT

bash scripts/make-busybox-image.sh "$tmp/busybox.tar"

# store NAME OVERLAY_OPTION: a private store's config files in $tmp/NAME.
store() {
    local d=$tmp/$1
    mkdir -p "$d"
    printf '[storage]\ndriver = "overlay"\ngraphroot = "%s/root"\nrunroot = "%s/run"\n[storage.options.overlay]\n%s\n' \
        "$d" "$d" "$2" >"$d/storage.conf"
    printf '%s\n' '[containers]' 'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]' \
        'netns = "none"' '[engine]' 'cgroup_manager = "cgroupfs"' 'events_logger = "file"' \
        'runtime = "runc"' "tmp_dir = \"$d/tmp\"" '[network]' "network_config_dir = \"$d/net\"" \
        >"$d/containers.conf"
}

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

store nestfs-overlay "mount_program = \"$nestfs\""
store fuse-overlayfs 'mount_program = "/usr/bin/fuse-overlayfs"'
store kernel ''
for name in nestfs-overlay fuse-overlayfs kernel; do
    export CONTAINERS_CONF=$tmp/$name/containers.conf CONTAINERS_STORAGE_CONF=$tmp/$name/storage.conf
    podman import -q "$tmp/busybox.tar" localhost/bench >/dev/null
    podman run --rm --network none localhost/bench true
    ms=$(for _ in $(seq "$runs"); do
        start=$(date +%s%N)
        podman run --rm --network none localhost/bench true
        echo $((($(date +%s%N) - start) / 1000000))
    done | median)
    echo "$name: median of $runs podman run --rm true: $ms ms"
done

#!/usr/bin/env bash
# Quick start on a fresh Debian machine, as root: installs what nestfs needs, builds and installs
# it, builds a tiny busybox image (nothing is downloaded), creates a mounted rootfs from it with
# `nestfs create` and runs a command inside. Leaves the image in place and prints how to remove it.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends fuse3 busybox-static ca-certificates >/dev/null
cargo install --quiet --locked --path . --root /usr/local
cargo install --quiet --locked --path fuse --root /usr/local

demo=${NESTFS_DEMO_DIR:-/var/tmp/nestfs-demo}
store="$demo/store"
if [ -d "$store" ]; then nestfs --store "$store" delete-store; fi
rm -rf "$demo"
mkdir -p "$demo"
bash scripts/make-busybox-image.sh "$demo/busybox.tar"

nestfs --store "$store" init-store
spec=$(nestfs --store "$store" create "$demo/busybox.tar" demo)
echo "nestfs create printed: $spec"
rootfs="$store/images/demo/rootfs"
grep " $rootfs " /proc/self/mountinfo
chroot "$rootfs" /bin/sh -c 'cat /etc/motd; echo written-in-container > /root/note; ls -l /root'
echo "the container's write landed in the upper dir: $(cat "$store/images/demo/upper/root/note")"
nestfs --store "$store" stats demo
echo "remove it with: nestfs --store $store delete demo   (or: nestfs --store $store delete-store)"

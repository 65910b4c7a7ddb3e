#!/usr/bin/env bash
# Quick start on a fresh Debian machine, as root: installs what nestfs needs, builds and installs
# it, builds a tiny busybox image (nothing is downloaded), mounts a writable rootfs of it with
# nestfs-overlay and runs a command inside. Leaves the mount up and prints how to remove it.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends fuse3 busybox-static ca-certificates >/dev/null
cargo install --quiet --locked --path fuse --root /usr/local

demo=${NESTFS_DEMO_DIR:-/var/tmp/nestfs-demo}
if grep -q " $demo/rootfs " /proc/self/mountinfo; then umount "$demo/rootfs"; fi
rm -rf "$demo"
mkdir -p "$demo"/{layer,upper,work,rootfs}
bash scripts/make-busybox-image.sh "$demo/busybox.tar"
tar --numeric-owner -xpf "$demo/busybox.tar" -C "$demo/layer"

nestfs-overlay -o "lowerdir=$demo/layer,upperdir=$demo/upper,workdir=$demo/work" "$demo/rootfs"
echo "rootfs mounted at $demo/rootfs:"
grep " $demo/rootfs " /proc/self/mountinfo
chroot "$demo/rootfs" /bin/sh -c 'cat /etc/motd; echo written-in-container > /root/note; ls -l /root'
echo "the container's write landed in the upper dir: $(cat "$demo/upper/root/note")"
echo "remove it with: umount $demo/rootfs && rm -rf $demo"

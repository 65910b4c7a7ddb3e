#!/usr/bin/env bash
# Quick start on a fresh Debian machine, as root: installs what nestfs needs, builds and installs
# it, builds a tiny busybox image (nothing is downloaded), creates a mounted rootfs from it with
# `nestfs create` and runs a command inside. Leaves the image in place and prints how to remove it.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

export DEBIAN_FRONTEND=noninteractive
say "installing fuse3 and busybox-static with apt-get"
apt-get update -qq
apt-get install -y -qq --no-install-recommends fuse3 busybox-static ca-certificates >/dev/null
say "building and installing nestfs and nestfs-overlay into /usr/local/bin (a few minutes on 2 cores)"
cargo install --locked --path . --root /usr/local
cargo install --locked --path fuse --root /usr/local

demo=${NESTFS_DEMO_DIR:-/var/tmp/nestfs-demo}
store="$demo/store"
if [ -d "$store" ]; then nestfs --store "$store" delete-store; fi
rm -rf "$demo"
mkdir -p "$demo"
say "building a busybox rootfs tarball from Debian's busybox-static: $demo/busybox.tar"
bash scripts/make-busybox-image.sh "$demo/busybox.tar"

say "nestfs --store $store init-store"
nestfs --store "$store" init-store
say "nestfs --store $store create $demo/busybox.tar demo"
spec=$(nestfs --store "$store" create "$demo/busybox.tar" demo)
echo "$spec"
rootfs="$store/images/demo/rootfs"
say "the rootfs is a FUSE mount served by the image's own daemon:"
grep " $rootfs " /proc/self/mountinfo
say "running a command inside it (chroot):"
chroot "$rootfs" /bin/sh -c 'cat /etc/motd; echo written-in-container > /root/note; ls -l /root'
echo "the container's write landed in the upper dir: $(cat "$store/images/demo/upper/root/note")"
say "nestfs --store $store stats demo"
nestfs --store "$store" stats demo
say "kill -9 of the image's daemon: its keeper starts another, the rootfs stays served"
old=$(cut -d' ' -f1 "$store/images/demo/daemon.pid")
kill -9 "$old"
chroot "$rootfs" /bin/cat /root/note
echo "daemon $old -> $(cut -d' ' -f1 "$store/images/demo/daemon.pid")"
say "done. Try next:"
cat <<EOF
  chroot $rootfs /bin/sh                          # a shell in the rootfs
  nestfs --store $store list --json               # images, their daemons and usage
  nestfs --store $store create --disk-limit-size-bytes 10000000 $demo/busybox.tar small
  bash scripts/install-test-deps.sh && cargo test --workspace   # the test suite
  nestfs --store $store delete-store              # removes every image and the store
EOF

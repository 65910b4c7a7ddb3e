#!/usr/bin/env bash
# Installs the Debian packages the test suite uses (as root): FUSE, kernel-overlay tools, the
# registry the tests start on loopback, runc for containers, busybox for the test images, podman
# (with uidmap's newuidmap/newgidmap for its rootless test) as a client of nestfs-overlay, openssl
# for the TLS registry tests, binutils (strip) for the nested images.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
echo "install-test-deps: apt-get update and install (fuse3, fuse-overlayfs, docker-registry, runc, podman, ...)" >&2
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    fuse3 fuse-overlayfs docker-registry runc attr apache2-utils busybox-static kmod \
    util-linux passwd podman uidmap slirp4netns openssl binutils >/dev/null
modprobe fuse 2>/dev/null || true
modprobe overlay 2>/dev/null || true

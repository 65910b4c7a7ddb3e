#!/usr/bin/env bash
# Builds a tiny rootfs tarball from Debian's busybox-static: the image the quick start uses.
# Usage: make-busybox-image.sh OUT.tar
set -euo pipefail
out=${1:?usage: make-busybox-image.sh OUT.tar}
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "make-busybox-image: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 755 "$root"
mkdir -p "$root"/{bin,etc,tmp,root,proc,sys,dev}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
echo "hello from a nestfs rootfs" >"$root/etc/motd"
tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$out" .

#!/bin/bash
# Harness self-check: stands in for the FUSE binary (same command line) but mounts kernel
# overlayfs with the reference options and stays in the foreground until unmounted. With
#   NESTFS_OVERLAY_BIN=fuse/tests/support/kernel-overlay-shim.sh cargo test -p nestfs-fuse -- overlay
# every overlay-format case must pass: a failure there is a bug in the tests, not in the overlay.
# (OCI-format cases fail by design: the kernel does not read `.wh.` files.)
set -eu
opts="" mnt=""
while [ $# -gt 0 ]; do
    case "$1" in
        -f) ;;
        -o) shift; opts="$1" ;;
        *) mnt="$1" ;;
    esac
    shift
done
opts="${opts//,nopassthrough/}"
mount -t overlay overlay -o "$opts,redirect_dir=off,index=off,metacopy=off,xino=off" "$mnt"
while grep -q " $mnt " /proc/self/mountinfo; do sleep 0.05; done

#!/usr/bin/env bash
# Puts Debian's vhost-user back ends in /usr/lib/qemu: virtiofsd (package qemu-system-common)
# and vhost-user-gpu (qemu-system-gui), for the vhost-user-fs and vhost-user-gpu tests.
#
# Installing the packages is tried first, with --no-remove. On a machine whose qemu-utils comes
# from bookworm-backports (10.x) while these packages come from bookworm (7.2), apt would have
# to remove qemu-utils (it Breaks qemu-system-common < 8.0; QEMU 8 dropped the C virtiofsd).
# Then the two helpers are taken out of the bookworm packages and their shared libraries are
# installed: qemu-storage-daemon stays the one qemu-utils brought.
set -euo pipefail
if [ -x /usr/lib/qemu/virtiofsd ] && [ -x /usr/lib/qemu/vhost-user-gpu ]; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if apt-get install -y -qq --no-remove qemu-system-common qemu-system-gui >/dev/null 2>&1; then
    exit 0
fi
echo "qemu-system-common/qemu-system-gui do not install beside this qemu-utils;" \
    "taking virtiofsd and vhost-user-gpu out of the packages"
apt-get install -y -qq libglib2.0-0 libseccomp2 libcap-ng0 libvirglrenderer1 libepoxy0 \
    libgbm1 libpixman-1-0 >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -qq qemu-system-common qemu-system-gui)
for deb in "$work"/*.deb; do
    dpkg-deb -x "$deb" "$work/root"
done
install -d /usr/lib/qemu
for helper in virtiofsd vhost-user-gpu; do
    install -m 0755 "$work/root/usr/lib/qemu/$helper" "/usr/lib/qemu/$helper"
    if ldd "/usr/lib/qemu/$helper" | grep -q "not found"; then
        echo "/usr/lib/qemu/$helper lacks a library:" >&2
        ldd "/usr/lib/qemu/$helper" | grep "not found" >&2
        exit 1
    fi
done

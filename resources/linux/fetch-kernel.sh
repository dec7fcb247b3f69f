#!/usr/bin/env bash
# Fetch Debian's cloud kernel and produce, in an output directory:
#   vmlinux  - the uncompressed ELF64 x86-64 kernel (boots via 64-bit direct entry)
#   bzImage  - the original vmlinuz (a bzImage, boot protocol >= 2.06)
#   version  - the kernel release string, e.g. 6.1.0-48-cloud-amd64
#
# Usage: resources/linux/fetch-kernel.sh [OUT_DIR]
#   OUT_DIR defaults to resources/linux/out under the repository root.
#   FORCE=1 re-fetches even if valid outputs already exist.
#
# The kernel package is NOT installed (that would run initramfs and bootloader
# hooks on this machine): the versioned image package that the metapackage
# linux-image-cloud-amd64 depends on is downloaded with `apt-get download` and
# unpacked with `dpkg-deb -x` into a temporary directory. The vmlinuz payload is
# LZ4 (legacy frame); vmlinux is recovered by finding the LZ4 legacy magic
# (02 21 4c 18) and decompressing from there.
#
# Missing tools (lz4, readelf from binutils) are installed with apt-get; root is
# required for that and for `apt-get update`, which runs only if the package
# cannot be found in the current package lists.
#
# On success the script prints the absolute paths of vmlinux and bzImage, one a
# line, on stdout. Progress messages go to stderr.
set -euo pipefail

META_PKG="linux-image-cloud-amd64"

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/../.." && pwd)"
out_dir="${1:-$repo_root/resources/linux/out}"

log() { printf 'fetch-kernel: %s\n' "$*" >&2; }
die() { printf 'fetch-kernel: error: %s\n' "$*" >&2; exit 1; }

apt_updated=0
apt_update_once() {
    if [[ $apt_updated -eq 0 ]]; then
        log "running apt-get update"
        apt-get update -qq >&2 || die "apt-get update failed"
        apt_updated=1
    fi
}

# ensure_tool COMMAND DEBIAN_PACKAGE
ensure_tool() {
    local cmd="$1" pkg="$2"
    if ! command -v "$cmd" >/dev/null 2>&1; then
        log "installing $pkg (for $cmd)"
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >&2; then
            apt_update_once
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >&2 \
                || die "could not install $pkg"
        fi
        command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after installing $pkg"
    fi
}

# is_valid_vmlinux FILE: an ELF64 x86-64 executable, not truncated (the file
# holds every PT_LOAD segment's bytes and the section header table).
is_valid_vmlinux() {
    local f="$1" hdr size shoff shnum shentsize need
    [[ -s "$f" ]] || return 1
    hdr="$(LC_ALL=C readelf -lhW "$f" 2>/dev/null)" || return 1
    grep -Eq '^[[:space:]]*Class:[[:space:]]+ELF64$' <<<"$hdr" || return 1
    grep -Eq '^[[:space:]]*Type:[[:space:]]+EXEC' <<<"$hdr" || return 1
    grep -Eq '^[[:space:]]*Machine:[[:space:]]+Advanced Micro Devices X86-64$' <<<"$hdr" || return 1
    size="$(stat -c %s "$f")"
    shoff="$(sed -nE 's/^[[:space:]]*Start of section headers:[[:space:]]+([0-9]+).*/\1/p' <<<"$hdr")"
    shnum="$(sed -nE 's/^[[:space:]]*Number of section headers:[[:space:]]+([0-9]+).*/\1/p' <<<"$hdr")"
    shentsize="$(sed -nE 's/^[[:space:]]*Size of section headers:[[:space:]]+([0-9]+).*/\1/p' <<<"$hdr")"
    [[ -n "$shoff" && -n "$shnum" && -n "$shentsize" ]] || return 1
    (( size >= shoff + shnum * shentsize )) || return 1
    # With -W each program header is one line:
    #   LOAD 0xOFFSET 0xVADDR 0xPADDR 0xFILESZ 0xMEMSZ FLAGS 0xALIGN
    local typ off _va _pa filesz _rest
    need=0
    while read -r typ off _va _pa filesz _rest; do
        [[ "$typ" == LOAD ]] || continue
        (( off + filesz > need )) && need=$(( off + filesz ))
    done <<<"$hdr"
    (( need > 0 && size >= need ))
}

# read_le FILE OFFSET BYTES: a little-endian unsigned integer from FILE.
read_le() {
    local hex="" b
    for b in $(od -An -tx1 -v -j "$2" -N "$3" "$1"); do hex="$b$hex"; done
    [[ -n "$hex" ]] || return 1
    echo "$((16#$hex))"
}

# is_valid_bzimage FILE: boot sector signature 0xAA55 at 0x1FE, "HdrS" at
# 0x202, and the file holds the setup sectors plus syssize (0x1F4, in 16-byte
# units) of protected-mode code.
is_valid_bzimage() {
    local f="$1" sig magic setup_sects syssize
    [[ -s "$f" ]] || return 1
    sig="$(od -An -tx1 -j 510 -N 2 "$f" | tr -d ' \n')"
    magic="$(od -An -c -j 514 -N 4 "$f" | tr -d ' \n')"
    [[ "$sig" == "55aa" && "$magic" == "HdrS" ]] || return 1
    setup_sects="$(read_le "$f" $((0x1f1)) 1)" || return 1
    ((setup_sects == 0)) && setup_sects=4
    syssize="$(read_le "$f" $((0x1f4)) 4)" || return 1
    (( $(stat -c %s "$f") >= (setup_sects + 1) * 512 + syssize * 16 ))
}

print_paths() {
    printf '%s\n' "$out_dir/vmlinux" "$out_dir/bzImage"
}

ensure_tool readelf binutils

if [[ "${FORCE:-0}" != 1 ]] && is_valid_vmlinux "$out_dir/vmlinux" && is_valid_bzimage "$out_dir/bzImage"; then
    log "valid vmlinux and bzImage already in $out_dir ($(cat "$out_dir/version" 2>/dev/null || echo 'version unknown'))"
    out_dir="$(cd "$out_dir" && pwd)"
    print_paths
    exit 0
fi

ensure_tool lz4 lz4
ensure_tool dpkg-deb dpkg
ensure_tool apt-get apt

# Find the versioned image package (e.g. linux-image-6.1.0-48-cloud-amd64) that
# the metapackage's candidate version depends on.
find_image_pkg() {
    LC_ALL=C apt-cache depends "$META_PKG" 2>/dev/null \
        | sed -nE 's/^[[:space:]]*Depends:[[:space:]]*(linux-image-[^[:space:]<>]+).*/\1/p' \
        | head -n1
}

image_pkg="$(find_image_pkg || true)"
if [[ -z "$image_pkg" ]]; then
    apt_update_once
    image_pkg="$(find_image_pkg || true)"
fi
[[ -n "$image_pkg" ]] || die "cannot find the image package that $META_PKG depends on"
log "image package: $image_pkg"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/fetch-kernel.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

download() {
    # Download as the invoking user into $tmp: the _apt sandbox user could not
    # write to a mktemp directory, so switch the sandbox off for this call.
    (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$image_pkg" >&2)
}
if ! download; then
    apt_update_once
    download || die "apt-get download $image_pkg failed"
fi

deb="$(find "$tmp" -maxdepth 1 -name '*.deb' -print -quit)"
[[ -n "$deb" ]] || die "no .deb downloaded for $image_pkg"
log "downloaded $(basename "$deb")"

dpkg-deb -x "$deb" "$tmp/root"
vmlinuz="$(find "$tmp/root/boot" -maxdepth 1 -name 'vmlinuz-*' -print -quit)"
[[ -n "$vmlinuz" ]] || die "no boot/vmlinuz-* in $(basename "$deb")"
kver="${vmlinuz##*/vmlinuz-}"
is_valid_bzimage "$vmlinuz" || die "$vmlinuz is not a bzImage"
log "kernel: $kver"

# Recover vmlinux: try every offset of the LZ4 legacy magic until one
# decompresses to a valid ELF. lz4 reports an error on the data that follows
# the compressed stream (trailing bytes of the bzImage); that is expected and
# ignored when the output is a valid ELF.
mapfile -t offsets < <(LC_ALL=C grep -obUaP '\x02\x21\x4c\x18' "$vmlinuz" | cut -d: -f1)
[[ ${#offsets[@]} -gt 0 ]] || die "no LZ4 legacy magic (02 21 4c 18) in $vmlinuz; not an LZ4 kernel?"

found=""
for off in "${offsets[@]}"; do
    tail -c +"$((off + 1))" "$vmlinuz" > "$tmp/payload.lz4"
    lz4 -dc "$tmp/payload.lz4" > "$tmp/vmlinux" 2>"$tmp/lz4.err" || true
    if is_valid_vmlinux "$tmp/vmlinux"; then
        found="$off"
        break
    fi
done
[[ -n "$found" ]] || die "no LZ4 stream in $vmlinuz decompressed to an ELF64 x86-64 executable"
log "LZ4 payload at offset $found, vmlinux $(stat -c %s "$tmp/vmlinux") bytes"

mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
# Move into place atomically (same filesystem: copy to a temp name first).
cp "$tmp/vmlinux" "$out_dir/.vmlinux.tmp" && mv -f "$out_dir/.vmlinux.tmp" "$out_dir/vmlinux"
cp "$vmlinuz" "$out_dir/.bzImage.tmp" && mv -f "$out_dir/.bzImage.tmp" "$out_dir/bzImage"
printf '%s\n' "$kver" > "$out_dir/version"

is_valid_vmlinux "$out_dir/vmlinux" || die "written vmlinux is not valid"
is_valid_bzimage "$out_dir/bzImage" || die "written bzImage is not valid"
print_paths

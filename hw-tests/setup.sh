#!/usr/bin/env bash
# Fetches the QEMU lab's inputs from Debian's package registry, idempotently.
#
# - host tools (apt): qemu-system-x86 from bookworm-backports (igb needs QEMU >= 8),
#   busybox-static, kmod (depmod), e2fsprogs (the lab's data disk), cpio, zstd, and
#   iproute2 and ethtool for the tests that build networks in namespaces;
# - the backports kernel image package, resolved by name (linux-image-amd64 ->
#   linux-image-<version>-amd64), unpacked under the cache with a modules.dep that
#   depmod generates (the package ships none: dpkg's postinst normally makes it).
#
# Everything lands under $HOSTD_LAB_CACHE (default ~/.cache/hostd-lab), which this
# script owns. It ends by writing $HOSTD_LAB_CACHE/inputs.toml, the manifest that
# `initramfs` and `hw-qemu` read. Nothing is downloaded outside Debian's archive.
set -euo pipefail

CACHE=${HOSTD_LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hostd-lab}
BACKPORTS_LIST=/etc/apt/sources.list.d/bookworm-backports.sources
export DEBIAN_FRONTEND=noninteractive

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: it installs Debian packages (apt-get)"

ensure_backports() {
    if ! apt-cache policy 2>/dev/null | grep -q 'bookworm-backports'; then
        log "adding the bookworm-backports suite to apt's sources ($BACKPORTS_LIST)"
        cat >"$BACKPORTS_LIST" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        apt-get update -q >/dev/null
    fi
}

qemu_major() {
    command -v qemu-system-x86_64 >/dev/null || { echo 0; return; }
    qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p'
}

ensure_host_tools() {
    local missing=()
    # busybox must be the static build: it runs alone inside the initramfs.
    dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
    command -v depmod >/dev/null || missing+=(kmod)
    command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
    command -v cpio >/dev/null || missing+=(cpio)
    command -v zstd >/dev/null || missing+=(zstd)
    # Network-namespace tests (hw-tests loopback, fastpath veth).
    command -v ip >/dev/null || missing+=(iproute2)
    command -v ethtool >/dev/null || missing+=(ethtool)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if [ "$(qemu_major)" -lt 8 ]; then
        log "installing qemu-system-x86 from bookworm-backports"
        apt-get install -y -q --no-install-recommends -t bookworm-backports \
            qemu-system-x86 ipxe-qemu >/dev/null
    fi
    [ "$(qemu_major)" -ge 8 ] || die "qemu-system-x86_64 is older than 8 (no igb device); install it from bookworm-backports"
}

# Resolves linux-image-amd64 in backports to its concrete versioned package.
kernel_package() {
    apt-cache depends -t bookworm-backports linux-image-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n 1
}

ensure_kernel() {
    local pkg version kver dir download
    pkg=$(kernel_package)
    [ -n "$pkg" ] || die "cannot resolve linux-image-amd64 in bookworm-backports (apt-get update?)"
    version=$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')
    kver=${pkg#linux-image-}
    dir="$CACHE/kernel/$kver"
    if [ ! -f "$dir/.complete" ]; then
        log "fetching $pkg $version"
        rm -rf "$dir"
        mkdir -p "$dir"
        # apt downloads as its sandbox user, who cannot enter root's home: use a
        # directory of its own.
        download=$(mktemp -d)
        chown _apt "$download"
        (cd "$download" && apt-get download -q "$pkg=$version" >/dev/null)
        dpkg-deb -x "$download/$pkg"_*.deb "$dir/root"
        rm -rf "$download"
        depmod -b "$dir/root" "$kver"
        cp "$dir/root/boot/vmlinuz-$kver" "$dir/vmlinuz"
        echo "$pkg $version" >"$dir/package"
        touch "$dir/.complete"
    fi
    KERNEL_VERSION=$kver
    KERNEL_PACKAGE="$pkg $version"
    KERNEL_DIR=$dir
}

write_manifest() {
    local busybox
    busybox=$(dpkg -L busybox-static | grep -m1 '/busybox$')
    cat >"$CACHE/inputs.toml.tmp" <<TOML
# Written by hw-tests/setup.sh; read by initramfs and hw-qemu.
kernel_version = "$KERNEL_VERSION"
kernel_package = "$KERNEL_PACKAGE"
vmlinuz = "$KERNEL_DIR/vmlinuz"
modules_dir = "$KERNEL_DIR/root/lib/modules/$KERNEL_VERSION"
busybox = "$busybox"
qemu = "$(command -v qemu-system-x86_64)"
mkfs_ext4 = "$(command -v mkfs.ext4)"
TOML
    mv "$CACHE/inputs.toml.tmp" "$CACHE/inputs.toml"
}

mkdir -p "$CACHE"
ensure_backports
ensure_host_tools
ensure_kernel
write_manifest
log "ready: $CACHE/inputs.toml (kernel $KERNEL_VERSION, $(qemu-system-x86_64 --version | head -n 1))"

#!/usr/bin/env bash
# Plain-cargo cross builds for the arm targets, no Docker needed:
#   scripts/cross.sh TARGET CARGO-SUBCOMMAND [ARGS...]
#   scripts/cross.sh aarch64-unknown-linux-gnu build --release -p kedge-agent
#   scripts/cross.sh armv7-unknown-linux-gnueabihf test -p kedge-common --lib
# Installs (as root) Debian's cross gcc and qemu-user-static, adds the rustup
# target, fetches the target's libseccomp (a Debian -dev package unpacked into
# target/cross-sysroot/, no multiarch install) and links it statically, then
# runs cargo with --target. Linkers and qemu runners are in .cargo/config.toml,
# so `test` and `run` execute under qemu-user.
# With Docker or Podman, `cross` does the same from Cross.toml instead.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
[ $# -ge 2 ] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
target=$1; shift

case $target in
    aarch64-unknown-linux-gnu)     deb_arch=arm64 triple=aarch64-linux-gnu   qemu=qemu-aarch64-static gcc=gcc-aarch64-linux-gnu ;;
    armv7-unknown-linux-gnueabihf) deb_arch=armhf triple=arm-linux-gnueabihf qemu=qemu-arm-static     gcc=gcc-arm-linux-gnueabihf ;;
    x86_64-unknown-linux-gnu)      sub=$1; shift; exec cargo "$sub" --target "$target" "$@" ;;
    *-musl*)
        echo "error: $target: Debian has no musl cross compiler for libseccomp; build it with" \
             "\`cross build --target $target\` (Cross.toml builds libseccomp for musl)" >&2
        exit 2 ;;
    *) echo "error: unsupported target $target (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf)" >&2; exit 2 ;;
esac

# shellcheck source=packages.sh
. scripts/packages.sh
ensure_packages "${BUILD_PACKAGES[@]}" "$gcc" qemu-user-static

if command -v rustup >/dev/null && ! rustup target list --installed | grep -x "$target" >/dev/null; then
    rustup target add "$target"
fi

# The target's libseccomp.a, from Debian's libseccomp-dev for that architecture.
sysroot=$repo/target/cross-sysroot/$deb_arch
libdir=$sysroot/usr/lib/$triple
if [ ! -f "$libdir/libseccomp.a" ]; then
    if ! dpkg --print-foreign-architectures | grep -x "$deb_arch" >/dev/null; then
        [ "$(id -u)" -eq 0 ] || { echo "error: run as root once: dpkg --add-architecture $deb_arch && apt-get update" >&2; exit 1; }
        dpkg --add-architecture "$deb_arch"
        # A mirror mid-sync may fail one index (e.g. security); the main one suffices.
        apt-get update -qq || echo "warning: apt-get update reported errors; trying the download anyway" >&2
    fi
    dl=$(mktemp -d)
    chmod 0777 "$dl"   # apt's _apt user downloads into it
    (cd "$dl" && apt-get download -q "libseccomp-dev:$deb_arch" >/dev/null) || true
    deb=$(ls "$dl"/libseccomp-dev_*.deb 2>/dev/null | head -1)
    [ -n "$deb" ] || { echo "error: could not download libseccomp-dev:$deb_arch" >&2; exit 1; }
    mkdir -p "$sysroot"
    dpkg -x "$deb" "$sysroot"
    rm -rf "$dl"
    [ -f "$libdir/libseccomp.a" ] || { echo "error: $deb has no $libdir/libseccomp.a" >&2; exit 1; }
fi

export LIBSECCOMP_LIB_PATH=$libdir LIBSECCOMP_LINK_TYPE=static
command -v "$qemu" >/dev/null || echo "note: $qemu missing: binaries build but cannot run here" >&2
# --target right after the subcommand: anything after `--` is not cargo's.
sub=$1; shift
exec cargo "$sub" --target "$target" "$@"

#!/bin/sh
# Builds a static libseccomp for a cross target into PREFIX/lib/libseccomp.a.
#   build-libseccomp.sh VERSION HOST-TRIPLE CC PREFIX
#   build-libseccomp.sh 2.5.5 aarch64-linux-musl aarch64-linux-musl-gcc /opt/libseccomp
# Used by cross/Dockerfile; libseccomp's configure needs gperf and make.
set -eu
version=$1 host=$2 cc=$3 prefix=$4
[ -n "$host" ] && [ -n "$cc" ] || { echo "build-libseccomp.sh: HOST and CC are required" >&2; exit 2; }
command -v "$cc" >/dev/null || { echo "build-libseccomp.sh: compiler $cc not found in this image" >&2; exit 1; }
work=$(mktemp -d)
cd "$work"
curl -fsSL -o libseccomp.tar.gz \
    "https://github.com/seccomp/libseccomp/releases/download/v${version}/libseccomp-${version}.tar.gz"
tar -xzf libseccomp.tar.gz
cd "libseccomp-${version}"
./configure --host="$host" CC="$cc" --prefix="$prefix" --enable-static --disable-shared --disable-python >/dev/null
make -j"$(nproc)" >/dev/null
make install >/dev/null
test -f "$prefix/lib/libseccomp.a"
cd /
rm -rf "$work"
echo "libseccomp ${version} for ${host}: $prefix/lib/libseccomp.a"

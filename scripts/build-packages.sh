#!/usr/bin/env bash
# Release builds and .deb packages for every supported device:
#   kedge-agent       amd64, arm64, armhf
#   kedge-controller  amd64, arm64
# into target/debian/. The arm builds go through scripts/cross.sh (plain
# cargo, Debian's cross gcc). Prints each package and its binary's size.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
host=$(dpkg --print-architecture)
out=${CARGO_TARGET_DIR:-$repo/target}
[ "$host" = amd64 ] || { echo "error: run this on an amd64 build machine (this is $host)" >&2; exit 1; }

# Each binary built alone: built together, cargo unifies their dependencies'
# features, and the controller's make the agent 330 KB bigger.
cargo build --release --locked -p kedge-agent
cargo build --profile release-controller --locked -p kedge-controller
scripts/cross.sh aarch64-unknown-linux-gnu build --release --locked -p kedge-agent
scripts/cross.sh aarch64-unknown-linux-gnu build --profile release-controller --locked -p kedge-controller
scripts/cross.sh armv7-unknown-linux-gnueabihf build --release --locked -p kedge-agent

for spec in "kedge-agent amd64 $out/release" \
            "kedge-agent arm64 $out/aarch64-unknown-linux-gnu/release" \
            "kedge-agent armhf $out/armv7-unknown-linux-gnueabihf/release" \
            "kedge-controller amd64 $out/release-controller" \
            "kedge-controller arm64 $out/aarch64-unknown-linux-gnu/release-controller"; do
    read -r pkg arch dir <<<"$spec"
    deb=$(scripts/package-deb.sh "$pkg" "$arch" "$dir/$pkg")
    printf '%-60s binary %8d bytes\n' "$deb" "$(stat -c %s "$dir/$pkg")"
done

#!/usr/bin/env bash
# Builds the .deb of a kedge binary with dpkg-deb (no debhelper needed):
#   scripts/package-deb.sh PACKAGE DEB-ARCH BINARY [OUT-DIR]
#   scripts/package-deb.sh kedge-agent arm64 target/aarch64-unknown-linux-gnu/release/kedge-agent
# PACKAGE is kedge-agent or kedge-controller; DEB-ARCH is amd64, arm64 or
# armhf (the controller: amd64 or arm64). Writes
# OUT-DIR/PACKAGE_VERSION_DEB-ARCH.deb (default OUT-DIR: target/debian) with
#   /usr/bin/PACKAGE, /lib/systemd/system/PACKAGE.service,
#   the default config (/etc/kedge/agent.yaml or /etc/kedge/controller.env,
#   a conffile) and /var/lib/kedge/{agent,controller}.
# The binary's ELF machine must match DEB-ARCH. The output is reproducible
# (SOURCE_DATE_EPOCH, default: the last commit's time). KEDGE_DEB_COMPRESSION
# (default xz) is passed to dpkg-deb -Z.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -ge 3 ] || { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
pkg=$1 arch=$2 bin=$3 out=${4:-$repo/target/debian}

case $pkg in
    kedge-agent)      role=agent config=agent.yaml
                      # nft loads the Service rules; conntrack clears UDP flows
                      # to endpoints that went away.
                      depends="libc6 (>= 2.34), nftables, conntrack"
                      # After the service stopped: the bridge, veths, routes, VXLAN
                      # device and the kedge nftables table go (nothing else).
                      cleanup="/usr/bin/kedge-agent network cleanup || true"
                      summary="kedge node agent: pods on libcontainer, fleet link over MQTT"
                      long=" Runs the pods a kedge controller assigns to this node (over MQTT) and
 static pods from /etc/kedge/manifests, directly through youki's libcontainer,
 and keeps running them while the controller is unreachable, even after a
 reboot. Configure the broker and node name in /etc/kedge/agent.yaml." ;;
    kedge-controller) role=controller config=controller.env
                      depends="libc6 (>= 2.34)" cleanup=":"
                      summary="kedge controller: Kubernetes API, control loops, MQTT broker"
                      long=" The control plane of a kedge cluster: a Kubernetes-compatible API server
 for kubectl, a redb store, the scheduler and controllers, and an embedded
 MQTT broker the node agents connect to. Flags go in /etc/kedge/controller.env."
                      [ "$arch" = armhf ] && { echo "error: the controller is packaged for amd64 and arm64 only" >&2; exit 2; } ;;
    *) echo "error: unknown package $pkg (kedge-agent or kedge-controller)" >&2; exit 2 ;;
esac
case $arch in
    amd64) machine="X86-64" ;;
    arm64) machine="AArch64" ;;
    armhf) machine="ARM" ;;
    *) echo "error: unsupported architecture $arch (amd64, arm64, armhf)" >&2; exit 2 ;;
esac
[ -x "$bin" ] || { echo "error: $bin is not an executable file" >&2; exit 1; }
got=$(LC_ALL=C readelf -h "$bin" | sed -n 's/^ *Machine: *//p')
[[ $got == *"$machine"* ]] || { echo "error: $bin is built for '$got', not $arch" >&2; exit 1; }
if [ "$arch" = armhf ] && ! LC_ALL=C readelf -A "$bin" | grep 'Tag_ABI_VFP_args: VFP registers' >/dev/null; then
    echo "error: $bin is not a hard-float (armhf) binary" >&2; exit 1
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
install -D -m 0755 "$bin" "$root/usr/bin/$pkg"
install -D -m 0644 "$repo/deploy/systemd/$pkg.service" "$root/lib/systemd/system/$pkg.service"
# The agent's config may hold the broker password.
mode=0644; [ "$role" = agent ] && mode=0600
install -D -m "$mode" "$repo/deploy/etc/$config" "$root/etc/kedge/$config"
[ "$role" = agent ] && install -d -m 0755 "$root/etc/kedge/manifests"
install -d -m 0700 "$root/var/lib/kedge/$role"
install -d "$root/usr/share/doc/$pkg"
printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: kedge\n\nFiles: *\nCopyright: kedge developers\nLicense: Apache-2.0\n On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n' \
    > "$root/usr/share/doc/$pkg/copyright"

mkdir -p "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: kedge developers <kedge@example.invalid>
Section: admin
Priority: optional
Installed-Size: $size
Depends: $depends
Homepage: https://example.invalid/kedge
Description: $summary
$long
CONTROL
echo "/etc/kedge/$config" > "$root/DEBIAN/conffiles"
# systemd only where it runs (not in chroots, image builds or containers).
cat > "$root/DEBIAN/postinst" <<POSTINST
#!/bin/sh
set -e
if [ "\$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable $pkg.service >/dev/null
    systemctl restart $pkg.service
fi
POSTINST
cat > "$root/DEBIAN/prerm" <<PRERM
#!/bin/sh
set -e
if [ "\$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop $pkg.service || true
    systemctl disable $pkg.service >/dev/null || true
fi
if [ "\$1" = remove ]; then
    $cleanup
fi
PRERM
cat > "$root/DEBIAN/postrm" <<POSTRM
#!/bin/sh
set -e
[ -d /run/systemd/system ] && systemctl daemon-reload || true
# Purge keeps /var/lib/kedge/$role: it holds the node's images and pod state
# (and, for the agent, containers that may still run). Remove it by hand.
POSTRM
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

mkdir -p "$out"
deb=$out/${pkg}_${version}_${arch}.deb
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
dpkg-deb --root-owner-group "-Z${KEDGE_DEB_COMPRESSION:-xz}" --build "$root" "$deb" >/dev/null
echo "$deb"

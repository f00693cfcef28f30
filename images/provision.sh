#!/usr/bin/env bash
# Writes a kedge agent's first-boot config onto the FAT boot partition of a
# Raspberry Pi OS (or any MBR/GPT) disk image file, before it is flashed.
# No mounting and no root needed: sfdisk finds the partition, mtools writes it.
#
#   images/provision.sh IMAGE --node-name NAME --broker mqtts://HOST:PORT --broker-ca FILE \
#       --token-file FILE [--username USER] [--password-file FILE] [--set KEY=VALUE]... [--deb FILE.deb]
#
#   IMAGE            the .img file (uncompressed), e.g. 2025-05-13-raspios-bookworm-arm64-lite.img
#   --token-file     the join token (or $KEDGE_TOKEN): `kedge-controller token create` prints one
#   --broker-ca      the CA of an mqtts:// broker (the controller's DATA/tls/ca.crt for
#                    its embedded one): put on the boot partition as kedge-broker-ca.crt
#   --password-file  the broker password (or $KEDGE_BROKER_PASSWORD); never on the command line
#   --set KEY=VALUE  any other `kedge-agent run` flag, e.g. --set node-ip=192.168.1.27
#   --deb FILE       also put the agent package on the boot partition with a
#                    one-shot first-boot hook that installs it (as Raspberry Pi
#                    Imager does with firstrun.sh), for images without kedge
#
# The config lands as kedge-agent.yaml at the partition's root
# (/boot/firmware/kedge-agent.yaml once booted). The agent moves it to
# /etc/kedge/agent.yaml on its first start and removes it from the boot
# partition, which anyone holding the SD card can read. Running this again
# replaces the file: it is idempotent.
set -euo pipefail
usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
image=$1; shift
node= broker= user= passfile= deb= tokenfile= ca=
sets=()
while [ $# -gt 0 ]; do
    case $1 in
        --node-name) node=${2:?}; shift 2 ;;
        --broker) broker=${2:?}; shift 2 ;;
        --broker-ca) ca=${2:?}; shift 2 ;;
        --username) user=${2:?}; shift 2 ;;
        --password-file) passfile=${2:?}; shift 2 ;;
        --token-file) tokenfile=${2:?}; shift 2 ;;
        --set) sets+=("${2:?}"); shift 2 ;;
        --deb) deb=${2:?}; shift 2 ;;
        -h|--help) usage ;;
        *) echo "error: unknown argument $1" >&2; usage ;;
    esac
done
[ -f "$image" ] || { echo "error: $image is not a file" >&2; exit 1; }
[ -n "$node" ] || { echo "error: --node-name is required" >&2; exit 2; }
[[ $node =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]] \
    || { echo "error: node name '$node' is not a DNS label (lower case letters, digits, '-')" >&2; exit 2; }
[[ $broker =~ ^mqtts?://[^/[:space:]]+$ ]] || { echo "error: --broker must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT], got '$broker'" >&2; exit 2; }
if [ -n "$ca" ]; then
    [[ $broker == mqtts://* ]] || { echo "error: --broker-ca is for TLS: use an mqtts:// broker" >&2; exit 2; }
    grep -q 'BEGIN CERTIFICATE' "$ca" 2>/dev/null || { echo "error: --broker-ca $ca holds no PEM certificate" >&2; exit 2; }
fi
for t in sfdisk mcopy mtype; do
    command -v "$t" >/dev/null || { echo "error: $t is missing (apt-get install fdisk mtools)" >&2; exit 1; }
done
password=${KEDGE_BROKER_PASSWORD:-}
if [ -n "$passfile" ]; then password=$(cat "$passfile"); fi
if [ -n "$password" ] && [ -z "$user" ]; then echo "error: a password needs --username" >&2; exit 2; fi
token=${KEDGE_TOKEN:-}
if [ -n "$tokenfile" ]; then token=$(tr -d '[:space:]' < "$tokenfile"); fi
[ -n "$token" ] || { echo "error: a join token is required (--token-file or \$KEDGE_TOKEN; make one with kedge-controller token create)" >&2; exit 2; }
[[ $token =~ ^kedge1\.[A-Za-z0-9_-]{43}\.[a-z0-9]{6}\.[a-z0-9]{16}$ ]] \
    || { echo "error: the join token is not one kedge-controller token create prints (kedge1.KEY.ID.SECRET)" >&2; exit 2; }

# The boot partition: the first FAT one (MBR types 0x0b/0x0c/0x0e/0x06/0xef,
# or GPT's basic-data/EFI types), as byte offset for mtools' IMAGE@@OFFSET.
offset=$(sfdisk --json "$image" | python3 -c '
import json, sys
t = json.load(sys.stdin)["partitiontable"]
fat = {"b", "c", "e", "6", "ef", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"}
for p in t.get("partitions", []):
    if p["type"].upper() in {x.upper() for x in fat}:
        print(p["start"] * t.get("sectorsize", 512)); break
') || true
[ -n "$offset" ] || { echo "error: $image has no FAT boot partition in its partition table" >&2; exit 1; }
img="$image@@$offset"
mdir -i "$img" ::/ >/dev/null 2>&1 || { echo "error: the partition at byte $offset of $image is not a FAT file system" >&2; exit 1; }

q() { local s=${1//\'/\'\'}; printf "'%s'" "$s"; }   # YAML single-quoted scalar
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
{
    echo "# kedge-agent first-boot config, written by images/provision.sh."
    echo "# Moved to /etc/kedge/agent.yaml by the agent on its first start."
    echo "node-name: $(q "$node")"
    echo "broker: $(q "$broker")"
    echo "token: $(q "$token")"
    [ -n "$ca" ] && echo "broker-ca: '/boot/firmware/kedge-broker-ca.crt'"
    [ -n "$user" ] && echo "broker-username: $(q "$user")"
    [ -n "$password" ] && echo "broker-password: $(q "$password")"
    for kv in "${sets[@]}"; do
        [[ $kv == *=* ]] || { echo "error: --set wants KEY=VALUE, got '$kv'" >&2; exit 2; }
        echo "${kv%%=*}: $(q "${kv#*=}")"
    done
} > "$tmp/kedge-agent.yaml"
mcopy -o -i "$img" "$tmp/kedge-agent.yaml" ::/kedge-agent.yaml
# The CA is public; it stays on the boot partition, where the config names it.
[ -z "$ca" ] || mcopy -o -i "$img" "$ca" ::/kedge-broker-ca.crt
cmp -s <(mtype -i "$img" ::/kedge-agent.yaml) "$tmp/kedge-agent.yaml" \
    || { echo "error: reading kedge-agent.yaml back from $image gave different bytes" >&2; exit 1; }
echo "wrote kedge-agent.yaml (node $node, broker $broker) to the boot partition of $image"

if [ -n "$deb" ]; then
    [ -f "$deb" ] || { echo "error: $deb is not a file" >&2; exit 1; }
    mcopy -o -i "$img" "$deb" ::/kedge-agent.deb
    cat > "$tmp/kedge-firstrun.sh" <<'HOOK'
#!/bin/sh
# One-shot: installs the kedge agent package from the boot partition, then
# removes itself from the kernel command line (written by images/provision.sh).
set -e
boot=/boot/firmware; [ -d "$boot" ] || boot=/boot
dpkg -i "$boot/kedge-agent.deb" && rm -f "$boot/kedge-agent.deb"
sed -i 's| systemd.run=[^ ]*kedge-firstrun.sh[^ ]*||; s| systemd.run_success_action=reboot||; s| systemd.unit=kernel-command-line.target||' "$boot/cmdline.txt"
rm -f "$boot/kedge-firstrun.sh"
exit 0
HOOK
    mcopy -o -i "$img" "$tmp/kedge-firstrun.sh" ::/kedge-firstrun.sh
    if mtype -i "$img" ::/cmdline.txt > "$tmp/cmdline.txt" 2>/dev/null; then
        if ! grep -q 'kedge-firstrun.sh' "$tmp/cmdline.txt"; then
            line=$(head -1 "$tmp/cmdline.txt" | tr -d '\r\n')
            printf '%s systemd.run=/boot/firmware/kedge-firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target\n' "$line" > "$tmp/cmdline.txt"
            mcopy -o -i "$img" "$tmp/cmdline.txt" ::/cmdline.txt
        fi
        echo "added $deb and a first-boot hook (cmdline.txt systemd.run=) that installs it"
    else
        echo "warning: no cmdline.txt on the boot partition: copied $deb there, install it by hand" >&2
    fi
fi

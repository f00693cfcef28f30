#!/bin/sh
# Installs (or re-configures) the kedge agent on a Raspberry Pi or any Debian
# device. Idempotent: running it again with the same arguments changes nothing;
# with new ones it updates the config and restarts the agent.
#
#   sudo ./install.sh --broker mqtts://controller.lan:8883 --broker-ca ca.crt [--token-file F] \
#        [--node-name pi-7] [--deb kedge-agent_0.1.0_arm64.deb] [--username U --password-file F]
#
#   --token-file F    the join token (or $KEDGE_TOKEN; `kedge-controller token
#                     create` prints one); needed once, the agent keeps the
#                     controller key it pins
#   --deb FILE        install or upgrade this package (default: the
#                     kedge-agent_*_ARCH.deb next to this script, if any;
#                     otherwise kedge-agent must already be installed)
#   --node-name NAME  default: this machine's host name
#   --broker-ca FILE  the CA of an mqtts:// broker (the controller's
#                     DATA/tls/ca.crt for its embedded one), copied to
#                     /etc/kedge/broker-ca.crt; default: the system's roots
#   --password-file   broker password (or $KEDGE_BROKER_PASSWORD)
#   --root DIR        install into DIR instead of / (image building, tests):
#                     unpacks the package there, no systemd
# Sets broker, node-name and the credentials in /etc/kedge/agent.yaml (other
# settings there are kept), then enables and (re)starts kedge-agent.service.
set -eu
usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
broker= node= deb= user= passfile= root= tokenfile= ca=
while [ $# -gt 0 ]; do
    case $1 in
        --broker) broker=${2:?}; shift 2 ;;
        --broker-ca) ca=${2:?}; shift 2 ;;
        --node-name) node=${2:?}; shift 2 ;;
        --deb) deb=${2:?}; shift 2 ;;
        --username) user=${2:?}; shift 2 ;;
        --password-file) passfile=${2:?}; shift 2 ;;
        --token-file) tokenfile=${2:?}; shift 2 ;;
        --root) root=${2:?}; shift 2 ;;
        -h|--help) usage ;;
        *) echo "install.sh: unknown argument $1" >&2; usage ;;
    esac
done
fail() { echo "install.sh: $*" >&2; exit 1; }
case $broker in mqtt://?*|mqtts://?*) ;; *) fail "--broker mqtt://HOST[:PORT] or mqtts://HOST[:PORT] is required" ;; esac
case $broker in mqtts://*) ;; *) [ -z "$ca" ] || fail "--broker-ca is for TLS: use an mqtts:// broker" ;; esac
[ -z "$ca" ] || grep -q 'BEGIN CERTIFICATE' "$ca" 2>/dev/null || fail "--broker-ca $ca holds no PEM certificate"
[ -n "$node" ] || node=$(cat "${root}/etc/hostname" 2>/dev/null || hostname)
node=$(printf '%s' "$node" | tr -d '[:space:]')
printf '%s' "$node" | grep -Eq '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$' \
    || fail "node name '$node' is not a DNS label (lower case letters, digits, '-'); pass --node-name"
password=${KEDGE_BROKER_PASSWORD:-}
[ -z "$passfile" ] || password=$(cat "$passfile")
[ -z "$password" ] || [ -n "$user" ] || fail "a password needs --username"
token=${KEDGE_TOKEN:-}
[ -z "$tokenfile" ] || token=$(tr -d '[:space:]' < "$tokenfile")
[ -z "$token" ] || printf '%s' "$token" | grep -Eq '^kedge1\.[A-Za-z0-9_-]{43}\.[a-z0-9]{6}\.[a-z0-9]{16}$' \
    || fail "the join token is not one kedge-controller token create prints (kedge1.KEY.ID.SECRET)"
[ -n "$root" ] || [ "$(id -u)" -eq 0 ] || fail "run as root (sudo)"

# The package: given, or the one for this architecture next to the script.
if [ -z "$deb" ]; then
    arch=$(dpkg --print-architecture)
    for f in "$(dirname "$0")"/kedge-agent_*_"$arch".deb; do [ -f "$f" ] && deb=$f; done
fi
if [ -n "$deb" ]; then
    [ -f "$deb" ] || fail "$deb is not a file"
    if [ -n "$root" ]; then
        # As dpkg would: new files in, an existing config (a conffile) kept.
        unpack=$(mktemp -d)
        dpkg-deb -x "$deb" "$unpack"
        [ ! -f "$root/etc/kedge/agent.yaml" ] || rm -f "$unpack/etc/kedge/agent.yaml"
        mkdir -p "$root"
        cp -a "$unpack/." "$root/"
        rm -rf "$unpack"
    else
        # Configure without starting: the config is written first.
        [ "$(dpkg-deb -f "$deb" Version)" = "$(dpkg-query -W -f '${Version}' kedge-agent 2>/dev/null || true)" ] \
            && echo "kedge-agent $(dpkg-deb -f "$deb" Version) already installed" \
            || dpkg -i "$deb"
    fi
fi
[ -x "$root/usr/bin/kedge-agent" ] || fail "kedge-agent is not installed and no --deb was given"

# Set one key in the YAML config: replace its line, or append it.
config=$root/etc/kedge/agent.yaml
mkdir -p "$(dirname "$config")"
[ -f "$config" ] || : > "$config"
chmod 0600 "$config"
set_key() {
    # YAML single-quoted scalar: ' doubles.
    v=$(printf '%s' "$2" | sed "s/'/''/g")
    tmp=$config.tmp
    awk -v k="$1" -v line="$1: '$v'" '
        $0 ~ "^" k ":" { if (!done) print line; done = 1; next }
        { print }
        END { if (!done) print line }' "$config" > "$tmp"
    chmod 0600 "$tmp"
    mv "$tmp" "$config"
}
before=$(cksum < "$config")
set_key broker "$broker"
set_key node-name "$node"
[ -z "$user" ] || set_key broker-username "$user"
[ -z "$password" ] || set_key broker-password "$password"
[ -z "$token" ] || set_key token "$token"
ca_changed=no
if [ -n "$ca" ]; then
    if ! cmp -s "$ca" "$root/etc/kedge/broker-ca.crt"; then
        install -m 0644 "$ca" "$root/etc/kedge/broker-ca.crt"
        ca_changed=yes
    fi
    set_key broker-ca /etc/kedge/broker-ca.crt
fi
changed=yes; [ "$(cksum < "$config")" != "$before" ] || [ "$ca_changed" = yes ] || changed=no

if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable kedge-agent.service >/dev/null 2>&1
    if [ "$changed" = yes ] || ! systemctl is-active --quiet kedge-agent.service; then
        systemctl restart kedge-agent.service
    fi
    echo "kedge-agent running as node $node, broker $broker (journalctl -u kedge-agent)"
else
    echo "kedge-agent configured as node $node, broker $broker in $config (not started: no systemd${root:+ in $root})"
fi

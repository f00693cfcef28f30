#!/usr/bin/env bash
# Flash wear and idle traffic (design.md §8: an agent writes at most
# 1 MB/hour; an idle node's link carries at most 20 KB/hour): what a node
# agent writes, and sends and receives over MQTT, idle with no pods and then
# running PODS pods, over SECONDS each. Root (the agent runs containers).
#
#   scripts/flash-wear.sh [-p PODS] [-s SECONDS]     defaults: 30 pods, 600 s
#
# Method: a controller (embedded broker) and one agent on loopback, from the
# release binaries (built if missing), state under a fresh directory on disk
# (/var/tmp, not tmpfs). The node joins, reports for a minute to settle; then
# the agent's write_bytes (what reached the block layer: the wear) and wchar
# (every write(2), cache or not) are read at the start and end of each
# window and given per hour, and so are the bytes sent and received on the
# agent's connection to the broker (the kernel's tcp_info, `ss -ti`: MQTT
# with its TCP payload, no TCP/IP headers; plain mqtt:// on loopback, so
# without what TLS adds to each message). Then a Deployment of PODS busybox pods (the
# image imported, IfNotPresent, `sleep`), all Running, one more minute to
# settle, and the second window. Everything is deleted at the end.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
pods=30 secs=600
while [ $# -gt 0 ]; do
    case $1 in
        -p) pods=$2; shift 2 ;;
        -s) secs=$2; shift 2 ;;
        *) sed -n '2,15p' "$0"; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "flash-wear.sh: needs root (the agent runs containers)" >&2; exit 1; }
agent_bin=target/release/kedge-agent controller_bin=target/release-controller/kedge-controller
cargo build --release --locked -p kedge-agent
cargo build --profile release-controller --locked -p kedge-controller
[ -f target/images/busybox.tar ] || images/busybox/build.sh >/dev/null

dir=$(mktemp -d /var/tmp/kedge-wear.XXXXXX)
# Writes to tmpfs never reach a disk: the figure would say nothing.
[ "$(stat -f -c %T "$dir")" != tmpfs ] || { echo "flash-wear.sh: /var/tmp is tmpfs here" >&2; rm -rf "$dir"; exit 1; }
api=127.0.0.1:16443 mqtt=127.0.0.1:11883 node=wear
agent=("$agent_bin" --data-dir "$dir/agent")
export KUBECONFIG=$dir/controller/kubeconfig.yaml
cpid= apid=
cleanup() {
    if [ -n "$apid" ]; then
        kubectl delete deployment wear --ignore-not-found --wait=false >/dev/null 2>&1 || true
        for _ in $(seq 1 600); do
            [ -z "$("${agent[@]}" ps -o json 2>/dev/null | grep '"name"')" ] && break
            sleep 0.2
        done
        kill "$apid" 2>/dev/null || true
        wait "$apid" 2>/dev/null || true
        "${agent[@]}" network cleanup >/dev/null 2>&1 || true
        mountpoint -q "$dir/agent/ns" && umount -l "$dir/agent/ns"
    fi
    [ -n "$cpid" ] && { kill "$cpid" 2>/dev/null; wait "$cpid" 2>/dev/null; } || true
    rm -rf "$dir"
}
trap cleanup EXIT

"$controller_bin" --data-dir "$dir/controller" --listen "$api" --mqtt-listen "$mqtt" >"$dir/controller.log" 2>&1 &
cpid=$!
for _ in $(seq 1 100); do
    [ -f "$KUBECONFIG" ] && kubectl get --raw /readyz >/dev/null 2>&1 && break
    sleep 0.1
done
"${agent[@]}" image import target/images/busybox.tar >/dev/null
token=$("$controller_bin" --data-dir "$dir/controller" token create)
mkdir -p "$dir/manifests"
"${agent[@]}" run --manifests "$dir/manifests" --cri-socket "$dir/cri.sock" --config "$dir/agent.yaml" \
    --boot-config "$dir/boot.yaml" --broker "mqtt://$mqtt" --token "$token" --node-name "$node" \
    >"$dir/agent.log" 2>&1 &
apid=$!
for _ in $(seq 1 120); do kubectl get "node/$node" >/dev/null 2>&1 && break; sleep 1; done
kubectl wait --for=condition=Ready "node/$node" --timeout=120s >/dev/null

# io FIELD: the agent's counter.
io() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$apid/io"; }
# The agent's bytes sent + received to the broker (one connection; 0 if it
# is reconnecting just then).
mqtt() {
    ss -tinpH state established "( dport = :${mqtt##*:} )" | awk -v p="pid=$apid," '
        index($0, p) { mine = 1; next }
        mine { for (i = 1; i <= NF; i++) if ($i ~ /^bytes_(sent|received):/) { split($i, a, ":"); n += a[2] } mine = 0 }
        END { print n + 0 }'
}
window() { # LABEL
    sleep 60
    local w0 c0 m0 w1 c1 m1
    w0=$(io write_bytes) c0=$(io wchar) m0=$(mqtt)
    sleep "$secs"
    w1=$(io write_bytes) c1=$(io wchar) m1=$(mqtt)
    # A reconnect restarts the socket's counters: that window says nothing.
    [ "$m1" -ge "$m0" ] || { echo "flash-wear.sh: the agent reconnected during the window; run it again" >&2; exit 1; }
    awk -v l="$1" -v w=$((w1 - w0)) -v c=$((c1 - c0)) -v m=$((m1 - m0)) -v s="$secs" 'BEGIN {
        h = 3600 / s / 1000
        printf "%-10s write_bytes %8.1f KB/hour   wchar %8.1f KB/hour   MQTT in+out %7.1f KB/hour   (over %d s)\n", l, w * h, c * h, m * h, s }'
}
echo "flash-wear: agent pid $apid, data dir $dir/agent, ${secs} s windows"
window "0 pods"

kubectl apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: wear, namespace: default}
spec:
  replicas: $pods
  selector: {matchLabels: {app: wear}}
  template:
    metadata: {labels: {app: wear}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: c, image: kedge.local/busybox:latest, imagePullPolicy: IfNotPresent, command: [sleep, "1000000"]}
EOF
for _ in $(seq 1 600); do
    running=$(kubectl get pods -l app=wear --no-headers 2>/dev/null | grep -c ' Running ' || true)
    [ "$running" -ge "$pods" ] && break
    sleep 1
done
[ "$running" -ge "$pods" ] || { echo "flash-wear.sh: only $running of $pods pods Running" >&2; exit 1; }
window "$pods pods"

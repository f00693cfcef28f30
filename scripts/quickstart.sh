#!/usr/bin/env bash
# Brings up a single-node kedge cluster on this machine with the embedded
# defaults and runs the example workload (examples/hello.yaml, a Deployment).
#
# That is the controller (API server, store, scheduler, control loops, and
# the embedded MQTT broker on 127.0.0.1:1883) and, as root, a node agent
# joined to it over MQTT that runs the Deployment's pods on real containers,
# plus the static pod examples/static-pod.yaml. State lives in ./.kedge;
# stop with `scripts/quickstart.sh stop` (it deletes the example workload
# first, so no container is left behind).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${KEDGE_DATA:-$PWD/.kedge}"
LISTEN="${KEDGE_LISTEN:-127.0.0.1:6443}"
MQTT="${KEDGE_MQTT:-127.0.0.1:1883}"
NODE="${KEDGE_NODE:-$(hostname -s | tr 'A-Z_' 'a-z-')}"
PIDFILE="$DATA/controller.pid"
AGENT_PIDFILE="$DATA/agent.pid"
AGENT=(./target/release/kedge-agent --data-dir "$DATA/agent")

stop_pid() {
  if [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; then
    kill -TERM "$(cat "$1")"
    echo "$2 stopped"
  fi
  rm -f "$1"
}

stop() {
  # Deleting the workload and removing the manifest let the running agent
  # tear the example pods down.
  if [ -f "$AGENT_PIDFILE" ] && kill -0 "$(cat "$AGENT_PIDFILE")" 2>/dev/null; then
    if [ -f "$PIDFILE" ] && [ -f "$DATA/controller/kubeconfig.yaml" ]; then
      KUBECONFIG="$DATA/controller/kubeconfig.yaml" kubectl delete -f examples/hello.yaml --ignore-not-found --wait=false >/dev/null 2>&1 || true
    fi
    rm -f "$DATA/manifests/static-pod.yaml"
    for _ in $(seq 1 400); do
      [ -z "$("${AGENT[@]}" ps -o json 2>/dev/null | grep '"name"')" ] && break
      sleep 0.1
    done
  fi
  stop_pid "$AGENT_PIDFILE" kedge-agent
  stop_pid "$PIDFILE" kedge-controller
  # The pod network: bridge kedge0, veths, routes and the kedge nftables table.
  if [ "$(id -u)" -eq 0 ] && [ -x "${AGENT[0]}" ]; then
    "${AGENT[@]}" network cleanup >/dev/null || echo "quickstart: kedge-agent network cleanup failed" >&2
  fi
  # The agent keeps its namespace-pin mount (DATA/ns) across restarts; with
  # its pods gone it can go too.
  if [ "$(id -u)" -eq 0 ] && mountpoint -q "$DATA/agent/ns" 2>/dev/null; then
    sleep 0.5
    umount "$DATA/agent/ns" 2>/dev/null || true
  fi
}

if [ "${1:-}" = "stop" ]; then stop; exit 0; fi

command -v kubectl >/dev/null || { echo "kubectl is needed to apply the example" >&2; exit 1; }
. scripts/packages.sh
ensure_packages "${BUILD_PACKAGES[@]}"
cargo build --release -p kedge-agent
cargo build --profile release-controller -p kedge-controller
mkdir -p "$DATA"
stop
./target/release-controller/kedge-controller --data-dir "$DATA/controller" --listen "$LISTEN" --mqtt-listen "$MQTT" >"$DATA/controller.log" 2>&1 &
echo $! >"$PIDFILE"
export KUBECONFIG="$DATA/controller/kubeconfig.yaml"
for _ in $(seq 1 100); do
  [ -f "$KUBECONFIG" ] && kubectl get --raw /readyz >/dev/null 2>&1 && break
  sleep 0.1
done
kubectl apply -f examples/hello.yaml

if [ "$(id -u)" -eq 0 ]; then
  # mosquitto_sub, for the dashboard hint printed at the end; nft and
  # conntrack, for the agent's Service rules (pod network).
  ensure_packages mosquitto-clients nftables conntrack
  images/busybox/build.sh >/dev/null
  "${AGENT[@]}" image import target/images/busybox.tar
  mkdir -p "$DATA/manifests"
  cp examples/static-pod.yaml "$DATA/manifests/"
  # The node joins with a token the controller makes, as a real node does.
  TOKEN=$(./target/release-controller/kedge-controller --data-dir "$DATA/controller" token create)
  # Its own config paths: this demo leaves /etc/kedge and the boot partition alone.
  "${AGENT[@]}" run --manifests "$DATA/manifests" --cri-socket "$DATA/cri.sock" \
    --config "$DATA/agent.yaml" --boot-config "$DATA/boot-config.yaml" \
    --broker "mqtt://$MQTT" --token "$TOKEN" --node-name "$NODE" >"$DATA/agent.log" 2>&1 &
  echo $! >"$AGENT_PIDFILE"
  for _ in $(seq 1 300); do
    [ "$(kubectl get pods -n hello --no-headers 2>/dev/null | grep -c ' Running ')" -ge 2 ] && break
    sleep 0.1
  done
  kubectl get nodes
  kubectl get pods -n hello -o wide
  "${AGENT[@]}" ps
  AGENT_MSG="  kubectl logs -n hello deploy/hello -f        # read on the node, through the broker
kedge-agent (node $NODE, pid $(cat "$AGENT_PIDFILE"), log $DATA/agent.log) runs the Deployment's pods and the static pod
examples/static-pod.yaml (its mirror pod: kubectl get pod hello-$NODE):
  ${AGENT[*]} ps
  ${AGENT[*]} logs hello greeter -f
Watch the fleet as a dashboard would: mosquitto_sub -h ${MQTT%:*} -p ${MQTT##*:} -t 'kedge/v1/fleet/#' -v"
else
  kubectl get all -n hello
  AGENT_MSG="The node agent runs containers and needs root: run this script as root to start it too
(until then the Deployment's pods stay Pending: no node has joined)."
fi
cat <<MSG

kedge-controller is running (pid $(cat "$PIDFILE"), log $DATA/controller.log).
Look at the cluster with:
  export KUBECONFIG=$KUBECONFIG
  kubectl get pods -n hello -o wide
$AGENT_MSG
Stop it with: scripts/quickstart.sh stop
MSG

#!/usr/bin/env bash
# Brings up a single-node kedge cluster on this machine with the embedded
# defaults and applies the example workload (examples/hello.yaml).
#
# Today that is the controller (API server, store, scheduler, control loops)
# and, as root, a node agent running the static pod examples/static-pod.yaml
# on real containers. The MQTT link that joins the agent to the controller is
# the next issue; until then the controller's pods stay Pending. State lives
# in ./.kedge; stop with `scripts/quickstart.sh stop` (pods keep running
# across an agent stop; `stop` also removes the example pod).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${KEDGE_DATA:-$PWD/.kedge}"
LISTEN="${KEDGE_LISTEN:-127.0.0.1:6443}"
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
  # Removing the manifest lets the running agent tear the example pod down.
  if [ -f "$DATA/manifests/static-pod.yaml" ] && [ -f "$AGENT_PIDFILE" ]; then
    rm -f "$DATA/manifests/static-pod.yaml"
    for _ in $(seq 1 100); do
      [ -z "$("${AGENT[@]}" ps -o json 2>/dev/null | grep '"name"')" ] && break
      sleep 0.1
    done
  fi
  stop_pid "$AGENT_PIDFILE" kedge-agent
  stop_pid "$PIDFILE" kedge-controller
}

if [ "${1:-}" = "stop" ]; then stop; exit 0; fi

command -v kubectl >/dev/null || { echo "kubectl is needed to apply the example" >&2; exit 1; }
. scripts/packages.sh
ensure_packages "${BUILD_PACKAGES[@]}"
cargo build --release -p kedge-controller -p kedge-agent
mkdir -p "$DATA"
stop
./target/release/kedge-controller --data-dir "$DATA/controller" --listen "$LISTEN" >"$DATA/controller.log" 2>&1 &
echo $! >"$PIDFILE"
export KUBECONFIG="$DATA/controller/kubeconfig.yaml"
for _ in $(seq 1 100); do
  [ -f "$KUBECONFIG" ] && kubectl get --raw /readyz >/dev/null 2>&1 && break
  sleep 0.1
done
kubectl apply -f examples/hello.yaml
kubectl get all -n hello

if [ "$(id -u)" -eq 0 ]; then
  images/busybox/build.sh >/dev/null
  "${AGENT[@]}" image import target/images/busybox.tar
  mkdir -p "$DATA/manifests"
  cp examples/static-pod.yaml "$DATA/manifests/"
  "${AGENT[@]}" run --manifests "$DATA/manifests" --cri-socket "$DATA/cri.sock" >"$DATA/agent.log" 2>&1 &
  echo $! >"$AGENT_PIDFILE"
  for _ in $(seq 1 100); do
    [ "$("${AGENT[@]}" ps -o json 2>/dev/null | grep -c '"state": "Running"')" -ge 2 ] && break
    sleep 0.1
  done
  "${AGENT[@]}" ps
  AGENT_MSG="kedge-agent is running the static pod examples/static-pod.yaml (pid $(cat "$AGENT_PIDFILE"), log $DATA/agent.log):
  ${AGENT[*]} ps
  ${AGENT[*]} logs hello greeter -f"
else
  AGENT_MSG="The node agent runs containers and needs root: run this script as root to start it too."
fi
cat <<MSG

kedge-controller is running (pid $(cat "$PIDFILE"), log $DATA/controller.log).
Look at the cluster with:
  export KUBECONFIG=$KUBECONFIG
  kubectl get all -n hello
The controller's pods stay Pending until the MQTT link joins nodes to it (the next issue).
$AGENT_MSG
Stop it with: scripts/quickstart.sh stop
MSG

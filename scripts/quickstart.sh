#!/usr/bin/env bash
# Brings up a single-node kedge cluster on this machine with the embedded
# defaults and applies the example workload (examples/hello.yaml).
#
# Today that is the controller (API server + store); the scheduler, the agent
# and the embedded MQTT broker join as their issues land, and this script
# grows with them. State lives in ./.kedge; stop with `scripts/quickstart.sh stop`.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${KEDGE_DATA:-$PWD/.kedge}"
LISTEN="${KEDGE_LISTEN:-127.0.0.1:6443}"
PIDFILE="$DATA/controller.pid"

stop() {
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    kill -TERM "$(cat "$PIDFILE")"
    echo "kedge-controller stopped"
  fi
  rm -f "$PIDFILE"
}

if [ "${1:-}" = "stop" ]; then stop; exit 0; fi

command -v kubectl >/dev/null || { echo "kubectl is needed to apply the example" >&2; exit 1; }
cargo build --release -p kedge-controller
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
cat <<MSG

kedge-controller is running (pid $(cat "$PIDFILE"), log $DATA/controller.log).
Look at the cluster with:
  export KUBECONFIG=$KUBECONFIG
  kubectl get all -n hello
The pods stay Pending until a node joins: the node agent is the next issue (ARCHITECTURE.md).
Stop it with: scripts/quickstart.sh stop
MSG

#!/usr/bin/env bash
# Private containerd 1.6 + runc (Debian's) instance: the CRI baseline that
# `cargo bench -p kedge-tests --bench cri` compares kedge against.
#
# Usage: scripts/containerd-baseline.sh start DIR   # prints the CRI socket path
#        scripts/containerd-baseline.sh stop DIR    # kills it, cleans up, removes DIR
# Everything lives under DIR (root, state, runc root, CNI conf dir, config.toml,
# containerd.log, containerd.sock); a system containerd is never touched. Both
# commands are idempotent. Pitfalls handled (see shared/runtime-notes.md):
# - root lacks CAP_SYS_RESOURCE: restrict_oom_score_adj = true, else runc fails
#   with "can't get final child's PID from pipe: EOF";
# - nothing can be pulled offline: the pause and busybox images are built by
#   images/busybox/build.sh and imported (ctr names them from index.json);
# - containerd 1.6 puts shim sockets in /run/containerd/s whatever its state
#   dir: stop removes only our shims' sockets (sha256 of sock/ns/id), and the
#   empty dirs left in /run/containerd;
# - CRI runc state goes to DIR/runc (runc Root option); `ctr run` ignores it:
#   pass it `--runc-root DIR/runc` (stop also cleans /run/containerd/runc);
# - containers get /k8s.io/<id> cgroups that outlive them: stop rmdirs the empty
#   ones (only when no other containerd runs, so a system one keeps its own);
# - /opt/containerd (opt plugin) and unused snapshotters/tracing are disabled;
# - busybox `sleep` ignores SIGTERM: stop SIGKILLs the remaining tasks.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[[ $# -eq 2 && $(realpath -m -- "${2:-/}") != / ]] || usage
cmd=$1; dir=$(realpath -m -- "$2")
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sock=$dir/containerd.sock
ctr_() { ctr --address "$sock" "$@"; }
pid_alive() { [[ -f $dir/containerd.pid && $(cat "/proc/$(cat "$dir/containerd.pid")/comm" 2>/dev/null) == containerd ]]; }
(( ${#sock} + 6 < 108 )) || { echo "error: socket path too long: $sock" >&2; exit 1; }

write_config() {
    mkdir -p "$dir/cni" "$dir/runc"
    cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = "kedge.local/pause:latest"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$dir/runc"
        SystemdCgroup = false
EOF
}

start() {
    [[ -f $repo/target/images/busybox.tar ]] || "$repo/images/busybox/build.sh" >&2
    [[ -f $repo/target/images/pause.tar ]] || NAME=kedge.local/pause:latest \
        CMD='["sleep","2147483647"]' OUT=$repo/target/images/pause.tar "$repo/images/busybox/build.sh" >&2
    if ! pid_alive; then
        write_config
        setsid containerd --config "$dir/config.toml" >>"$dir/containerd.log" 2>&1 </dev/null &
        echo $! >"$dir/containerd.pid"
    fi
    for _ in $(seq 100); do
        ctr_ version >/dev/null 2>&1 && break
        pid_alive || { tail -20 "$dir/containerd.log" >&2; echo "error: containerd died" >&2; exit 1; }
        sleep 0.1
    done
    ctr_ version >/dev/null || { echo "error: $sock does not answer" >&2; exit 1; }
    for img in busybox pause; do
        ctr_ -n k8s.io images import "$repo/target/images/$img.tar" >&2
    done
    echo "$sock"
}

stop() {
    [[ -d $dir ]] || return 0
    if pid_alive && ctr_ version >/dev/null 2>&1; then   # delete -f SIGKILLs each task
        for ns in $(ctr_ namespaces ls -q); do
            for t in $(ctr_ -n "$ns" tasks ls -q); do ctr_ -n "$ns" tasks delete -f "$t" >/dev/null 2>&1 || true; done
        done
    fi
    if pid_alive; then
        pid=$(cat "$dir/containerd.pid"); kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    # Leftover shims of ours (their -address is our socket), then runc containers.
    for p in $(pgrep -f "^/usr/bin/containerd-shim.* -address $(sed 's/[^[:alnum:]/_-]/\\&/g' <<<"$sock")\$" || true); do kill -9 "$p" || true; done
    # runc containers whose bundle is ours (ctr run without --runc-root uses
    # /run/containerd/runc), and our shims' sockets in /run/containerd/s.
    for nsdir in "$dir"/runc/*/ /run/containerd/runc/*/; do
        [[ -d $nsdir ]] || continue
        for id in $(runc --root "$nsdir" list 2>/dev/null | awk -v d="$dir/" 'NR > 1 && index($4, d) == 1 { print $1 }'); do
            runc --root "$nsdir" delete -f "$id" >/dev/null 2>&1 || true
        done
    done
    local ids=()  # tasks whose shim died with containerd; one shim per CRI sandbox
    for d in "$dir"/state/io.containerd.runtime.v2.task/*/*; do
        [[ -d $d ]] || continue
        ids+=("${d##*/}")
        h=$(printf '%s' "$sock/${d#"$dir"/state/io.containerd.runtime.v2.task/}" | sha256sum | cut -d' ' -f1)
        rm -f "/run/containerd/s/$h"
    done
    # Unmount everything under DIR, deepest first.
    awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
    if ! pgrep -x containerd >/dev/null; then  # else these may be a system containerd's
        for id in "${ids[@]}"; do rm -f /run/containerd/fifo/*/"$id"-std{in,out,err}; done  # ctr's
        find /sys/fs/cgroup/*/k8s.io /sys/fs/cgroup/k8s.io -depth -type d -exec rmdir {} + 2>/dev/null || true
        find /run/containerd -depth -type d -empty -delete 2>/dev/null || true
    fi
    rm -rf -- "$dir"
}

case $cmd in start) start ;; stop) stop ;; *) usage ;; esac

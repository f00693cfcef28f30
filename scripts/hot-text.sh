#!/usr/bin/env bash
# Regenerates agent/hot-text.ld: the functions kedge-agent runs from start-up to
# idle, which release builds link together ahead of the rest of .text
# (agent/build.rs). Idle RSS is mostly code pages: every code fault maps up to
# 64 KiB around it (the kernel's fault-around), so idle code spread over the
# binary made most of .text resident. BENCHMARKS.md has the figures.
#
# Method: valgrind's callgrind records every function that runs, in a
# bench-profile build (release code, symbols kept), in two scenarios of
# $KEDGE_HOT_SECONDS (default 20) seconds each:
#   1. standalone: an empty manifest folder, the CRI socket served, no pod
#      network;
#   2. networked: the same with the pod network of a standalone node
#      (--pod-cidr: bridge, nftables table, DNS server);
#   3. connected: the controller's embedded broker on loopback, no pods (the
#      pod network from the controller's table).
# The file lists each scenario's functions after those of the ones before,
# so an agent touches the fewest pages in the first scenarios.
# Each function becomes a section pattern without what differs between builds
# and targets (legacy-mangling hashes; in std's v0 names, crate disambiguators,
# back-references and the instantiating crate; LTO suffixes), so one file
# serves x86_64, aarch64 and armv7. A legacy name leaves out generic arguments,
# so a pattern takes every instance of a generic function. That is on purpose:
# LLVM merges identical instances, and which one keeps the code changes with
# every build's crate hashes (v0 names, which spell out the arguments, were
# tried: the release build then missed 0.8 MiB of idle code the bench build had).
# A function added since the last run links in the ordinary .text: the file
# only goes stale, it never breaks a build. Re-run it after changes to
# start-up or idle paths, and check the idle RSS with the CRI benchmark.
#
# Needs root (the agent pins namespaces) and valgrind (installed if missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "hot-text.sh: needs root (the agent pins network namespaces)" >&2; exit 1; }
command -v valgrind >/dev/null || apt-get install -y --no-install-recommends valgrind
secs=${KEDGE_HOT_SECONDS:-20}

cargo build --profile bench -p kedge-agent -p kedge-controller --locked
bin=${CARGO_TARGET_DIR:-target}/release   # the bench profile builds into release/

work=$(mktemp -d /tmp/kedge-hot.XXXXXX)
ctl=
cleanup() {
    if [ -n "$ctl" ]; then kill "$ctl" 2>/dev/null; wait "$ctl" 2>/dev/null || true; fi
    # The agents set up the pod network (bridge, nftables table, routes): take it down.
    "$bin/kedge-agent" network cleanup --pod-bridge kedge0 >/dev/null 2>&1 || true
    grep -o " $work[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
    # KEDGE_HOT_KEEP=1 keeps the callgrind files and logs.
    if [ -n "${KEDGE_HOT_KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# callgrind: function names as in the symbol table; SIGINT ends the agent cleanly.
record() { # NAME AGENT-ARGS...
    local name=$1; shift
    mkdir -p "$work/$name/m"
    timeout -s INT "$secs" valgrind --tool=callgrind --demangle=no --dump-instr=no \
        --compress-strings=no --compress-pos=no --callgrind-out-file="$work/$name.cg" \
        "$bin/kedge-agent" --data-dir "$work/$name/data" run --cri-socket "$work/$name/cri.sock" \
        --manifests "$work/$name/m" --config "$work/$name/a.yaml" --boot-config "$work/$name/b.yaml" \
        "$@" >"$work/$name.log" 2>&1 || true
    [ -s "$work/$name.cg" ] || { cat "$work/$name.log" >&2; echo "hot-text.sh: no callgrind output for $name" >&2; exit 1; }
    "$bin/kedge-agent" network cleanup --pod-bridge kedge0 >/dev/null 2>&1 || true
}

record standalone --node-name hot-standalone --no-pod-network
record networked --node-name hot-networked --pod-cidr 10.213.0.0/24

"$bin/kedge-controller" --mqtt-listen 127.0.0.1:0 --data-dir "$work/ctl" --listen 127.0.0.1:0 >"$work/ctl.out" 2>"$work/ctl.err" &
ctl=$!
broker=
for _ in $(seq 100); do
    broker=$(sed -n 's/^fleet broker //p' "$work/ctl.out")
    [ -n "$broker" ] && break
    sleep 0.1
done
[ -n "$broker" ] || { cat "$work/ctl.err" >&2; echo "hot-text.sh: the controller's broker did not come up" >&2; exit 1; }
token=$("$bin/kedge-controller" --data-dir "$work/ctl" token create)
record connected --node-name hot-connected --broker "$broker" --token "$token"
connected=$(cat "$work/connected.log")
case $connected in *"connected to the broker"*) ;; *)
    echo "$connected" >&2; echo "hot-text.sh: the agent did not reach the broker" >&2; exit 1 ;;
esac

# Every name of each function (nm): identical instances of a generic from several
# crates are merged into one, and callgrind may report any of its names.
nm --defined-only "$bin/kedge-agent" | awk '$2 ~ /^[tTwW]$/ { print $1, $3 }' >"$work/symbols"
patterns() { # CALLGRIND-FILE
    awk '
    # Section name pattern: without what differs between builds and targets.
    function glob(n,   rest, len, id) {
        if (n ~ /^_ZN/) { sub(/17h[0-9a-f]+E.*$/, "17h*", n); return n }   # legacy: the hash
        if (n !~ /^_R/) return n
        sub(/\.[0-9a-z.]+$/, "", n)                                       # LTO suffixes
        gsub(/Cs[0-9A-Za-z]+_/, "Cs*_", n); gsub(/B[0-9A-Za-z]*_/, "B*_", n) # disambiguators, back-references
        # The instantiating crate, last: which of the merged copies keeps the code differs.
        if (n ~ /B\*_$/) n = substr(n, 1, length(n) - 3)
        else if (match(n, /Cs\*_[0-9]+_?[A-Za-z0-9_]*$/)) {
            rest = substr(n, RSTART + 4); len = rest + 0
            id = substr(rest, length(len "") + 1)
            if (length(id) == len + 1 && substr(id, 1, 1) == "_") id = substr(id, 2)
            if (length(id) == len) n = substr(n, 1, RSTART - 1)
        }
        return n "*"
    }
    function emit(n) {
        n = glob(n)
        # #[cold] functions (std, hashbrown, tracing) live in .text.unlikely.*
        print "    *(.text." n " .text.unlikely." n ")"
    }
    FNR == NR { names[$1] = names[$1] " " $2; addr[$2] = $1; next }
    # valgrind sometimes names the agent binary object "???"
    /^ob=/ { ours = ($0 ~ /\/kedge-agent$/ || $0 == "ob=???"); next }
    /^fn=/ && ours {
        n = substr($0, 4); sub(/'"'"'[0-9]+$/, "", n)       # callgrind recursion marks
        if (n !~ /^[A-Za-z_][A-Za-z0-9_.$]*$/) next          # "(below main)", "0x…"
        if (!(n in addr)) { emit(n); next }
        k = split(names[addr[n]], all, " ")
        for (i = 1; i <= k; i++) emit(all[i])
    }' "$work/symbols" "$1" | LC_ALL=C sort -u
}
# Standalone first, so that an agent without a broker touches the fewest pages;
# then what the pod network adds; then what only the connected agent adds.
standalone=$(patterns "$work/standalone.cg")
networked=$(patterns "$work/networked.cg" | LC_ALL=C comm -13 <(echo "$standalone") -)
connected=$(patterns "$work/connected.cg" | LC_ALL=C comm -13 <(printf '%s\n%s\n' "$standalone" "$networked" | LC_ALL=C sort -u) -)

{
    cat <<'EOF'
/* Generated by scripts/hot-text.sh: do not edit by hand.
   The functions kedge-agent runs from start-up to idle (standalone, and connected to a
   broker), linked together ahead of .text so that idle code shares pages instead of
   being spread over the whole binary: each code fault maps up to 64 KiB around it.
   Applied to release builds by agent/build.rs. */
SECTIONS
{
  .text.kedge_hot :
  {
EOF
    echo "$standalone"
    echo "    /* with the pod network */"
    echo "$networked"
    echo "    /* connected to a broker */"
    echo "$connected"
    cat <<'EOF'
  }
}
INSERT BEFORE .text;
EOF
} >agent/hot-text.ld
echo "agent/hot-text.ld: $(echo "$standalone" | wc -l) functions standalone, $(echo "$networked" | wc -l) more with the pod network, $(echo "$connected" | wc -l) more connected"

#!/usr/bin/env bash
# The arm half of the test suite (scripts/test.sh runs it after the native
# tests): for aarch64 and armv7 (gnu), on this x86 machine —
#   1. release builds of kedge-agent (aarch64, armv7) and kedge-controller
#      (aarch64, where it ships) through scripts/cross.sh,
#      `--version` of each under qemu-user, and their stripped sizes;
#   2. the unit tests of kedge-common and the agent under qemu-user, and the
#      agent's registry tests (the container, namespace and nftables tests
#      need a real arm kernel: qemu-user runs arm code on this one);
#   3. the arm64/armhf .deb packages, checked with dpkg-deb -c/-I;
#   4. the multi-arch busybox image imported by the arm64 and armv7 agents
#      under qemu: each picks its own platform from the index;
#   5. in every arm release agent, the start-up-to-idle code grouped by
#      agent/hot-text.ld (GNU ld links arm; KEDGE_HOT_TEXT_NATIVE=1 checks
#      this machine's release agent too, which LLVM's lld links on x86_64).
# Prints cargo's "test result:" lines, so .ci/run's totals include these tests.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
. scripts/packages.sh
if ! ensure_packages "${BUILD_PACKAGES[@]}" "${CROSS_PACKAGES[@]}"; then
    [ "${CI:-}" = true ] && { echo "test-arm: FAILED: cross packages missing under CI" >&2; exit 1; }
    echo -e "\n!!!! SKIPPED: the arm builds and tests (install: ${CROSS_PACKAGES[*]}) !!!!\n" >&2
    exit 0
fi

declare -A deb_arch=([aarch64-unknown-linux-gnu]=arm64 [armv7-unknown-linux-gnueabihf]=armhf)
declare -A qemu=([aarch64-unknown-linux-gnu]="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
                 [armv7-unknown-linux-gnueabihf]="qemu-arm-static -L /usr/arm-linux-gnueabihf")
declare -A platform=([arm64]=linux/arm64 [armhf]=linux/arm/v7)
sizes=()
fail() { echo "test-arm: FAILED: $*" >&2; exit 1; }
# agent/hot-text.ld must have matched on every target: the idle RSS budget
# (design.md §8) depends on it. Below 512 KiB most of the idle code was missed.
check_hot_text() { # BINARY
    local hex
    hex=$(readelf -SW "$1" | sed -n 's/.*\] \.text\.kedge_hot *PROGBITS *[0-9a-f]* [0-9a-f]* \([0-9a-f]*\) .*/\1/p')
    [ -n "$hex" ] || fail "$1 has no .text.kedge_hot section: agent/hot-text.ld was not applied"
    [ $((16#$hex)) -ge $((512 << 10)) ] || fail "$1: .text.kedge_hot is only $((16#$hex)) bytes: agent/hot-text.ld matched too little"
    echo "$1: start-up-to-idle code grouped in .text.kedge_hot ($((16#$hex)) bytes): ok"
}
# cargo's output folder (CARGO_TARGET_DIR, when set, moves it).
out=${CARGO_TARGET_DIR:-$repo/target}
# The profile each binary ships in: the controller unwinds (Cargo.toml).
profile() { if [ "$1" = kedge-controller ]; then echo release-controller; else echo release; fi; }

# This machine's release agent is checked the same way on request only
# (KEDGE_HOT_TEXT_NATIVE=1): its release build is 4.5 of CI's 45 minutes,
# and the section's patterns are the arm builds' (checked below); what only
# x86_64 adds is LLVM's lld applying the script.
if [ "${KEDGE_HOT_TEXT_NATIVE:-}" = 1 ]; then
    echo "==== $(uname -m) release agent"
    cargo build --release --locked -p kedge-agent
    check_hot_text "$out/release/kedge-agent"
fi

images/busybox/build.sh --multiarch > target/images/busybox-multiarch.digests
for t in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    a=${deb_arch[$t]}
    echo "==== $t ($a)"
    # Each binary built alone, as build-packages.sh builds what ships (built
    # together, cargo unifies their dependencies' features and the agent grows
    # by 330 KB), and the controller only where it ships: arm64.
    bins=(kedge-agent); [ "$a" = arm64 ] && bins+=(kedge-controller)
    for b in "${bins[@]}"; do
        scripts/cross.sh "$t" build --profile "$(profile "$b")" --locked -p "$b"
    done
    for b in "${bins[@]}"; do
        bin=$out/$t/$(profile "$b")/$b
        v=$(${qemu[$t]} "$bin" --version) || fail "$bin --version under qemu"
        [[ $v == "$b "* ]] || fail "$bin --version printed '$v'"
        echo "$v under ${qemu[$t]%% *}: ok"
        sizes+=("$t $b $(stat -c %s "$bin")")
    done
    check_hot_text "$out/$t/release/kedge-agent"

    # The agent's tests and common's, run by qemu-user (.cargo/config.toml runner):
    # the unit tests, and of the agent's integration tests the one that runs
    # under qemu-user (the container, namespace and nftables ones need the
    # arm kernel a real Pi has, and only say so here).
    scripts/cross.sh "$t" test --locked -p kedge-common -p kedge-agent --lib
    scripts/cross.sh "$t" test --locked -p kedge-agent --test registry_auth

    # Packages: the agent for arm64 and armhf, the controller for arm64.
    pkgs=(kedge-agent); [ "$a" = arm64 ] && pkgs+=(kedge-controller)
    for p in "${pkgs[@]}"; do
        deb=$(scripts/package-deb.sh "$p" "$a" "$out/$t/$(profile "$p")/$p")
        contents=$(dpkg-deb -c "$deb")
        for f in "./usr/bin/$p" "./lib/systemd/system/$p.service"; do
            grep -q " $f\$" <<<"$contents" || fail "$deb lacks $f"
        done
        grep -q ' ./etc/kedge/' <<<"$contents" || fail "$deb lacks its /etc/kedge config"
        # Captured first: `cmd | grep -q` fails under pipefail when grep exits early.
        info=$(dpkg-deb -I "$deb")
        grep -qx " Architecture: $a" <<<"$info" || fail "$deb: dpkg-deb -I does not say Architecture: $a"
        echo "$deb: $a, binary + unit + config: ok ($(stat -c %s "$deb") bytes)"
    done

    # The multi-arch image: the arm agent takes its platform's manifest.
    data=$(mktemp -d)
    ${qemu[$t]} "$out/$t/release/kedge-agent" --data-dir "$data" image import target/images/busybox-multiarch.tar >/dev/null \
        || fail "the $a agent could not import busybox-multiarch.tar"
    want=$(sed -n "s|^manifest digest ${platform[$a]}: ||p" target/images/busybox-multiarch.digests)
    # refs.json maps each image name to the manifest the agent took.
    refs=$(find "$data" -name refs.json | head -1)
    [ -n "$want" ] && grep -q "\"kedge.local/busybox:latest\": *\"$want\"" "$refs" \
        || fail "the $a agent did not take the ${platform[$a]} manifest ($want): $(cat "$refs")"
    echo "busybox-multiarch.tar on the $a agent: ${platform[$a]} selected: ok"
    rm -rf "$data"
done

echo "==== stripped release sizes"
budget=$((8 << 20))
for s in "${sizes[@]}"; do
    read -r t b n <<<"$s"
    awk -v t="$t" -v b="$b" -v n="$n" 'BEGIN { printf "%-32s %-18s %6.2f MiB (%d bytes)\n", t, b, n / 1048576, n }'
done
agent=$(stat -c %s "$out/aarch64-unknown-linux-gnu/release/kedge-agent")
[ "$agent" -le "$budget" ] || fail "aarch64 kedge-agent is $agent bytes, over the 8 MiB budget (design.md §8)"
echo "aarch64 kedge-agent within the 8 MiB budget: ok"

#!/usr/bin/env bash
# The whole test suite: the workspace's tests on this machine (cargo test
# --workspace), then the arm half (scripts/test-arm.sh: aarch64/armv7 builds,
# their tests under qemu-user, the arm packages). Extra arguments go to the
# native `cargo test`. KEDGE_SKIP_ARM=1 runs the native half only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
status=0
# --no-fail-fast: one failing test binary does not hide the others' results.
cargo test --workspace --no-fail-fast "$@" || status=$?
if [ "${KEDGE_SKIP_ARM:-}" = 1 ]; then
    [ "${CI:-}" = true ] && { echo "test.sh: KEDGE_SKIP_ARM=1 is not allowed under CI" >&2; exit 1; }
    echo -e "\n!!!! SKIPPED: the arm half (KEDGE_SKIP_ARM=1) !!!!\n" >&2
else
    scripts/test-arm.sh || status=$?
fi
exit "$status"

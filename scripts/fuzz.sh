#!/usr/bin/env bash
# The fuzz targets (fuzz/fuzz_targets/*.rs): built with libFuzzer and
# coverage instrumentation, then each run for a bounded time over its
# corpus (fuzz/corpus/TARGET, kept in the repository; new inputs libFuzzer
# finds are added to it). A crash stops the script, leaves the input in
# fuzz/artifacts/TARGET/ and prints how to replay it.
#
#   scripts/fuzz.sh [-t SECONDS] [TARGET...]   default: every target, 30 s each
#   scripts/fuzz.sh -t 600 layer_unpack                  the 10-minute runs BENCHMARKS.md records
#   scripts/fuzz.sh --merge TARGET                       shrink TARGET's corpus to what adds coverage
#   fuzz/target/$HOST/fuzz/TARGET fuzz/artifacts/TARGET/crash-…   replays one input
#
# Stable Rust, no cargo-fuzz needed: the coverage flags are the ones cargo
# fuzz passes, without its `--cfg fuzzing` (which turns on h2's own fuzz
# hooks, and nothing of ours reads it); `cargo fuzz run TARGET --features
# libfuzzer` works as well. layer_unpack makes device nodes and xattrs: run as root.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
secs=30 merge=0
while [ $# -gt 0 ]; do
    case $1 in
        -t) secs=$2; shift 2 ;;
        --merge) merge=1; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
all=$(cd fuzz/fuzz_targets && ls -- *.rs | sed 's/\.rs$//')
targets=("$@")
[ ${#targets[@]} -gt 0 ] || read -r -d '' -a targets <<<"$all" || true
for t in "${targets[@]}"; do
    grep -qxF "$t" <<<"$all" || { echo "fuzz.sh: no target $t (targets: $(echo $all))" >&2; exit 2; }
done

host=$(rustc -vV | sed -n 's/^host: //p')
# An explicit --target keeps these flags off build scripts and proc macros;
# a target directory of its own keeps them from rebuilding the workspace's.
export CARGO_TARGET_DIR="$repo/fuzz/target"
export RUSTFLAGS="${RUSTFLAGS:-} -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cllvm-args=-sanitizer-coverage-stack-depth"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
cargo build --locked --profile fuzz --target "$host" -p kedge-fuzz --features libfuzzer "${bins[@]}"

for t in "${targets[@]}"; do
    bin="$CARGO_TARGET_DIR/$host/fuzz/$t"
    corpus="fuzz/corpus/$t"
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    if [ "$merge" = 1 ]; then
        # The fewest inputs that reach every edge the corpus reaches (hit
        # counts aside), and the seeds and regression inputs whatever they add.
        tmp=$(mktemp -d)
        "$bin" -set_cover_merge=1 -use_counters=0 "$tmp" "$corpus" 2>&1 | tail -1
        cp "$corpus"/seed-* "$corpus"/regression-* "$tmp"/ 2>/dev/null || true
        rm -rf "$corpus" && mv "$tmp" "$corpus"
        echo "fuzz: $t: corpus merged to $(ls "$corpus" | wc -l) inputs"
        continue
    fi
    echo "==== fuzz: $t for ${secs}s ($(ls "$corpus" | wc -l) inputs in $corpus)"
    # rss_limit: a decoder that balloons on a small input is a finding too.
    # Each target's dictionary of tokens, when it has one, steers the
    # mutations (fuzz/dict/TARGET.dict).
    dict=(); [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
    set +e
    "$bin" "$corpus" "${dict[@]}" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" 2>&1 |
        grep -E "^(#[0-9]+ +DONE|Done|==[0-9]+==|SUMMARY|stat::(number_of_executed_units|peak_rss_mb|new_units_added))|panicked|thread '|Test unit written|deadly signal|Slowest"
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" != 0 ]; then
        echo "fuzz.sh: FAILED: $t (exit $status); replay: $bin fuzz/artifacts/$t/<input>" >&2
        exit 1
    fi
done
echo "fuzz: ${#targets[@]} targets ran ${secs}s each without a crash"

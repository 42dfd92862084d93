#!/usr/bin/env bash
# Coverage-guided fuzzing of libdavi's input parsers and C entry points (docs/fuzzing.md).
#
#   scripts/fuzz.sh [TARGET|all] [SECONDS]     build, then fuzz each target SECONDS (default 600)
#   scripts/fuzz.sh build                       only build the targets
#   scripts/fuzz.sh list                        list the targets
#
# Targets: spec, model_file, pt, restore, loader (fuzz/fuzz_targets/). Each run reads the
# committed seeds in fuzz/corpus/TARGET and grows its own git-ignored working corpus in
# fuzz/corpus-work/TARGET; a crash, a timeout (-timeout, default 60 s per input) or an input
# over the memory limit stops that target, is kept as fuzz/artifacts/TARGET/crash-* (or
# timeout-*, oom-*) and makes the script exit non-zero after the remaining targets ran. Logs
# go to fuzz/logs/TARGET.log; the last lines of each are summarised at the end.
#
# Stable Rust, no cargo-fuzz: the fuzz crate (fuzz/, its own workspace and Cargo.lock) links
# libFuzzer through the libfuzzer-sys crate and is built by plain cargo with SanitizerCoverage
# RUSTFLAGS (all stable flags) into its own target dir, fuzz/target, so the workspace's
# target/ is never rebuilt. The fuzzers run one at a time, one process each, under
# `nice -n ${FUZZ_NICE:-19}`.
#
# Environment:
#   FUZZ_NICE=N        niceness of the build and the fuzzers (default 19)
#   FUZZ_ASAN=1        also instrument with AddressSanitizer (needs RUSTC_BOOTSTRAP for
#                      -Zsanitizer; built into fuzz/target-asan; optional, see docs/fuzzing.md)
#   FUZZ_ARGS="..."    extra libFuzzer flags (e.g. "-max_len=4096" or "-seed=1")
#   FUZZ_JOBS=N        cargo build jobs (default: cargo's)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

all_targets=(spec model_file pt restore loader)
what="${1:-all}"
seconds="${2:-600}"
nice_level="${FUZZ_NICE:-19}"

case "$what" in
  list) printf '%s\n' "${all_targets[@]}"; exit 0 ;;
  all|build) targets=("${all_targets[@]}") ;;
  *)
    if [[ " ${all_targets[*]} " != *" $what "* ]]; then
      echo "fuzz.sh: unknown target '$what' (known: ${all_targets[*]}, all, build, list)" >&2
      exit 2
    fi
    targets=("$what")
    ;;
esac
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "fuzz.sh: SECONDS must be a positive whole number, got '$seconds'" >&2
  exit 2
fi

# libtorch for tch (the same set-up the test suite uses; idempotent).
if [ ! -e .libtorch/lib ]; then
  ./scripts/setup.sh
fi

host="$(rustc -vV | sed -n 's/^host: //p')"
# --target keeps the instrumentation off build scripts and proc macros (they run on the
# host and are not linked with libFuzzer).
rustflags="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
rustflags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
rustflags+=" -Cllvm-args=-sanitizer-coverage-pc-table"
rustflags+=" -Cllvm-args=-sanitizer-coverage-trace-compares"
target_dir="fuzz/target"
if [ "${FUZZ_ASAN:-0}" = 1 ]; then
  export RUSTC_BOOTSTRAP=1
  rustflags+=" -Zsanitizer=address"
  target_dir="fuzz/target-asan"
  # libtorch and the standard library are not instrumented: mismatched new/free pairs across
  # that boundary and libtorch's process-lifetime caches are not findings.
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:alloc_dealloc_mismatch=0}"
fi
jobs=()
if [ -n "${FUZZ_JOBS:-}" ]; then jobs=(-j "$FUZZ_JOBS"); fi

echo "fuzz: building ${targets[*]} into $target_dir"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
RUSTFLAGS="$rustflags" CARGO_TARGET_DIR="$target_dir" \
  nice -n "$nice_level" cargo build --manifest-path fuzz/Cargo.toml --locked --release \
  --target "$host" "${jobs[@]}" "${bins[@]}"
[ "$what" = build ] && exit 0

bin_dir="$target_dir/$host/release"
mkdir -p fuzz/logs
failed=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus-work/$t" "fuzz/artifacts/$t" "fuzz/corpus/$t"
  dict=()
  if [ -f "fuzz/dict/$t.dict" ]; then dict=("-dict=fuzz/dict/$t.dict"); fi
  echo "fuzz: $t for ${seconds}s (log fuzz/logs/$t.log)"
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  if nice -n "$nice_level" "$bin_dir/$t" \
      -max_total_time="$seconds" -timeout="${FUZZ_TIMEOUT:-60}" -rss_limit_mb="${FUZZ_RSS_MB:-3072}" \
      -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" "${dict[@]}" ${FUZZ_ARGS:-} \
      "fuzz/corpus-work/$t" "fuzz/corpus/$t" >"fuzz/logs/$t.log" 2>&1; then
    :
  else
    failed+=("$t")
  fi
  # The last coverage line and the final statistics.
  grep -E '^#[0-9]+' "fuzz/logs/$t.log" | tail -n 1 || true
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "fuzz/logs/$t.log" || true
  ls "fuzz/artifacts/$t" 2>/dev/null | sed "s|^|fuzz: kept fuzz/artifacts/$t/|" || true
done

if [ "${#failed[@]}" -gt 0 ]; then
  for t in "${failed[@]}"; do
    echo "fuzz: $t FAILED; last lines of fuzz/logs/$t.log:" >&2
    tail -n 30 "fuzz/logs/$t.log" >&2
  done
  echo "fuzz: failed: ${failed[*]} (inputs kept in fuzz/artifacts/; reproduce with $bin_dir/TARGET FILE)" >&2
  exit 1
fi
echo "fuzz: all clean: ${targets[*]} (${seconds}s each)"
